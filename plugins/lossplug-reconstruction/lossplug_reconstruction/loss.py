"""Reconstruction losses in ``keras.ops`` (imported lazily by the plugin).

For an input x and its reconstruction r of the same shape (B, ...), per sample,
averaged over every non-batch entry j (N entries):

    mse: 1/N * sum_j (r_j - x_j)^2
    mae: 1/N * sum_j |r_j - x_j|
    bce: 1/N * sum_j -(x_j log clip(r_j) + (1 - x_j) log clip(1 - r_j)),
         clip(v) = min(max(v, eps_k), 1 - eps_k), eps_k = keras.config.epsilon()

bce expects x in [0, 1] (pixel intensities) and r a probability (a sigmoid
output); clipping keeps every log finite. Its value at r = x is the binary
entropy of x (0 only for binary x), and it is minimal there for every x.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import InvalidTensorError
from lossplug.numerics import clipped_binary_probabilities, compute_dtype, reduce_trailing

PLUGIN = "reconstruction"
KINDS = ("mse", "mae", "bce")


def reconstruction_loss(x: Any, reconstruction: Any, kind: str = "mse") -> Any:
    """Per-sample reconstruction loss of shape (B,); see the module docstring."""
    dtype = compute_dtype(reconstruction)
    x = ops.cast(x, dtype)
    r = ops.cast(reconstruction, dtype)
    if tuple(x.shape[1:]) != tuple(r.shape[1:]) and None not in (*x.shape[1:], *r.shape[1:]):
        raise InvalidTensorError(
            f"loss plugin {PLUGIN!r}: the input x has shape {tuple(x.shape)} but the "
            f"reconstruction y_pred has shape {tuple(r.shape)}; they must match (bind the "
            "plugin's 'x' and 'y_pred' to tensors of the same shape)"
        )
    if kind == "mse":
        per_entry = ops.square(r - x)
    elif kind == "mae":
        per_entry = ops.abs(r - x)
    elif kind == "bce":
        p, not_p = clipped_binary_probabilities(r)
        per_entry = -(x * ops.log(p) + (1.0 - x) * ops.log(not_p))
    else:
        raise ValueError(f"loss plugin {PLUGIN!r}: kind must be one of {KINDS}, got {kind!r}")
    return reduce_trailing(per_entry, "mean")

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

import keras
from keras import ops

PLUGIN = "reconstruction"
KINDS = ("mse", "mae", "bce")


def compute_dtype(x: Any) -> str:
    """float64 inputs are computed in float64; everything else (float16, bfloat16) in float32."""
    return "float64" if keras.backend.standardize_dtype(x.dtype) == "float64" else "float32"


def reconstruction_loss(x: Any, reconstruction: Any, kind: str = "mse") -> Any:
    """Per-sample reconstruction loss of shape (B,); see the module docstring."""
    dtype = compute_dtype(reconstruction)
    x = ops.cast(x, dtype)
    r = ops.cast(reconstruction, dtype)
    if tuple(x.shape[1:]) != tuple(r.shape[1:]) and None not in (*x.shape[1:], *r.shape[1:]):
        raise ValueError(
            f"loss plugin {PLUGIN!r}: the input x has shape {tuple(x.shape)} but the "
            f"reconstruction y_pred has shape {tuple(r.shape)}; they must match (bind the "
            "plugin's 'x' and 'y_pred' to tensors of the same shape)"
        )
    if kind == "mse":
        per_entry = ops.square(r - x)
    elif kind == "mae":
        per_entry = ops.abs(r - x)
    elif kind == "bce":
        eps = keras.config.epsilon()
        # p and 1 - p are clipped separately, so that float16, float32 and float64 agree
        # at saturated outputs (1 - clip(p) would round to 1.19e-7 in float32).
        log_p = ops.log(ops.clip(r, eps, 1.0 - eps))
        log_not_p = ops.log(ops.clip(1.0 - r, eps, 1.0 - eps))
        per_entry = -(x * log_p + (1.0 - x) * log_not_p)
    else:
        raise ValueError(f"loss plugin {PLUGIN!r}: kind must be one of {KINDS}, got {kind!r}")
    axes = tuple(range(1, len(per_entry.shape)))
    return ops.mean(per_entry, axis=axes) if axes else per_entry

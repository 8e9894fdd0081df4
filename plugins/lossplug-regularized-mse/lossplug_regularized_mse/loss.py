"""Regularised mean squared error in ``keras.ops`` (imported lazily by the plugin).

Per sample, averaged over the last axis (as keras.losses.mean_squared_error):

    loss = mean_last_axis((y_true - y_pred)^2) + factor * mean_last_axis((0.5 - y_pred)^2)

For fixed y_true the loss is minimal at y_pred = (y_true + factor / 2) / (1 + factor):
the penalty pulls predictions towards 0.5.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import InvalidTensorError, numerics
from lossplug.numerics import compute_dtype

PLUGIN = "regularized_mse"


def regularized_mse(y_true: Any, y_pred: Any, factor: float = 0.1) -> Any:
    """Per-sample loss of shape ``y_pred.shape[:-1]``; see the module docstring."""
    dtype = compute_dtype(y_pred)
    y_pred = ops.cast(y_pred, dtype)
    y_true = ops.cast(y_true, dtype)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)  # (B,) targets for a (B, 1) output, as Keras does
    if len(y_true.shape) != len(y_pred.shape):
        raise InvalidTensorError(
            f"loss plugin {PLUGIN!r}: y_true has shape {tuple(y_true.shape)} but y_pred has "
            f"shape {tuple(y_pred.shape)}; pass targets of y_pred's shape"
        )
    mse = numerics.mean(ops.square(y_true - y_pred), axis=-1)
    if factor == 0.0:
        return mse
    return mse + factor * numerics.mean(ops.square(0.5 - y_pred), axis=-1)

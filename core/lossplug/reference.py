"""NumPy helpers for the claims of loss plugins: perfect masks, mask layouts, simplices.

A plugin's ``claims.py`` is imported when the plugin registers, so this module imports
NumPy only (no Keras, no TensorFlow; ``lossplug.numerics`` is imported for its plain
Python shape rule). Every helper works in float64 on NumPy arrays or on an
:class:`lossplug.properties.Example` of them, and mirrors a rule the plugins apply
to tensors:

* :func:`mask_channels` is :func:`lossplug.numerics.segmentation_masks` in NumPy
  (masks of every accepted layout as (B, S, C) arrays);
* :func:`dense_targets` is :func:`lossplug.numerics.one_hot_targets` /
  :func:`lossplug.numerics.binary_targets` in NumPy;
* :func:`perfect_mask` makes the "perfect prediction" of a segmentation example;
* :func:`dice_ratios` is the soft Dice ratio per sample and class;
* :func:`regular_simplex` gives unit vectors with equal pairwise cosines -1/(n - 1),
  the optimum of many metric-learning losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .numerics import is_sparse_labels

if TYPE_CHECKING:
    from .properties import Example

__all__ = [
    "binary_mask",
    "dense_targets",
    "dice_ratios",
    "mask_channels",
    "perfect_mask",
    "regular_simplex",
]


def binary_mask(values: Any) -> np.ndarray:
    """``values`` clipped to [0, 1] and rounded: a 0/1 mask, float64, of the same shape."""
    return np.round(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0))


def perfect_mask(
    example: Example,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    targets: str = "y_true",
    predictions: str = "y_pred",
) -> Example:
    """The example with its targets rounded to a 0/1 mask, predicted perfectly.

    ``targets`` becomes :func:`binary_mask` of itself and ``predictions`` becomes
    ``predict(mask)`` (default: the mask itself, for probabilities; e.g. logits
    ``lambda m: 2 * (2 * m - 1)`` for a hinge), each in its own dtype.
    """
    target = np.asarray(example.tensor(targets))
    prediction = np.asarray(example.tensor(predictions))
    mask = binary_mask(target)
    predicted = mask if predict is None else np.asarray(predict(mask), dtype=np.float64)
    return example.with_tensor(targets, mask.astype(target.dtype)).with_tensor(
        predictions, predicted.astype(prediction.dtype)
    )


def mask_channels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """(t, p): targets and predictions as (B, S, C) float64 arrays (S pixels, C classes).

    The layouts of :func:`lossplug.numerics.segmentation_masks`: ``y_pred`` (B, ..., C)
    with ``y_true`` of the same shape, class ids (B, ...) or (B, ..., 1) when C > 1,
    or a (B, ...) binary mask when C = 1; ``y_pred`` (B, N) or (B,) with ``y_true`` of
    the same shape (a flattened binary mask, C = 1). Any other pair raises ValueError.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred, dtype=np.float64)
    if p.ndim == 0:
        raise ValueError("mask_channels: y_pred is a scalar; masks have a batch axis")
    if p.ndim <= 2:
        classes, spatial = 1, p.shape[1:]
        if t.shape != p.shape:
            raise ValueError(f"mask_channels: y_true {t.shape} does not match y_pred {p.shape}")
        dense = t.astype(np.float64)
    else:
        classes, spatial = p.shape[-1], p.shape[1:-1]
        dense = dense_targets(t, p.shape, binary=classes == 1)
        if dense.shape != p.shape:
            raise ValueError(f"mask_channels: y_true {t.shape} does not match y_pred {p.shape}")
    size = int(np.prod(spatial, dtype=np.int64))
    return dense.reshape(len(p), size, classes), p.reshape(len(p), size, classes)


def dense_targets(y_true: Any, pred_shape: Sequence[int], *, binary: bool = False) -> np.ndarray:
    """Float64 targets of the predictions' shape, by the plugins' target rule.

    Class ids (see :func:`lossplug.numerics.is_sparse_labels`) become one-hot rows,
    except the (B, ...) targets of a single sigmoid unit (``binary=True``, C = 1),
    which are the 0/1 targets themselves; rows are taken as they are (compare their
    shape with ``pred_shape``). Ids of another shape than ``pred_shape[:-1]`` (with or
    without a trailing 1) raise ValueError, out-of-range ids IndexError.
    """
    y_true = np.asarray(y_true)
    pred_shape = tuple(pred_shape)
    classes = pred_shape[-1]
    if not is_sparse_labels(y_true.shape, pred_shape):
        return y_true.astype(np.float64)
    ids = y_true[..., 0] if y_true.ndim == len(pred_shape) else y_true
    if ids.shape != pred_shape[:-1]:
        raise ValueError(
            f"dense_targets: class ids of shape {y_true.shape} for predictions {pred_shape}"
        )
    if binary and classes == 1:
        return ids.astype(np.float64)[..., None]
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= classes):
        raise IndexError(f"dense_targets: class ids outside [0, {classes})")
    return np.eye(classes, dtype=np.float64)[ids]


def dice_ratios(t: np.ndarray, p: np.ndarray, smooth: float) -> np.ndarray:
    """(2 I + smooth) / (P + T + smooth) per sample and class, (B, C); 1 where that is 0/0.

    ``t`` and ``p`` are (B, S, C) arrays (:func:`mask_channels`); I = sum(p t),
    P = sum(p), T = sum(t) over the pixels. The soft Dice ratio of the ``dice`` plugin.
    """
    t, p = np.asarray(t, dtype=np.float64), np.asarray(p, dtype=np.float64)
    total = np.sum(p, axis=1) + np.sum(t, axis=1) + smooth
    numerator = 2.0 * np.sum(p * t, axis=1) + smooth
    return np.where(total > 0, numerator / np.where(total > 0, total, 1.0), 1.0)


def regular_simplex(count: int, dim: int) -> np.ndarray:
    """``count`` unit rows in ``dim`` columns with pairwise cosine -1/(count - 1).

    The vertices of a regular simplex centred at the origin (they sum to 0): the
    centred standard basis e_i - 1/count, written in an orthonormal basis of its
    (count - 1)-dimensional span and normalised, padded with zero columns. Needs
    ``dim >= count - 1`` (ValueError otherwise). ``count = 1`` gives e_0, ``count =
    2`` gives +-e_0 (cosine -1). Deterministic: the same rows on every call.
    """
    if count < 1 or dim < max(count - 1, 1):
        raise ValueError(
            f"regular_simplex: {count} vertices need count >= 1 and at least "
            f"{max(count - 1, 1)} dimensions, got dim={dim}"
        )
    rows = np.zeros((count, dim))
    if count == 1:
        rows[0, 0] = 1.0
        return rows
    centred = np.eye(count) - 1.0 / count
    _, _, basis = np.linalg.svd(centred)
    coords = centred @ basis[: count - 1].T
    rows[:, : count - 1] = coords / np.linalg.norm(coords, axis=1, keepdims=True)
    return rows

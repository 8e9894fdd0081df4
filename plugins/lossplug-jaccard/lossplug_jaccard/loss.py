"""Soft Jaccard (IoU) loss in ``keras.ops`` (imported lazily by the plugin).

With p = y_pred (probabilities) and t = y_true (0/1 or soft targets), for every
sample and class c, the sums running over the spatial axes::

    I_c = sum(p t),   P_c = sum(p),   T_c = sum(t),   U_c = P_c + T_c - I_c
    J_c = (I_c + smooth) / (U_c + smooth)                      (1 when that is 0/0)
    loss = 1 - mean_c J_c

1 - J_c is computed as (U_c - I_c) / (U_c + smooth) with U_c - I_c = sum(p (1 - t) +
t (1 - p)), a sum of non-negative terms: it keeps its relative precision near a
perfect mask and is exactly symmetric in p and t. The quotient is
:func:`lossplug.numerics.ratio`, whose gradient is finite for every smooth > 0, however
small: with a plain division, JAX's gradient -(U_c - I_c) (U_c + smooth)**-2 is NaN at
empty masks and smooth = 3.2e-33, where the square underflows to 0. A denominator
U_c + smooth below float32's smallest normal number (1.2e-38, which TensorFlow and XLA
flush to 0) counts as 0: 1 - J_c = 0, as at 0/0.

Masks are channels-last (B, ..., C); a (B, N) tensor is a flattened binary mask and
(B,) one pixel per sample. Targets may also be class-id masks (B, ...) or
(B, ..., 1) for C > 1 classes (one-hot encoded here, ids checked in [0, C)), and a
binary mask may omit its channel axis ((B, H, W) for predictions (B, H, W, 1)): the
layouts of :func:`lossplug.numerics.segmentation_masks`, which reads them all.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import numerics
from lossplug.numerics import segmentation_masks

PLUGIN = "jaccard"


def jaccard_distance(t: Any, p: Any, *, smooth: float) -> Any:
    """1 - J_c = (U_c - I_c) / (U_c + smooth) per sample and class, shape (B, C).

    ``t`` and ``p`` are (B, S, C) masks from :func:`lossplug.numerics.segmentation_masks`;
    U_c - I_c is summed as p (1 - t) + t (1 - p) (false positives plus false negatives).
    A 0/0 quotient (smooth = 0 and both masks empty) is 0: a perfect match. The division
    is :func:`lossplug.numerics.ratio`: finite gradients for any tiny U_c + smooth.
    """
    intersection = ops.sum(p * t, axis=1)
    errors = ops.sum(p * (1.0 - t) + t * (1.0 - p), axis=1)
    return numerics.ratio(errors, intersection + errors + smooth, at_zero=0.0)


def jaccard_loss(y_true: Any, y_pred: Any, *, smooth: float = 1.0) -> Any:
    """Per-sample soft Jaccard loss 1 - mean_c (I_c + smooth) / (U_c + smooth), shape (B,).

    See the module docstring for the definitions and the accepted mask shapes.
    """
    t, p = segmentation_masks(y_true, y_pred, plugin=PLUGIN)
    return numerics.mean(jaccard_distance(t, p, smooth=smooth), axis=-1)

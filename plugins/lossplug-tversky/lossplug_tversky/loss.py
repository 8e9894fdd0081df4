"""Tversky and focal Tversky loss in ``keras.ops`` (imported lazily by the plugin).

With p = y_pred (probabilities) and t = y_true (0/1 or soft targets), for every
sample and class c, the sums running over the spatial axes::

    TP_c = sum(p t),   FP_c = sum(p (1 - t)),   FN_c = sum((1 - p) t)
    TI_c = (TP_c + smooth) / (TP_c + alpha FP_c + beta FN_c + smooth)   (1 when that is 0/0)
    loss = mean_c (1 - TI_c) ** (1 / gamma)

Tversky (Salehi et al. 2017) for gamma = 1; the focal Tversky loss of Abraham &
Khan (2019) for gamma > 1 (their best value is gamma = 4/3, an exponent of 0.75).

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

PLUGIN = "tversky"


def tversky_distance(t: Any, p: Any, *, alpha: float, beta: float, smooth: float) -> Any:
    """1 - TI_c = (alpha FP + beta FN) / (TP + alpha FP + beta FN + smooth), shape (B, C).

    ``t`` and ``p`` are (B, S, C) masks from :func:`lossplug.numerics.segmentation_masks`.
    Computed as this quotient rather than as 1 - TI, so that it keeps its relative
    precision near a perfect mask (where 1 - TI would cancel to a multiple of float32's
    6e-8). A 0/0 quotient (smooth = 0 and nothing to count) is 0: a perfect match.
    """
    tp = ops.sum(p * t, axis=1)
    errors = alpha * ops.sum(p * (1.0 - t), axis=1) + beta * ops.sum((1.0 - p) * t, axis=1)
    # numerics.ratio keeps the gradient finite however small the denominator is (a tiny smooth).
    return numerics.ratio(errors, tp + errors + smooth, at_zero=0.0)


def focal_power(distance: Any, gamma: float) -> Any:
    """distance ** (1 / gamma) for distance in [0, 1]; 0 at 0, with a zero (finite) gradient there.

    For gamma > 1 the slope (1/gamma) d^(1/gamma - 1) is infinite at d = 0; the inner
    ``where`` feeds the power a 1 there, so neither branch of the outer one is inf.
    """
    if gamma == 1.0:
        return distance
    positive = distance > 0.0
    base = ops.where(positive, distance, ops.ones_like(distance))
    return ops.where(positive, ops.power(base, 1.0 / gamma), ops.zeros_like(distance))


def focal_tversky_loss(
    y_true: Any,
    y_pred: Any,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 4.0 / 3.0,
    smooth: float = 1.0,
) -> Any:
    """Per-sample (focal) Tversky loss mean_c (1 - TI_c) ** (1 / gamma), shape (B,).

    See the module docstring for the definitions and the accepted mask shapes.
    """
    t, p = segmentation_masks(y_true, y_pred, plugin=PLUGIN)
    distance = tversky_distance(t, p, alpha=alpha, beta=beta, smooth=smooth)
    return numerics.mean(focal_power(distance, gamma), axis=-1)

"""Generalised Dice loss (Sudre et al. 2017) in ``keras.ops`` (imported lazily by the plugin).

With p = y_pred (probabilities) and t = y_true (0/1 or soft targets), for every
sample, the sums running over the spatial axes::

    I_c = sum(p t),   P_c = sum(p),   T_c = sum(t)
    w_c = 1 / T_c^2                   (inverse squared volume of class c in y_true)
    loss = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (P_c + T_c) + smooth)   (0/0: 0)

Empty classes (T_c = 0, where 1 / T_c^2 is infinite) take the largest finite weight of
the sample, that of its smallest present class (MONAI's rule); a sample whose target
has no class at all gives every class the same weight. The weights are normalised to
sum to 1 per sample, which leaves the ratio unchanged at smooth = 0 and makes
``smooth`` count in pixels, as in the ``dice`` plugin, whatever the class volumes.
Written with r_c = m / T_c (m the smallest positive T_k, r_c = 1 for empty classes),
w_c = r_c^2 / sum_k r_k^2, so that no weight overflows.

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

PLUGIN = "generalized_dice"


def class_weights(volumes: Any) -> Any:
    """Normalised inverse squared volumes w_c = r_c^2 / sum_k r_k^2, shape (B, C).

    ``volumes`` are the target volumes T_c (B, C). r_c = m / T_c with m the smallest
    positive volume of the sample; an empty class (T_c = 0) has r_c = 1, the largest
    weight; a sample with no positive volume has r_c = 1 for every class. The weights
    are constants of the loss (no gradient flows into them).
    """
    present = volumes > 0.0
    largest = ops.max(volumes, axis=-1, keepdims=True)
    smallest = ops.min(ops.where(present, volumes, largest), axis=-1, keepdims=True)
    safe = ops.where(present, volumes, ops.ones_like(volumes))
    ratio = ops.where(present, smallest / safe, ops.ones_like(volumes))
    squared = ops.square(ratio)
    return ops.stop_gradient(squared / ops.sum(squared, axis=-1, keepdims=True))


def generalized_dice_loss(y_true: Any, y_pred: Any, *, smooth: float = 1.0) -> Any:
    """Per-sample generalised Dice loss, shape (B,); see the module docstring.

    Computed as sum_c w_c E_c / (sum_c w_c (P_c + T_c) + smooth) with
    E_c = P_c + T_c - 2 I_c = sum(p (1 - t) + t (1 - p)) >= 0, which is 1 minus the
    generalised Dice ratio without cancellation near a perfect mask.
    """
    t, p = segmentation_masks(y_true, y_pred, plugin=PLUGIN)
    weights = class_weights(ops.sum(t, axis=1))
    errors = ops.sum(weights * ops.sum(p * (1.0 - t) + t * (1.0 - p), axis=1), axis=-1)
    total = ops.sum(weights * ops.sum(p + t, axis=1), axis=-1) + smooth
    # numerics.ratio keeps the gradient finite however small total is (a tiny smooth).
    return numerics.ratio(errors, total, at_zero=0.0)

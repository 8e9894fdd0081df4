"""Soft Dice loss for binary and multi-class segmentation masks, with an optional BCE term.

Masks are channels-last: ``y_true`` (targets, 0/1 or soft, one-hot over classes for
multi-class masks) and ``y_pred`` (probabilities: sigmoid or softmax outputs) of
shape (B, ..., C), e.g. (B, H, W, C); C = 1 for a binary mask. A rank-2 tensor
(B, N) is a flattened binary mask (one class of N pixels); a rank-1 tensor (B,)
is one pixel per sample. Targets may also be class ids (B, ...) or (B, ..., 1) for
C > 1 classes, and a binary mask may omit its channel axis (the layouts of
``lossplug.numerics.segmentation_masks``). With p = y_pred, t = y_true, for every
sample b and class c, the sums running over the spatial axes::

    I_c = sum(p * t),   P_c = sum(p),   T_c = sum(t)
    dice_c = (2 * I_c + smooth) / (P_c + T_c + smooth)      (1 when P_c + T_c + smooth = 0)
    loss_b = 1 - mean_c dice_c  +  bce_weight * mean(BCE(t, p))

with BCE(t, p) = -(t * log(max(p, eps)) + (1 - t) * log(max(1 - p, eps))),
eps = 1e-7, averaged over every element of the sample. The logs are clamped from
below only, so BCE is exactly 0 at a perfect 0/1 mask.

For values in [0, 1], 2 * p * t <= p^2 + t^2 <= p + t, so dice_c is in [0, 1] and
the Dice part of the loss is in [0, 1]; it is 0 when y_pred equals a 0/1 mask
y_true, and symmetric in y_pred and y_true. The bounds and the symmetry hold
for ``bce_weight = 0`` (the default) and are claimed there (see ``claims.py``);
the BCE term is neither bounded nor symmetric. Zero at a perfect mask holds
for every ``bce_weight``.
The result is per sample, shape (B,): the core applies sample weights and
averages over the batch.

Differences from ``keras.losses.Dice`` (``dice`` in ``compile`` means this plugin
once it is installed; use ``keras.losses.Dice()`` for Keras' own):

- Keras computes one ratio over all classes together (large classes dominate) and,
  with its default ``axis=None``, over the whole batch; this plugin computes one
  ratio per class and per sample and averages over classes.
- Keras adds only ``epsilon()`` to the denominator: an empty target predicted as
  empty gives a loss of 1; here ``smooth`` enters both numerator and denominator,
  so it gives 0, and ``smooth=0`` is handled (0/0 counts as a perfect match).
- The optional binary cross-entropy term (``bce_weight``) is the usual "BCE + Dice"
  combination for segmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from keras import ops
from lossplug import PluginSpec, numerics
from lossplug.numerics import reduce_trailing, segmentation_masks
from lossplug.specs import mask_tensors

from .claims import CLAIMS

NAME = "dice"
#: Lower clamp of the probabilities inside the logs of the BCE term.
EPSILON = 1e-7


@attrs.frozen
class Config:
    """Hyper-parameters of ``dice``."""

    smooth: float = lossplug.param(
        1.0,
        low=0.0,
        doc="added to numerator and denominator of each class's Dice ratio; "
        "makes an empty mask predicted as empty a perfect match and smooths gradients",
    )
    bce_weight: float = lossplug.param(
        0.0,
        low=0.0,
        neutral=0.0,
        doc="weight of the binary cross-entropy term added to the Dice loss (0: Dice only)",
    )


def _ratios(t: Any, p: Any, smooth: float) -> Any:
    """(2 I + smooth) / (P + T + smooth) for (B, S, C) masks, shape (B, C); 1 when 0/0."""
    intersection = ops.sum(p * t, axis=1)
    total = ops.sum(p, axis=1) + ops.sum(t, axis=1) + smooth
    # total is 0 only when smooth == 0 and both masks are empty: a perfect match (ratio 1).
    # numerics.ratio keeps the gradient finite however small total is (a tiny smooth).
    return numerics.ratio(2.0 * intersection + smooth, total, at_zero=1.0)


def _bce(t: Any, p: Any) -> Any:
    """Mean BCE over the (B, S, C) elements of each sample, shape (B,)."""
    per_element = -(
        t * ops.log(numerics.maximum(p, EPSILON))
        + (1.0 - t) * ops.log(numerics.maximum(1.0 - p, EPSILON))
    )
    return reduce_trailing(per_element, "mean")


def dice_per_class(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """Soft Dice ratio (2 I + smooth) / (P + T + smooth) per sample and class, shape (B, C).

    Any mask layout of :func:`lossplug.numerics.segmentation_masks` (channels last,
    class ids, flattened binary masks).
    """
    return _ratios(*segmentation_masks(y_true, y_pred, plugin=NAME), smooth)


def binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Mean BCE over the elements of each sample, shape (B,); exactly 0 at p = t in {0, 1}."""
    return _bce(*segmentation_masks(y_true, y_pred, plugin=NAME))


def dice_loss(y_true: Any, y_pred: Any, smooth: float = 1.0, bce_weight: float = 0.0) -> Any:
    """1 - mean over classes of the Dice ratio (+ bce_weight * BCE), per sample, shape (B,)."""
    t, p = segmentation_masks(y_true, y_pred, plugin=NAME)
    loss = 1.0 - numerics.mean(_ratios(t, p, smooth), axis=-1)
    if bce_weight:
        loss = loss + bce_weight * _bce(t, p)
    return loss


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return PluginSpec(
        name="dice",
        description="soft Dice loss for binary and multi-class masks, optional BCE term",
        config=Config,
        tensors=mask_tensors(),
        properties=CLAIMS,
    )


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> Any:
    config: Config = extras.config
    return dice_loss(inputs["y_true"], outputs["y_pred"], config.smooth, config.bce_weight)


__all__ = [
    "EPSILON",
    "NAME",
    "Config",
    "binary_crossentropy",
    "build_loss_graph",
    "dice_loss",
    "dice_per_class",
    "lossplug_spec",
]

"""lossplug plugin ``jaccard``: soft Jaccard (IoU) loss for segmentation masks.

Masks are channels-last, (B, ..., C): C = 1 for a binary mask (sigmoid outputs),
one-hot targets over C classes for a multi-class mask (softmax outputs); class-id
targets of shape (B, ...) are accepted too. With p = y_pred, t = y_true, for every
sample and class c (sums over the spatial axes)::

    I_c = sum(p t),   U_c = sum(p) + sum(t) - I_c
    loss = 1 - mean_c (I_c + smooth) / (U_c + smooth)          (a 0/0 ratio is 1)

the soft (relaxed) intersection over union, as in Rahman & Wang 2016 ("Optimizing
intersection-over-union in deep neural networks for image segmentation"). The loss
is per sample, in [0, 1], 0 at a perfect mask and symmetric in y_true and y_pred; at
smooth = 0 each class's ratio is D / (2 - D) of its Dice ratio D.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from lossplug import LossResult, PluginSpec
from lossplug.properties import Bounded, NonNegative, ReducesTo, Symmetric, ZeroAtPerfect
from lossplug.specs import mask_tensors

from . import claims

__all__ = ["SPEC", "Config", "build_loss_graph", "lossplug_spec"]

__version__ = "0.1.0"


@attrs.frozen
class Config:
    """Hyper-parameters of ``jaccard``."""

    smooth: float = lossplug.param(
        1.0,
        low=0.0,
        doc="added to intersection and union of each class; makes an empty mask predicted "
        "as empty a perfect match and smooths gradients",
    )


SPEC = PluginSpec(
    name="jaccard",
    description="soft Jaccard (IoU) loss for binary and multi-class masks",
    config=Config,
    tensors=mask_tensors(),
    properties=(
        NonNegative(),
        Bounded(0.0, 1.0),
        ZeroAtPerfect(claims.perfect_mask, atol=1e-6, description="y_pred equal to a 0/1 mask"),
        Symmetric("y_true", "y_pred", rtol=1e-6),
        ReducesTo(
            "1 - mean_c D_c / (2 - D_c) of the per-class Dice ratios D_c",
            reference=claims.from_dice,
            at=claims.UNSMOOTHED,
            rtol=1e-5,
            atol=1e-6,
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> LossResult:
    """Per-sample soft Jaccard loss, shape (B,); see the module docstring."""
    from .loss import jaccard_loss

    config: Config = extras.config
    return LossResult(
        loss=jaccard_loss(inputs["y_true"], outputs["y_pred"], smooth=float(config.smooth))
    )

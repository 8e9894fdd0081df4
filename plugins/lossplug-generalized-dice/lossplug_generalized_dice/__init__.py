"""lossplug plugin ``generalized_dice``: generalised Dice loss (Sudre et al. 2017).

Masks are channels-last, (B, ..., C): C = 1 for a binary mask (sigmoid outputs),
one-hot targets over C classes for a multi-class mask (softmax outputs); class-id
targets of shape (B, ...) are accepted too. With p = y_pred, t = y_true, for every
sample (sums over the spatial axes)::

    I_c = sum(p t),   P_c = sum(p),   T_c = sum(t),   w_c = 1 / T_c^2
    loss = 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (P_c + T_c) + smooth)

Sudre, Li, Vercauteren, Ourselin & Cardoso 2017, "Generalised Dice overlap as a deep
learning loss function for highly unbalanced segmentations" (DLMIA). The inverse
squared volumes give every class a comparable say, however small. A class absent from
a sample's target (w_c infinite) takes the largest finite weight of the sample (its
smallest present class's); a sample with no class at all weighs the classes equally.
The weights are normalised to sum to 1 per sample, which changes nothing at smooth =
0 and lets ``smooth`` count in pixels. Per sample, in [0, 1], 0 at a perfect mask; with
one class it is the Dice loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from lossplug import LossResult, PluginSpec
from lossplug.properties import Bounded, Custom, NonNegative, ZeroAtPerfect
from lossplug.specs import mask_tensors

from . import claims

__all__ = ["SPEC", "Config", "build_loss_graph", "lossplug_spec"]

__version__ = "0.1.0"


@attrs.frozen
class Config:
    """Hyper-parameters of ``generalized_dice``."""

    smooth: float = lossplug.param(
        1.0,
        low=0.0,
        doc="added to numerator and denominator of the ratio, in pixels (the class weights "
        "sum to 1); makes an empty mask predicted as empty a perfect match",
    )


SPEC = PluginSpec(
    name="generalized_dice",
    description="generalised Dice loss with inverse squared volume class weights",
    config=Config,
    tensors=mask_tensors(),
    properties=(
        NonNegative(),
        Bounded(0.0, 1.0),
        ZeroAtPerfect(claims.perfect_mask, atol=1e-6, description="y_pred equal to a 0/1 mask"),
        Custom(
            "one_class_is_dice",
            check=claims.check_one_class_is_dice,
            description="with one class (each channel alone) it is the Dice loss "
            "1 - (2 I + smooth) / (P + T + smooth)",
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
    """Per-sample generalised Dice loss, shape (B,); see the module docstring."""
    from .loss import generalized_dice_loss

    config: Config = extras.config
    loss = generalized_dice_loss(inputs["y_true"], outputs["y_pred"], smooth=float(config.smooth))
    return LossResult(loss=loss)

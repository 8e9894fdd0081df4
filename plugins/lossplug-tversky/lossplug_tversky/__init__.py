"""lossplug plugin ``tversky``: Tversky and focal Tversky loss for segmentation masks.

``tversky`` is also the name of a Keras loss (``keras.losses.tversky``); lossplug lets
this plugin shadow it (``lossplug.specs.SHADOWABLE_KERAS_NAMES``), so once the plugin is
installed ``"tversky"`` in ``LossModel.compile`` means this plugin, whose ``gamma=1``,
``smooth=0`` with alpha and beta swapped is Keras' loss per sample (see the README).

Masks are channels-last, (B, ..., C): C = 1 for a binary mask (sigmoid outputs),
one-hot targets over C classes for a multi-class mask (softmax outputs); class-id
targets of shape (B, ...) are accepted too. With p = y_pred, t = y_true, for every
sample and class c (sums over the spatial axes)::

    TP_c = sum(p t),   FP_c = sum(p (1 - t)),   FN_c = sum((1 - p) t)
    TI_c = (TP_c + smooth) / (TP_c + alpha FP_c + beta FN_c + smooth)    (1 when 0/0)
    loss = mean_c (1 - TI_c) ** (1 / gamma)

alpha weighs false positives and beta false negatives (Salehi et al. 2017, "Tversky
loss function for image segmentation using 3D fully convolutional deep networks");
gamma is the focal exponent of the focal Tversky loss (Abraham & Khan 2019, "A novel
focal Tversky loss function with improved attention U-Net for lesion segmentation"),
in the paper's convention (1 - TI)^(1/gamma): gamma = 1 is the Tversky loss, the
paper's gamma = 4/3 (the default) raises 1 - TI to 0.75. The loss is per sample, in
[0, 1], 0 at a perfect mask, non-decreasing in gamma, and at alpha = beta = 1/2,
gamma = 1 it is the Dice loss with twice the smoothing (the Dice loss itself at
smooth = 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from lossplug import LossResult, PluginConfigError, PluginSpec
from lossplug.properties import (
    Bounded,
    Monotone,
    NonNegative,
    ReducesTo,
    Symmetric,
    ZeroAtPerfect,
)
from lossplug.specs import mask_tensors

from . import claims

__all__ = ["SPEC", "Config", "build_loss_graph", "lossplug_spec"]

__version__ = "0.1.0"

#: Smallest positive alpha or beta (below it the weight underflows in float32 products).
MIN_WEIGHT = 1e-6


@attrs.frozen
class Config:
    """Hyper-parameters of ``tversky`` (defaults: Abraham & Khan's alpha, beta, gamma)."""

    alpha: float = lossplug.param(
        0.3,
        low=0.0,
        doc="weight of the false positives FP = sum(p (1 - t)) in the Tversky index",
    )
    beta: float = lossplug.param(
        0.7,
        low=0.0,
        doc="weight of the false negatives FN = sum((1 - p) t) in the Tversky index",
    )
    gamma: float = lossplug.param(
        4.0 / 3.0,
        low=0.1,
        high=10.0,
        neutral=1.0,
        doc="focal exponent: loss = mean_c (1 - TI_c) ** (1 / gamma); 1 is the Tversky loss, "
        "Abraham & Khan try [1, 3], their best is 4/3 (the default); [0.1, 10] keeps the "
        "exponent's powers and their gradients within float32",
    )
    smooth: float = lossplug.param(
        1.0,
        low=0.0,
        doc="added to numerator and denominator of each class's Tversky index; makes an "
        "empty mask predicted as empty a perfect match",
    )

    def __attrs_post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if 0.0 < value < MIN_WEIGHT:
                raise PluginConfigError(
                    f"{name}={value!r}: a weight is 0 or at least {MIN_WEIGHT:g} (smaller "
                    "weights underflow to 0 in float32, where the loss is computed, which "
                    "changes the loss of an empty prediction at smooth=0 from 1 to 0)"
                )
        if self.alpha + self.beta <= 0.0:
            raise PluginConfigError(
                f"alpha={self.alpha!r} and beta={self.beta!r}: at least one must be positive "
                "(with alpha = beta = 0 the Tversky index is 1 for every prediction and the "
                "loss is always 0); Abraham & Khan and Salehi et al. use alpha=0.3, beta=0.7"
            )


SPEC = PluginSpec(
    name="tversky",
    description="Tversky and focal Tversky loss (alpha, beta, gamma) for segmentation masks",
    config=Config,
    tensors=mask_tensors(),
    properties=(
        NonNegative(),
        Bounded(0.0, 1.0),
        ZeroAtPerfect(claims.perfect_mask, atol=1e-6, description="y_pred equal to a 0/1 mask"),
        ReducesTo(
            "the dice plugin's loss (bce_weight=0) with smooth = 2 * smooth",
            reference=claims.dice_reference,
            at=claims.AS_DICE,
            rtol=1e-5,
            atol=1e-6,
        ),
        Symmetric("y_true", "y_pred", rtol=1e-5, at=claims.SYMMETRIC),
        Monotone("gamma", values=(0.5, 1.0, 4.0 / 3.0, 2.0, 3.0), increasing=True),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> LossResult:
    """Per-sample (focal) Tversky loss, shape (B,); see the module docstring."""
    from .loss import focal_tversky_loss

    config: Config = extras.config
    loss = focal_tversky_loss(
        inputs["y_true"],
        outputs["y_pred"],
        alpha=float(config.alpha),
        beta=float(config.beta),
        gamma=float(config.gamma),
        smooth=float(config.smooth),
    )
    return LossResult(loss=loss)

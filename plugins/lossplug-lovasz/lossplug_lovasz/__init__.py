"""lossplug plugin ``lovasz``: Lovasz-softmax and Lovasz hinge losses, per image.

Berman, Rannen Triki & Blaschko 2018, "The Lovasz-Softmax loss: a tractable surrogate for
the optimization of the intersection-over-union measure in neural networks" (CVPR). For
each image and class, the pixel errors m are sorted in decreasing order and weighted by
the gradient of the Lovasz extension of the Jaccard loss (Algorithm 1 of the paper)::

    J_k = 1 - (G - sum_{j<=k} t_(j)) / (G + sum_{j<=k} (1 - t_(j))),   G = sum_i t_i
    loss_c = sum_k m_(k) (J_k - J_(k-1))

a convex, piecewise-linear surrogate of 1 - IoU that equals it when the errors are 0/1.

- ``mode="softmax"`` (Lovasz-softmax): y_pred holds probabilities (softmax outputs over
  C classes, or a sigmoid for C = 1), m_i = |t_i - p_i|;
- ``mode="binary"`` (Lovasz hinge): y_pred holds logits, one binary mask per channel,
  m_i = max(0, 1 - z_i (2 t_i - 1)); zero once every logit is on its side with margin 1.

The loss of an image is the mean over its classes: those present in its target
(``classes="present"``) or all (``"all"``); ``"auto"`` is the paper code's choice, present
for softmax and all for the hinge. Per image ("per_image=True" in the paper's code),
shape (B,): the core averages over the batch with sample weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec
from lossplug.properties import Custom, NonNegative, ReducesTo, ZeroAtPerfect
from lossplug.specs import mask_tensors

from . import claims

__all__ = ["SPEC", "Config", "build_loss_graph", "lossplug_spec"]

__version__ = "0.1.0"

MODES = ("softmax", "binary")
CLASSES = ("auto", "present", "all")


@attrs.frozen
class Config:
    """Hyper-parameters of ``lovasz``."""

    mode: str = lossplug.param(
        "softmax",
        choices=MODES,
        doc="'softmax': Lovasz-softmax on probabilities, errors |t - p|; 'binary': Lovasz "
        "hinge on logits, errors max(0, 1 - z (2t - 1)), one binary mask per channel",
    )
    classes: str = lossplug.param(
        "auto",
        choices=CLASSES,
        doc="classes averaged per image: 'present' (in the image's target), 'all', or "
        "'auto' (present for mode='softmax', all for mode='binary', as the paper's code)",
    )


SPEC = PluginSpec(
    name="lovasz",
    description="Lovasz-softmax (probabilities) and Lovasz hinge (logits) losses, per image",
    config=Config,
    tensors=mask_tensors(
        "probabilities (mode='softmax': softmax or sigmoid outputs) or logits (mode='binary')",
        kind=Kind.REAL,
    ),
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            claims.perfect,
            atol=1e-6,
            description="a 0/1 mask predicted exactly (softmax) or by logits +-2 (binary)",
        ),
        ReducesTo(
            "the paper's Algorithm 1, one image and class at a time (NumPy)",
            reference=claims.reference,
            rtol=1e-5,
            atol=1e-5,
        ),
        Custom(
            "hard_predictions_give_one_minus_iou",
            check=claims.check_hard_predictions_give_one_minus_iou,
            description="on 0/1 predictions the loss is 1 - IoU, averaged over the counted classes",
            at=claims.SOFTMAX,
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
    """Per-image Lovasz loss, shape (B,); see the module docstring."""
    from .loss import lovasz_loss

    config: Config = extras.config
    loss = lovasz_loss(
        inputs["y_true"], outputs["y_pred"], mode=config.mode, classes=config.classes
    )
    return LossResult(loss=loss)

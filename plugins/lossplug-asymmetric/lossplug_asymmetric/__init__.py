"""lossplug plugin ``asymmetric``: Asymmetric Loss (ASL) for multi-label classification.

Ridnik et al. (2021), "Asymmetric Loss For Multi-Label Classification" (ICCV).
For each label, with target t (multi-hot) and p = sigmoid(z):

    L+  = (1 - p)^gamma_pos * -log p                  positive labels
    p_m = max(p - m, 0)                               m: the probability margin ``clip``
    L-  = p_m^gamma_neg * -log(1 - p_m)               negative labels
    loss = sum over labels of t L+ + (1 - t) L-       per sample (or the mean: ``reduction``)

(probabilities inside the logarithms floored at ``eps``, as in the official code).
gamma_neg > gamma_pos focuses less on the many easy negatives of a multi-label
problem; the margin discards negatives with p <= m altogether, and together they
lower the gradient of very confident negatives, which the paper argues are often
missing labels. At gamma_pos = gamma_neg = 0,
m = 0 (eps = 0) it is binary cross-entropy summed over the labels; at
gamma_pos = gamma_neg = gamma, m = 0 the binary focal loss without alpha.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, Monotone, NonNegative, ReducesTo, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "asymmetric"
REDUCTIONS = ("sum", "mean")


@attrs.frozen
class Config:
    """Hyper-parameters of ``asymmetric`` (defaults: the official training scripts' setting)."""

    gamma_pos: float = lossplug.param(
        0.0, low=0.0, neutral=0.0, doc="focusing parameter of positive labels: (1 - p)^gamma_pos"
    )
    gamma_neg: float = lossplug.param(
        4.0, low=0.0, neutral=0.0, doc="focusing parameter of negative labels: p_m^gamma_neg"
    )
    clip: float = lossplug.param(
        0.05,
        low=0.0,
        high=1.0,
        neutral=0.0,
        doc="probability margin m: negatives use p_m = max(p - m, 0), so p <= m costs 0",
    )
    eps: float = lossplug.param(
        1e-8,
        low=0.0,
        high=1.0,
        high_inclusive=False,
        neutral=0.0,
        doc="floor of the probabilities inside the logarithms (the official code's "
        "clamp); caps each label's loss at -log(eps); 0 switches it off",
    )
    reduction: str = lossplug.param(
        "sum",
        choices=REDUCTIONS,
        doc="'sum' over the labels (the paper, the official code) or 'mean' (Keras' "
        "binary_crossentropy convention)",
    )
    from_logits: bool = lossplug.param(
        True, doc="y_pred holds logits (True) or sigmoid probabilities (False)"
    )


_CE_AT = {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0, "eps": 0.0}

SPEC = PluginSpec(
    name=NAME,
    description="Asymmetric loss (ASL) for multi-label classification: gamma_pos, gamma_neg, "
    "probability margin.",
    config=Config,
    tensors=(
        TensorSpec(
            "y_true",
            Kind.BINARY_LABELS,
            source="inputs",
            shape=("B", "C"),
            description="multi-hot targets (B, C) (class ids (B,) are one positive per sample)",
        ),
        TensorSpec(
            "y_pred",
            Kind.LOGITS,
            source="outputs",
            shape=("B", "C"),
            description="one logit per label, or sigmoid probabilities with from_logits=False",
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "binary cross-entropy, summed (reduction='sum') or averaged over the labels "
            "(NumPy reference)",
            reference=claims.bce_reference,
            at=_CE_AT,
        ),
        ReducesTo(
            "the binary focal loss without alpha, gamma = 2 (Lin et al. 2017; NumPy reference)",
            reference=claims.focal_gamma2_reference,
            at={"gamma_pos": 2.0, "gamma_neg": 2.0, "clip": 0.0, "eps": 0.0},
        ),
        Custom(
            "focal_at_equal_gammas",
            check=claims.check_focal_at_equal_gammas,
            description="with gamma_neg = gamma_pos = gamma, clip = 0, eps = 0: the binary "
            "focal loss (1 - p_t)^gamma * bce for every gamma",
        ),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="a confident correct prediction (0/1 probabilities, or logits of +-50)",
        ),
        Monotone("gamma_neg", values=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0), increasing=False),
        Monotone("gamma_pos", values=(0.0, 0.5, 1.0, 2.0, 4.0), increasing=False),
        Monotone("clip", values=(0.0, 0.01, 0.05, 0.2, 0.5, 1.0), increasing=False),
        Custom(
            "clip_discards_easy_negatives",
            check=claims.check_clip_discards_easy_negatives,
            description="negative labels with p <= clip contribute exactly 0",
        ),
        Custom(
            "matches_the_paper",
            check=claims.check_matches_the_paper,
            description="equals the paper's eqs. 4-8 (NumPy, float64) at every config",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample asymmetric loss; see the module docstring."""
    from .loss import asymmetric_loss

    config: Config = extras.config
    loss = asymmetric_loss(
        inputs["y_true"],
        outputs["y_pred"],
        gamma_pos=float(config.gamma_pos),
        gamma_neg=float(config.gamma_neg),
        clip=float(config.clip),
        eps=float(config.eps),
        reduction=config.reduction,
        from_logits=bool(config.from_logits),
    )
    return LossResult(loss=loss)

"""lossplug plugin ``poly``: the Poly-1 loss (Leng et al. 2022, "PolyLoss", ICLR).

Cross-entropy is the polynomial series -log p_t = sum_j (1 - p_t)^j / j; Poly-1
moves its first coefficient by epsilon:

    loss = -log p_t + epsilon * (1 - p_t)

Categorical (``mode="categorical"``, softmax over the last axis), per sample,
for targets q (class ids turned one-hot, one-hot or soft rows; label-smoothed
with q = (1 - alpha) t + alpha / C):

    loss = sum_c q_c (-log p_c + epsilon (1 - p_c)) = CE(q, p) + epsilon (1 - sum_c q_c p_c)

Binary (``mode="binary"``, a sigmoid per entry, targets t in [0, 1] of y_pred's
shape, smoothed towards 1/2), element-wise then averaged over the last axis:

    loss = mean_last_axis(t (-log p + epsilon (1 - p)) + (1 - t) (-log(1 - p) + epsilon p))

At epsilon = 0 this is (label-smoothed) cross-entropy. Each per-class term
-log u + epsilon (1 - u) is >= 0 for epsilon >= -1 (since -log u >= 1 - u),
which is why epsilon is restricted to [-1, inf): below -1 the loss goes
negative just below p_t = 1, and its minimum moves to p_t = -1 / epsilon < 1.
The loss grows with epsilon.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, Monotone, NonNegative, ReducesTo, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "poly"
MODES = ("categorical", "binary")


@attrs.frozen
class Config:
    """Hyper-parameters of ``poly``."""

    epsilon: float = lossplug.param(
        1.0,
        low=-1.0,
        neutral=0.0,
        doc="shift of the first polynomial coefficient: CE + epsilon * (1 - p_t); "
        ">= -1 keeps the loss >= 0 (the paper's default is 1)",
    )
    mode: str = lossplug.param(
        "categorical",
        choices=MODES,
        doc="'categorical': softmax over the last axis; 'binary': independent sigmoids",
    )
    label_smoothing: float = lossplug.param(
        0.0,
        low=0.0,
        high=1.0,
        neutral=0.0,
        doc="alpha: targets (1 - alpha) t + alpha / C (binary: alpha / 2), in both the "
        "cross-entropy and the 1 - p_t term (the paper's label-smoothed Poly-1)",
    )
    from_logits: bool = lossplug.param(
        True, doc="y_pred holds logits (True) or probabilities (False)"
    )


SPEC = PluginSpec(
    name=NAME,
    description="Poly-1 loss (PolyLoss): cross-entropy + epsilon * (1 - p_t), softmax or sigmoid.",
    config=Config,
    tensors=(
        TensorSpec(
            "y_true",
            Kind.LABELS,
            source="inputs",
            classes="C",
            description="class ids (B,), or one-hot / multi-hot / soft targets of y_pred's shape",
        ),
        TensorSpec(
            "y_pred",
            Kind.LOGITS,
            source="outputs",
            shape=("B", "C"),
            description="logits, or probabilities with from_logits=False",
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "cross-entropy (categorical, or binary averaged over the last axis, against the "
            "label-smoothed targets; NumPy reference)",
            reference=claims.cross_entropy_reference,
            at={"epsilon": 0.0},
        ),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="a confident correct prediction (one-hot probabilities, or logits "
            "with a margin of 50)",
            at={"label_smoothing": 0.0},
        ),
        Monotone("epsilon", values=(-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 5.0), increasing=True),
        Custom(
            "first_coefficient",
            check=claims.check_first_coefficient,
            description="Poly-1 minus its cross-entropy (epsilon = 0) is epsilon * (1 - p_t) "
            "with the paper's p_t (NumPy softmax / sigmoid)",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample Poly-1 loss; see the module docstring."""
    from .loss import poly1_loss

    config: Config = extras.config
    loss = poly1_loss(
        inputs["y_true"],
        outputs["y_pred"],
        epsilon=float(config.epsilon),
        mode=config.mode,
        label_smoothing=float(config.label_smoothing),
        from_logits=bool(config.from_logits),
    )
    return LossResult(loss=loss)

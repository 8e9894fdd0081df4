"""lossplug plugin ``bi_tempered``: the bi-tempered logistic loss (Amid et al. 2019, NeurIPS).

"Robust Bi-Tempered Logistic Loss Based on Bregman Divergences": cross-entropy
with two temperatures. The tempered softmax (temperature t2 >= 1, heavy-tailed
for t2 > 1) gives y_hat = exp_t2(a - lambda(a)); the loss of targets q (class
ids, one-hot or soft rows, label-smoothed with (1 - alpha) t + alpha / C) is,
per sample,

    loss = sum_c [ q_c (log_t1 q_c - log_t1 y_hat_c) - (q_c^(2-t1) - y_hat_c^(2-t1)) / (2 - t1) ]

with log_t(u) = (u^(1-t) - 1) / (1 - t) and exp_t its inverse. For t1 < 1 the
loss is bounded (by 1 / (1 - t1) for one-hot targets), so a mislabeled example
far on the wrong side cannot dominate training; t2 > 1 makes the softmax tails
heavier, which softens the pull of examples near the decision boundary. At
t1 = t2 = 1 it is softmax cross-entropy (KL(q || p) for soft targets); at
t1 = 0 it is half the squared error between q and the tempered softmax.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ReducesTo, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "bi_tempered"
#: Newton steps that make the normalisation exact to float precision (the claims' ``at``)
EXACT = {"newton_steps": 6}


@attrs.frozen
class Config:
    """Hyper-parameters of ``bi_tempered``."""

    t1: float = lossplug.param(
        0.8,
        low=0.0,
        high=1.0,
        neutral=1.0,
        doc="temperature of the logarithm: < 1 bounds the loss (1 / (1 - t1) for one-hot "
        "targets); 1 is the logistic loss",
    )
    t2: float = lossplug.param(
        1.2,
        low=1.0,
        high=5.0,
        neutral=1.0,
        doc="temperature of the tempered softmax: > 1 gives heavier tails; 1 is softmax",
    )
    label_smoothing: float = lossplug.param(
        0.0,
        low=0.0,
        high=1.0,
        neutral=0.0,
        doc="alpha: targets (1 - alpha) t + alpha / C",
    )
    num_iters: int = lossplug.param(
        5,
        low=1,
        high=20,
        doc="fixed-point iterations of the normalisation (Amid et al.'s algorithm; t2 > 1)",
    )
    newton_steps: int = lossplug.param(
        6,
        low=0,
        high=10,
        doc="Newton steps refining the normalisation after the fixed point (0: the "
        "reference code's values; 6: exact to float precision)",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Bi-tempered logistic loss (t1 <= 1 bounded, t2 >= 1 heavy-tailed softmax), "
    "robust to label noise.",
    config=Config,
    tensors=(
        TensorSpec(
            "y_true",
            Kind.LABELS,
            source="inputs",
            classes="C",
            description="class ids (B,) or one-hot / soft targets (B, C)",
        ),
        TensorSpec(
            "y_pred",
            Kind.LOGITS,
            source="outputs",
            shape=("B", "C"),
            description="logits (activations of the last layer)",
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "softmax cross-entropy (NumPy reference)",
            reference=claims.softmax_cross_entropy,
            at={"t1": 1.0, "t2": 1.0, "label_smoothing": 0.0},
        ),
        ReducesTo(
            "half the squared error between q and the tempered softmax (the Brier score / 2 "
            "at t2 = 1; NumPy, exact normalisation)",
            reference=claims.half_squared_error,
            at={"t1": 0.0, **EXACT},
        ),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="logits log_t2(q) whose tempered softmax is the (smoothed) target q, "
            "floored at 1e-6",
            at=EXACT,
        ),
        Custom(
            "bounded_for_t1_below_1",
            check=claims.check_bounded,
            description="for t1 < 1, loss <= sum_c q_c^(2-t1) / ((1-t1)(2-t1)) + 1 / (2-t1) "
            "(1 / (1 - t1) for one-hot targets), also at logits scaled by 1e3",
            at=EXACT,
        ),
        Custom(
            "matches_the_paper",
            check=claims.check_matches_the_paper,
            description="equals the paper's loss with an exactly normalised tempered softmax "
            "(NumPy, float64, bisection)",
            at=EXACT,
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample bi-tempered logistic loss; see the module docstring."""
    from .loss import bi_tempered_loss

    config: Config = extras.config
    loss = bi_tempered_loss(
        inputs["y_true"],
        outputs["y_pred"],
        t1=float(config.t1),
        t2=float(config.t2),
        label_smoothing=float(config.label_smoothing),
        num_iters=int(config.num_iters),
        newton_steps=int(config.newton_steps),
    )
    return LossResult(loss=loss)

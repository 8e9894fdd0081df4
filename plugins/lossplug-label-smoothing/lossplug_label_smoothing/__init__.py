"""lossplug plugin ``label_smoothing``: cross-entropy against label-smoothed targets.

For C classes, targets t and smoothing epsilon:

    q    = (1 - epsilon) * t + epsilon / C
    loss = -sum_c q_c * log p_c          per sample

with p = softmax(y_pred) when ``from_logits`` (computed as log_softmax, i.e.
logits minus their log-sum-exp), otherwise the given probabilities (clipped to
[1e-7, 1], renormalised, and clipped to [1e-7, 1 - 1e-7] like Keras). Targets
are class ids (sparse: one axis fewer than ``y_pred``, or a trailing axis of 1)
or one-hot / soft rows.

At epsilon = 0 this is categorical cross-entropy. For fixed targets the loss is
minimal at p = q, where it equals the entropy H(q) (loss - H(q) = KL(q || p) >= 0),
so with epsilon > 0 the minimum is H(q) > 0, not 0.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ReducesTo, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "label_smoothing"


@attrs.frozen
class Config:
    """Hyper-parameters of ``label_smoothing``."""

    epsilon: float = lossplug.param(
        0.1,
        low=0.0,
        high=1.0,
        neutral=0.0,
        doc="smoothing mass spread uniformly over the C classes: q = (1 - eps) t + eps / C",
    )
    from_logits: bool = lossplug.param(
        True, doc="y_pred holds logits (True) or probabilities (False)"
    )


SPEC = PluginSpec(
    name=NAME,
    description="Cross-entropy against label-smoothed targets (1 - eps) t + eps / C.",
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
            description="logits, or probabilities with from_logits=False",
            from_logits="from_logits",
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "categorical cross-entropy (keras.losses.categorical_crossentropy)",
            reference=claims.keras_crossentropy,
            at={"epsilon": 0.0},
        ),
        ZeroAtPerfect(
            perfect=claims.perfect,
            minimal=True,
            description="the smoothed target distribution p = (1 - eps) t + eps / C",
        ),
        Custom(
            "entropy_lower_bound",
            check=claims.check_gibbs,
            description="loss >= H(q), the entropy of the smoothed target, with equality at p = q",
        ),
        Custom(
            "sparse_equals_one_hot",
            check=claims.check_sparse_matches_one_hot,
            description="class ids and their one-hot encoding give the same loss",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample -sum_c q_c log p_c; see the module docstring."""
    from .loss import label_smoothing_crossentropy

    config: Config = extras.config
    loss = label_smoothing_crossentropy(
        inputs["y_true"],
        outputs["y_pred"],
        epsilon=float(config.epsilon),
        from_logits=bool(config.from_logits),
    )
    return LossResult(loss=loss)

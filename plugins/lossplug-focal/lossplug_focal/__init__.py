"""lossplug plugin ``focal``: focal loss (Lin et al. 2017), categorical and binary.

Categorical (``mode="categorical"``), per sample, targets t (class ids,
one-hot or soft rows) and probabilities p = softmax(y_pred):

    loss = -a * sum_c t_c * (1 - p_c)^gamma * log p_c,     a = alpha (1 if None)

Binary (``mode="binary"``), element-wise with p = sigmoid(y_pred) and targets
t in [0, 1] of y_pred's shape (class ids are turned one-hot: one-vs-rest, as in
RetinaNet), then averaged over the last axis:

    bce = -(t log p + (1 - t) log(1 - p)),   1 - p_t = t (1 - p) + (1 - t) p
    loss = mean_last_axis((alpha t + (1 - alpha)(1 - t)) * (1 - p_t)^gamma * bce)

``alpha=None`` switches the alpha weighting off; with gamma = 0 the loss is then
exactly cross-entropy. The factor (1 - p_t)^gamma <= 1 shrinks the loss of
well-classified examples (p_t > 0.5 keeps at most 0.5^gamma of it), and the loss
never increases as gamma grows.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginConfigError, PluginSpec, TensorSpec
from lossplug.properties import Custom, Monotone, NonNegative, ReducesTo

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "focal"
MODES = ("categorical", "binary")


@attrs.frozen
class _AlphaRule:
    """alpha is None (no weighting) or a number in [0, 1]."""

    def describe(self) -> str:
        return "None (no alpha weighting) or a number in [0.0, 1.0]"

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PluginConfigError(
                f"must be None or a number in [0.0, 1.0], got {type(value).__name__}"
            )
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise PluginConfigError("must be None or a number in [0.0, 1.0]")


_ALPHA_DOC = (
    "class-balancing weight: binary mode weighs positives by alpha and negatives by "
    "1 - alpha; categorical mode multiplies the loss by alpha; None switches it off"
)


@attrs.frozen
class Config:
    """Hyper-parameters of ``focal``."""

    mode: str = lossplug.param(
        "categorical",
        choices=MODES,
        doc="'categorical': softmax over the last axis; 'binary': independent sigmoids",
    )
    gamma: float = lossplug.param(
        2.0,
        low=0.0,
        neutral=0.0,
        doc="focusing parameter: the loss is scaled by (1 - p_t)^gamma",
    )
    alpha: float | None = attrs.field(
        default=0.25,
        validator=_AlphaRule(),
        # the same metadata lossplug.param writes, so `lossplug info` and the kit read it
        metadata=lossplug.param(0.25, low=0.0, high=1.0, doc=_ALPHA_DOC, neutral=None).metadata,
    )
    from_logits: bool = lossplug.param(
        True, doc="y_pred holds logits (True) or probabilities (False)"
    )


SPEC = PluginSpec(
    name=NAME,
    description="Focal loss (alpha, gamma), categorical or binary, from logits or probabilities.",
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
            from_logits="from_logits",
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "cross-entropy (keras.losses categorical / sparse categorical / binary, by mode)",
            reference=claims.cross_entropy_reference,
            at={"gamma": 0.0, "alpha": None},
        ),
        Monotone("gamma", values=(0.0, 0.5, 1.0, 2.0, 5.0), increasing=False),
        Custom(
            "down_weights_well_classified",
            check=claims.check_down_weighting,
            description="with alpha=None, focal = (1 - p_t)^gamma * cross-entropy: an example "
            "with p_t > 0.5 keeps at most 0.5^gamma of its cross-entropy",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample focal loss; see the module docstring."""
    from .loss import focal_loss

    config: Config = extras.config
    loss = focal_loss(
        inputs["y_true"],
        outputs["y_pred"],
        mode=config.mode,
        gamma=float(config.gamma),
        alpha=None if config.alpha is None else float(config.alpha),
        from_logits=bool(config.from_logits),
    )
    return LossResult(loss=loss)

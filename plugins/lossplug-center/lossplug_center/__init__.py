"""lossplug plugin ``center``: center loss with class centres the plugin owns (Wen et al. 2016).

Per sample, for the features x_i of an exposed layer, class id y_i and the
class centres c (a (num_classes, D) variable the plugin owns):

    loss_i = 1/2 * ||x_i - c_{y_i}||^2

The 1/2 follows the paper (eq. 2), so d loss_i / d x_i = x_i - c_{y_i}. The
paper's lambda is the term weight: ``lossplug.use("center", weight=lam)``.
The core averages loss_i over the batch, so the term is
lam / (2B) * sum_i ||x_i - c_{y_i}||^2 (the paper sums over the mini-batch).

The centres are created with ``extras.state.variable("centers", ...)`` (zeros),
checkpointed and saved with the model. ``update`` chooses how they move:

``"gradient"`` (default)
    they are trained by the model's optimizer; ``alpha`` multiplies the gradient
    reaching them (alpha = 1: ordinary weights; alpha = 0: they never move).
    Adaptive optimizers (Adam) cancel that constant factor.

``"paper"``
    the paper's rule (eq. 4), once per training step, outside the optimizer:
    the centres are non-trainable, the loss reads ``stop_gradient(c)`` (the
    features still get d loss_i / d x_i = x_i - c_{y_i}), and with the global
    batch's features, labels and sample weights w_i (1 without)

        n_j = sum_{i: y_i = j} w_i
        c_j <- c_j - alpha * sum_{i: y_i = j} w_i (c_j - x_i) / (1 + n_j)

    is applied through ``extras.state.update`` (after the optimizer's step,
    only when the step is applied, never in ``evaluate``/``predict``).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import InvalidTensorError, Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "center"
STATE = "centers"
#: How the centres move: by the optimizer (their gradient scaled by alpha) or by the paper's rule.
UPDATES = ("gradient", "paper")


@attrs.frozen
class Config:
    """Hyper-parameters of ``center``."""

    num_classes: int = lossplug.param(
        10,
        low=1,
        kind=int,
        doc="number of classes, i.e. of centres; labels must lie in [0, num_classes)",
    )
    alpha: float = lossplug.param(
        0.5,
        low=0.0,
        high=1.0,
        doc="centre rate: with update='gradient' it scales the centres' gradient (1 = "
        "ordinary weights, 0 = frozen centres); with update='paper' it is the rule's alpha",
    )
    update: str = lossplug.param(
        "gradient",
        choices=UPDATES,
        doc="'gradient': the optimizer trains the centres; 'paper': Wen et al.'s rule "
        "c_j -= alpha * sum_{y_i=j} (c_j - x_i) / (1 + n_j), once per training step",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Center loss 1/2 ||x - c_y||^2 with class centres it owns (Wen et al. 2016).",
    config=Config,
    tensors=(
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            classes="num_classes",
            description="class ids in [0, num_classes)",
        ),
        TensorSpec(
            "features",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="the deep features, usually an exposed layer: "
            "LossModel(..., expose=['features'])",
        ),
    ),
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="features equal to their class centres",
        ),
        Custom(
            "alpha_scales_gradient_only",
            check=claims.check_alpha_keeps_value,
            description="the loss value does not depend on alpha (it only scales the "
            "centres' gradient)",
        ),
        Custom(
            "update_rule_keeps_value",
            check=claims.check_update_keeps_value,
            description="the loss value does not depend on the update rule (only how the "
            "centres move does)",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample 1/2 ||x_i - c_{y_i}||^2; creates the centres on the first call.

    With ``update="paper"`` also asks for the centres' next value by the paper's rule
    (see the module docstring), computed from the global batch (``extras.all_gather``).
    """
    from .loss import center_loss, class_ids, paper_update

    config: Config = extras.config
    features = outputs["features"]
    feature_shape = tuple(features.shape[1:])
    if len(features.shape) < 2 or any(d is None for d in feature_shape):
        raise InvalidTensorError(
            f"loss plugin {NAME!r}: features must have shape (batch, D) with a known D, got "
            f"{tuple(features.shape)}; expose a layer with a fixed output size"
        )
    paper = config.update == "paper"
    # alpha = 0 or the paper's rule: the optimizer must not own the centres (it would have
    # a variable without a gradient, or fight the rule)
    centers = extras.state.variable(
        STATE, (config.num_classes, *feature_shape), trainable=config.alpha > 0 and not paper
    )
    labels = class_ids(inputs["y_true"], config.num_classes)
    if not paper:
        return LossResult(loss=center_loss(features, labels, centers, float(config.alpha)))
    # The rule is asked for on every call; the core applies it only in training steps.
    weights = _sample_weights(extras.sample_weight)
    gathered = paper_update(
        extras.all_gather(features),
        extras.all_gather(labels),
        centers,
        float(config.alpha),
        None if weights is None else extras.all_gather(weights),
    )
    extras.state.update(STATE, gathered)
    # gradient scale 0: the loss reads stop_gradient(centres); the features get x - c
    return LossResult(loss=center_loss(features, labels, centers, 0.0))


def _sample_weights(sample_weight: Any) -> Any:
    """The batch's sample weights as shape (B,), or None (every sample counts once)."""
    if sample_weight is None:
        return None
    from keras import ops

    if not hasattr(sample_weight, "shape"):
        raise InvalidTensorError(
            f"loss plugin {NAME!r}: update='paper' counts each sample by its weight and needs "
            f"one weight per sample, got sample_weight of type {type(sample_weight).__name__}"
        )
    weights = ops.convert_to_tensor(sample_weight)
    while len(weights.shape) > 1 and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    if len(weights.shape) != 1:
        raise InvalidTensorError(
            f"loss plugin {NAME!r}: update='paper' counts each sample by its weight and needs "
            f"sample weights of shape (batch,), got {tuple(sample_weight.shape)}"
        )
    return weights

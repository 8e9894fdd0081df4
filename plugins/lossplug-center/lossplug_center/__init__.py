"""lossplug plugin ``center``: center loss with trainable class centres (Wen et al. 2016).

Per sample, for the features x_i of an exposed layer, class id y_i and the
class centres c (a (num_classes, D) variable the plugin owns):

    loss_i = 1/2 * ||x_i - c_{y_i}||^2

The 1/2 follows the paper (eq. 2), so d loss_i / d x_i = x_i - c_{y_i}. The
paper's lambda is the term weight: ``lossplug.use("center", weight=lam)``.
The core averages loss_i over the batch, so the term is
lam / (2B) * sum_i ||x_i - c_{y_i}||^2 (the paper sums over the mini-batch).

The centres are created with ``extras.state.variable("centers", ...)`` (zeros),
so they are trained by the model's optimizer, checkpointed and saved with the
model. ``alpha`` is the paper's centre learning rate relative to the network's:
the gradient reaching the centres is multiplied by alpha (alpha = 1: the
centres are ordinary weights; alpha = 0: they never move).
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
        doc="centre update rate relative to the network's learning rate (scales the "
        "centres' gradient; 1 = ordinary weights, 0 = frozen centres)",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Center loss 1/2 ||x - c_y||^2 with trainable class centres (Wen et al. 2016).",
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
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample 1/2 ||x_i - c_{y_i}||^2; creates the centres on the first call."""
    from .loss import center_loss, class_ids

    config: Config = extras.config
    features = outputs["features"]
    feature_shape = tuple(features.shape[1:])
    if len(features.shape) < 2 or any(d is None for d in feature_shape):
        raise InvalidTensorError(
            f"loss plugin {NAME!r}: features must have shape (batch, D) with a known D, got "
            f"{tuple(features.shape)}; expose a layer with a fixed output size"
        )
    # alpha = 0: frozen centres, so the optimizer has no variable without a gradient
    centers = extras.state.variable(
        STATE, (config.num_classes, *feature_shape), trainable=config.alpha > 0
    )
    labels = class_ids(inputs["y_true"], config.num_classes)
    return LossResult(loss=center_loss(features, labels, centers, float(config.alpha)))

"""A metric plugin: the mean squared L2 norm of a layer's activations.

For activations a of shape (B, ...) (bind ``activations`` to an exposed layer)::

    activation_norm = (1 / B) * sum_b ||a_b||^2
    ||a_b||^2 = sum of a_b^2 over every non-batch axis

computed in float32 (float64 for float64 activations) and shown in the
progress bar and ``History`` while training (and under ``val_`` on validation
data); the epoch value is the mean over all samples of the epoch. The plugin
returns no loss (its spec declares ``returns="metrics"``), so it never changes
training: use it to watch activations grow or collapse. To *penalise* them
instead, give the layer an ``activity_regularizer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from keras import ops
from lossplug import Kind, LossResult, Metric, PluginSpec, TensorSpec, numerics
from lossplug.numerics import reduce_trailing, to_compute_dtype


@attrs.frozen
class Config:
    """``activation_norm`` has no hyper-parameters."""


def squared_norms(activations: Any) -> Any:
    """||a_b||^2 per sample, shape (B,) (a (B,) tensor is one unit per sample).

    Computed in float32, or in float64 for float64 activations.
    """
    return reduce_trailing(ops.square(to_compute_dtype(activations)), "sum")


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return PluginSpec(
        name="activation_norm",
        description="metric: mean squared L2 norm of a layer's activations",
        config=Config,
        tensors=(
            TensorSpec(
                "activations",
                Kind.REAL,
                shape=("B", "D"),
                description="activations of shape (B, ...); bind to an exposed layer",
            ),
        ),
        returns="metrics",
    )


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> LossResult:
    value = numerics.mean(squared_norms(outputs["activations"]))
    return LossResult(loss=None, metrics={"activation_norm": Metric(value, aggregation="mean")})


__all__ = ["Config", "build_loss_graph", "lossplug_spec", "squared_norms"]

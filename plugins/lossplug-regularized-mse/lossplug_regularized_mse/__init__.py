"""lossplug plugin ``regularized_mse``: mean squared error plus a pull towards 0.5.

Per sample, averaged over the last axis like keras.losses.mean_squared_error:

    loss = mean((y_true - y_pred)^2) + factor * mean((0.5 - y_pred)^2)

At factor = 0 it is mean squared error. The penalty grows with factor and, for
fixed targets, moves the best prediction from y_true to
(y_true + factor / 2) / (1 + factor), towards 0.5 (useful for outputs in [0, 1]
that should stay away from overconfident extremes).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Monotone, NonNegative, ReducesTo, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "regularized_mse"


@attrs.frozen
class Config:
    """Hyper-parameters of ``regularized_mse``."""

    factor: float = lossplug.param(
        0.1,
        low=0.0,
        neutral=0.0,
        doc="weight of the penalty mean((0.5 - y_pred)^2)",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Mean squared error plus factor * mean((0.5 - y_pred)^2).",
    config=Config,
    tensors=(
        TensorSpec("y_true", Kind.REAL, source="inputs", shape=("B", "N"), description="targets"),
        TensorSpec(
            "y_pred", Kind.REAL, source="outputs", shape=("B", "N"), description="predictions"
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "mean squared error (keras.losses.mean_squared_error)",
            reference=claims.keras_mse,
            at={"factor": 0.0},
        ),
        Monotone("factor", values=(0.0, 0.1, 1.0, 10.0), increasing=True),
        ZeroAtPerfect(
            perfect=claims.minimiser,
            minimal=True,
            description="y_pred = (y_true + factor / 2) / (1 + factor)",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample loss; see the module docstring."""
    from .loss import regularized_mse

    config: Config = extras.config
    return LossResult(
        loss=regularized_mse(inputs["y_true"], outputs["y_pred"], float(config.factor))
    )

"""lossplug plugin ``reconstruction``: an autoencoder's loss between an input and an output.

Per sample, for the model input x and its reconstruction r = y_pred (same shape
(B, ...)), averaged over the N non-batch entries:

    kind="mse": 1/N * sum_j (r_j - x_j)^2
    kind="mae": 1/N * sum_j |r_j - x_j|
    kind="bce": 1/N * sum_j -(x_j log p_j + (1 - x_j) log(1 - p_j)),  p = clip(r, 1e-7, 1 - 1e-7)

The plugin reads the model input ``x`` (the core provides a single-input model's
input as ``x``; otherwise bind it: ``use("reconstruction", bind={"x": "image"})``)
and needs no targets, so an autoencoder trains with ``model.fit(x)``.

mse and mae are 0 exactly when r = x. bce is 0 when r = x and x is binary, and
for any x in [0, 1] it is minimal at r = x (where it equals the binary entropy
of x).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "reconstruction"
KINDS = ("mse", "mae", "bce")


@attrs.frozen
class Config:
    """Hyper-parameters of ``reconstruction``."""

    kind: str = lossplug.param(
        "mse",
        choices=KINDS,
        doc="'mse' mean squared, 'mae' mean absolute, 'bce' binary cross-entropy "
        "(x in [0, 1], y_pred probabilities)",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Autoencoder loss between a model input and an output (MSE, MAE or BCE).",
    config=Config,
    tensors=(
        TensorSpec(
            "x",
            Kind.IMAGES,
            source="inputs",
            shape=("B", "N"),
            description="the model input to reconstruct (any shape (B, ...), same as y_pred)",
        ),
        TensorSpec(
            "y_pred",
            Kind.IMAGES,
            source="outputs",
            shape=("B", "N"),
            description="the reconstruction (probabilities for kind='bce')",
        ),
    ),
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="y_pred == x (x rounded to 0/1 for kind='bce')",
        ),
        Custom(
            "minimal_at_input",
            check=claims.check_minimal_at_input,
            description="for every x, y_pred == x has the smallest loss (bce: its value "
            "there is the binary entropy of x)",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample reconstruction loss; see the module docstring."""
    from .loss import reconstruction_loss

    config: Config = extras.config
    return LossResult(loss=reconstruction_loss(inputs["x"], outputs["y_pred"], config.kind))

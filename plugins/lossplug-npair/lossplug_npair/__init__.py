"""lossplug plugin ``npair``: the multi-class N-pair loss with its embedding-norm regulariser.

Sohn (2016), "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective": each of N anchors must pick out its own positive among the N
positives of the batch, a softmax cross-entropy over the similarities
s(f_i, f_j^+), plus lambda times the mean squared norm of the embeddings used.
The pairs come from an ordinary labelled batch, one per class with at least two
samples (its first two in a canonical order of the embeddings, so that the batch
order does not matter), as pytorch-metric-learning forms them from index order;
see :mod:`lossplug_npair.loss`. ``batch_coupled=True``,
``returns="scalar"``; sample weights weight the anchors.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec, param
from lossplug.properties import Monotone, NonNegative, ScaleInvariant

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "npair"
SIMILARITIES = ("dot", "cosine")


@attrs.frozen
class Config:
    """Hyper-parameters of ``npair``."""

    l2_weight: float = param(
        0.002,
        low=0.0,
        doc="lambda: weight of the mean squared norm (||f_i||^2 + ||f_i^+||^2) / 2 of the pairs",
    )
    similarity: str = param(
        "dot",
        choices=SIMILARITIES,
        doc="s(u, v): the inner product (the paper) or the cosine (pytorch-metric-learning)",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Multi-class N-pair loss with an L2 embedding regulariser (Sohn 2016).",
    config=Config,
    tensors=(
        TensorSpec(
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="the embeddings (not normalised: the paper uses inner products)",
        ),
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            description="integer labels; two samples of a class form its pair",
        ),
    ),
    properties=(
        NonNegative(),
        Monotone(
            "l2_weight",
            values=(0.0, 0.001, 0.01, 0.1, 1.0),
            increasing=True,
        ),
        ScaleInvariant("embeddings", at={"similarity": "cosine", "l2_weight": 0.0}),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """The N-pair loss of one batch (see :mod:`lossplug_npair.loss`)."""
    from .loss import npair_loss

    loss, metrics = npair_loss(
        outputs["embeddings"], inputs["y_true"], extras.config, extras.sample_weight
    )
    return LossResult(loss=loss, metrics=metrics)

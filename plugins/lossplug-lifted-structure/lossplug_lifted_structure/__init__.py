"""lossplug plugin ``lifted_structure``: the smooth lifted structured loss.

Oh Song et al. (2016), "Deep Metric Learning via Lifted Structured Feature
Embedding" (CVPR), eq. 4: for every positive pair (i, j),

    J_ij = log( sum_{k in N_i} exp(alpha - D_ik) + sum_{l in N_j} exp(alpha - D_jl) ) + D_ij

and L = 1/(2|P|) sum over positive pairs of max(0, J_ij)^2, with the negatives'
log-sum-exps computed once per sample by the core's stable masked log-sum-exp
(see :mod:`lossplug_lifted_structure.loss`). ``batch_coupled=True``,
``returns="scalar"``; sample weights weight the anchors.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec, param
from lossplug.properties import NonNegative, ScaleInvariant, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "lifted_structure"
METRICS = ("euclidean", "cosine")


@attrs.frozen
class Config:
    """Hyper-parameters of ``lifted_structure``."""

    margin: float = param(1.0, low=0.0, doc="alpha in exp(alpha - D): the paper's margin")
    metric: str = param(
        "euclidean",
        choices=METRICS,
        doc="D: ||x - y|| as in the paper, or the cosine distance 1 - cos(x, y)",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Smooth lifted structured loss (Oh Song et al. 2016).",
    config=Config,
    tensors=(
        TensorSpec(
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="the embeddings (model output, or an exposed layer bound here)",
        ),
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            description="integer identity labels of the embeddings",
        ),
    ),
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="positives coinciding, classes margin + log(2B) + 1 apart",
            at={"metric": "euclidean"},
        ),
        ScaleInvariant("embeddings", at={"metric": "cosine"}),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """The lifted structured loss of one batch (see :mod:`lossplug_lifted_structure.loss`)."""
    from .loss import lifted_structure_loss

    loss, metrics = lifted_structure_loss(
        outputs["embeddings"], inputs["y_true"], extras.config, extras.sample_weight
    )
    return LossResult(loss=loss, metrics=metrics)

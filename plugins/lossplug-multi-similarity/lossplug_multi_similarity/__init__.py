"""lossplug plugin ``multi_similarity``: Multi-Similarity loss with its pair miner.

Wang et al. (2019), "Multi-Similarity Loss with General Pair Weighting for Deep
Metric Learning" (CVPR). On cosine similarities S of the batch's embeddings,
the miner keeps the informative pairs (a negative more similar than the
anchor's least similar positive minus epsilon, a positive less similar than its
most similar negative plus epsilon) and each anchor's loss is

    1/alpha log(1 + sum_{kept positives} exp(-alpha (S - lambda)))
    + 1/beta log(1 + sum_{kept negatives} exp(beta (S - lambda)))

(see :mod:`lossplug_multi_similarity.loss`). ``batch_coupled=True``,
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

NAME = "multi_similarity"
AVERAGES = ("batch", "active")


@attrs.frozen
class Config:
    """Hyper-parameters of ``multi_similarity``."""

    # The terms are 1/alpha log(1 + n exp(-alpha ...)) ~ log(1 + n) / alpha as alpha -> 0:
    # the scales must be positive, and 1e-3 keeps 1/alpha a float32 number of sane size.
    alpha: float = param(
        2.0, low=1e-3, doc="alpha: scale of the positive pairs' term (the paper: 2)"
    )
    beta: float = param(
        50.0, low=1e-3, doc="beta: scale of the negative pairs' term (the paper: 50)"
    )
    base: float = param(
        0.5,
        low=-1.0,
        high=1.0,
        doc="lambda: the similarity around which pairs are weighted (the paper's text uses 1)",
    )
    epsilon: float = param(
        0.1, low=0.0, high=2.0, doc="the miner's margin epsilon (cosine-similarity units)"
    )
    mine: bool = param(
        True, doc="mine pairs as the paper does; False: every positive and negative pair"
    )
    average: str = param(
        "batch",
        choices=AVERAGES,
        doc="divide by the batch ('batch', the paper) or by the anchors that kept a pair",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Multi-Similarity loss with its pair miner (Wang et al. 2019).",
    config=Config,
    tensors=(
        TensorSpec(
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="the embeddings (normalised inside: cosine similarities)",
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
            description="classes in directions whose similarity is at most 1 - epsilon "
            "(the miner keeps no pair)",
            at={"mine": True},
        ),
        # with mining, rescaling can flip a selection that sits exactly on its threshold
        ScaleInvariant("embeddings", at={"mine": False}),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """The multi-similarity loss of one batch (see :mod:`lossplug_multi_similarity.loss`)."""
    from .loss import multi_similarity_loss

    loss, metrics = multi_similarity_loss(
        outputs["embeddings"], inputs["y_true"], extras.config, extras.sample_weight
    )
    return LossResult(loss=loss, metrics=metrics)

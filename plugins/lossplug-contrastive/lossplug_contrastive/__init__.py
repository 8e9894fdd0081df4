"""lossplug plugin ``contrastive``: the pair-based contrastive loss over all in-batch pairs.

Hadsell, Chopra & LeCun (2006), "Dimensionality Reduction by Learning an
Invariant Mapping", eq. 4, with a positive margin as in pytorch-metric-learning.
For embeddings x_i with labels y_i and the distance d_ij = d(x_i, x_j):

    positive pair (y_i = y_j, i != j):  l_ij = h(d_ij - m_pos)
    negative pair (y_i != y_j):         l_ij = h(m_neg - d_ij)

with h(t) = 1/2 max(0, t)^2 (``squared=True``, the paper) or max(0, t), averaged
over all pairs or over the active ones (see :mod:`lossplug_contrastive.loss`).
The loss is 0 once positives are within m_pos of each other and negatives are
at least m_neg apart. The spec declares ``batch_coupled=True`` and
``returns="scalar"``; sample weights weight each anchor's pairs.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginConfigError, PluginSpec, TensorSpec, param
from lossplug.properties import NonNegative, ScaleInvariant, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "contrastive"
METRICS = ("euclidean", "cosine")
AVERAGES = ("all", "active")


@attrs.frozen
class Config:
    """Hyper-parameters of ``contrastive``."""

    pos_margin: float = param(
        0.0,
        low=0.0,
        doc="m_pos: positive pairs cost h(d - m_pos); 0 pulls positives together completely",
    )
    neg_margin: float = param(
        1.0, low=0.0, doc="m_neg: negative pairs cost h(m_neg - d); the paper's margin m"
    )
    metric: str = param(
        "euclidean", choices=METRICS, doc="d: ||x - y||, or the cosine distance 1 - cos(x, y)"
    )
    squared: bool = param(
        True,
        doc="h(t) = 1/2 max(0, t)^2 as in the paper; False: max(0, t) as in "
        "pytorch-metric-learning",
    )
    average: str = param(
        "all",
        choices=AVERAGES,
        doc="divide by the number of pairs ('all') or of pairs with a positive loss ('active')",
    )

    def __attrs_post_init__(self) -> None:
        if self.metric == "cosine":
            for field in ("pos_margin", "neg_margin"):
                value = getattr(self, field)
                if value > 2.0:
                    raise PluginConfigError(
                        f"{field}={value!r} with metric='cosine': cosine distances lie in "
                        "[0, 2], so a margin above 2 means nothing (or can never be met); use "
                        "a margin in [0, 2] (typically 0.2 to 0.8 for neg_margin)"
                    )


SPEC = PluginSpec(
    name=NAME,
    description="Contrastive loss over all in-batch pairs (Hadsell et al. 2006).",
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
            description="positives coinciding and negatives farther apart than neg_margin",
            at={"metric": "euclidean"},
        ),
        # averaging over active pairs counts pairs whose loss is exactly 0, which rounding
        # of the rescaled embeddings can change
        ScaleInvariant("embeddings", at={"metric": "cosine", "average": "all"}),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """The contrastive loss of one batch (see :mod:`lossplug_contrastive.loss`)."""
    from .loss import contrastive_loss

    loss, metrics = contrastive_loss(
        outputs["embeddings"], inputs["y_true"], extras.config, extras.sample_weight
    )
    return LossResult(loss=loss, metrics=metrics)

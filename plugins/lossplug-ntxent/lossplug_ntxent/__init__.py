"""lossplug plugin ``ntxent``: NT-Xent / InfoNCE for two views of each sample (SimCLR).

Chen, Kornblith, Norouzi & Hinton 2020, "A simple framework for contrastive learning of
visual representations". Two model outputs ``view_a`` and ``view_b`` (B, D) hold the
embeddings of two augmentations of the same B samples. With z = [view_a; view_b] (2B
rows), cosine similarities s and temperature tau, each row's positive is the other
view of its sample and its 2B - 2 negatives are the other samples' views::

    l_i = logsumexp_{k != i}(s_ik / tau) - s_{i, p(i)} / tau
    loss = mean over the 2B rows of l_i         (weighted by the sample weights, if any)

the paper's eq. 1, with the positive inside the denominator (2B - 1 terms). No labels
are read: ``fit(x)`` trains it. One scalar per batch (batch-coupled), exactly 0 for a
batch of one sample; never below log(1 + (2B - 2) exp(-B / ((B - 1) tau))), reached at
a regular simplex. Invariant to rescaling either view, to swapping the views and to
permuting the batch (both views together).

Metric ``top1``: the fraction of rows whose positive is their most similar row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ScaleInvariant, Symmetric, ZeroAtPerfect

from . import claims

__all__ = ["SPEC", "Config", "build_loss_graph", "lossplug_spec"]

__version__ = "0.1.0"


@attrs.frozen
class Config:
    """Hyper-parameters of ``ntxent``."""

    temperature: float = lossplug.param(
        0.5,
        low=0.01,
        high=10.0,
        doc="tau dividing the cosine similarities; SimCLR uses 0.5 (CIFAR-10) to 0.1 "
        "(ImageNet); [0.01, 10] keeps the scaled similarities within +-100",
    )


SPEC = PluginSpec(
    name="ntxent",
    description="NT-Xent / InfoNCE contrastive loss for two views of each sample (SimCLR)",
    config=Config,
    tensors=(
        TensorSpec(
            "view_a",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="embeddings of the first view of each sample",
        ),
        TensorSpec(
            "view_b",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="embeddings of the second view, row i the same sample as view_a's",
        ),
    ),
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            claims.perfect,
            minimal=True,
            atol=1e-5,
            description="both views on the vertices of a regular simplex",
        ),
        Custom(
            "minimum",
            check=claims.check_minimum,
            description="loss >= log(1 + (2B - 2) exp(-B / ((B - 1) tau))), with equality at a "
            "regular simplex (0 for a batch of one)",
        ),
        ScaleInvariant("view_a"),
        ScaleInvariant("view_b"),
        Symmetric("view_a", "view_b", rtol=1e-5, atol=1e-6),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> LossResult:
    """NT-Xent of the batch (a scalar) and its top-1 contrastive accuracy."""
    from .loss import ntxent_loss

    view_a, view_b = outputs["view_a"], outputs["view_b"]
    weights = extras.sample_weight
    if extras.global_batch and extras.num_replicas > 1:
        view_a, view_b = extras.all_gather(view_a), extras.all_gather(view_b)
        weights = None if weights is None else extras.all_gather(weights)
    loss, accuracy = ntxent_loss(
        view_a, view_b, temperature=float(extras.config.temperature), sample_weight=weights
    )
    return LossResult(loss=loss, metrics={"top1": accuracy})

"""lossplug plugin ``supcon``: supervised contrastive loss (Khosla et al. 2020), L_out.

Khosla et al. 2020, "Supervised contrastive learning" (NeurIPS), eq. 2. For a batch of
embeddings z_i (B, D) with integer labels y_i, cosine similarities s and temperature
tau, every row is an anchor; its positives P(i) are the other rows with its label and
the softmax runs over all other rows A(i)::

    l_i = -(tau / tau_b) (1 / |P(i)|) sum_{p in P(i)} log softmax_{a in A(i)}(s_ia / tau)[p]
    loss = mean_i l_i         (sum_i w_i l_i / sum_i w_i with sample weights)

the "L_out" form (the mean over positives outside the log), with the base temperature
tau_b of the paper's code. **An anchor without positives contributes 0** (and counts in
the mean, as in the paper's code): a label seen once in the batch gives no positive pair.
Several views of a sample are rows of the batch with the same label. One scalar per
batch (batch-coupled); non-negative, invariant to rescaling the embeddings, and with a
label of its own for each of B samples seen in two views it is (tau / tau_b) NT-Xent.

Metric ``with_positives``: the fraction of anchors that have at least one positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, Monotone, NonNegative, ReducesTo, ScaleInvariant

from . import claims

__all__ = ["SPEC", "Config", "build_loss_graph", "lossplug_spec"]

__version__ = "0.1.0"


@attrs.frozen
class Config:
    """Hyper-parameters of ``supcon`` (defaults: the paper's code)."""

    temperature: float = lossplug.param(
        0.07,
        low=0.01,
        high=10.0,
        doc="tau dividing the cosine similarities (the paper's code: 0.07; its best "
        "ImageNet runs: 0.1); [0.01, 10] keeps the scaled similarities within +-100",
    )
    base_temperature: float = lossplug.param(
        0.07,
        low=0.01,
        high=10.0,
        doc="tau_b: the loss is multiplied by tau / tau_b (the paper's code; equal to "
        "temperature for the plain eq. 2)",
    )


SPEC = PluginSpec(
    name="supcon",
    description="supervised contrastive loss (Khosla et al. 2020), L_out form",
    config=Config,
    tensors=(
        TensorSpec(
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="the embeddings (projection head outputs); views of one sample are "
            "rows with the same label",
        ),
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            classes="C",
            description="integer class labels of the rows",
        ),
    ),
    properties=(
        NonNegative(),
        ReducesTo(
            "the paper's eq. 2, one anchor at a time (NumPy)",
            reference=claims.reference,
            rtol=1e-5,
            atol=1e-5,
        ),
        Custom(
            "two_views_is_ntxent",
            check=claims.check_two_views_is_ntxent,
            description="two views per sample, a label each: (tau / tau_b) times NT-Xent",
        ),
        ScaleInvariant("embeddings"),
        Monotone("base_temperature", values=(0.05, 0.07, 0.1, 0.5, 2.0), increasing=False),
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
    """The supervised contrastive loss of the batch (a scalar)."""
    from .loss import supcon_loss

    config: Config = extras.config
    embeddings, labels, weights = outputs["embeddings"], inputs["y_true"], extras.sample_weight
    if extras.global_batch and extras.num_replicas > 1:
        embeddings, labels = extras.all_gather(embeddings), extras.all_gather(labels)
        weights = None if weights is None else extras.all_gather(weights)
    loss, with_positives = supcon_loss(
        embeddings,
        labels,
        temperature=float(config.temperature),
        base_temperature=float(config.base_temperature),
        sample_weight=weights,
    )
    return LossResult(loss=loss, metrics={"with_positives": with_positives})

"""lossplug plugin ``proxy_anchor``: the Proxy-Anchor loss with trainable proxies.

Kim, Kim, Cho & Kwak (2020), "Proxy Anchor Loss for Deep Metric Learning"
(CVPR). The plugin owns one proxy per class, a (num_classes, D) variable
created with ``extras.state`` (trained by the model's optimizer, saved with the
model). With s(x, p) the cosine similarity, X_p+ / X_p- the batch's embeddings
of p's class / of the other classes, P+ the proxies with positives in the batch
and P all proxies, the loss of a batch is

    1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
  + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

Each proxy is an anchor that weighs the batch's samples against each other
(hard positives and negatives get the largest gradients), so the loss is
batch-coupled and one scalar per batch (``returns="scalar"``). Sample weights
multiply each sample's term inside the sums. With ``use(..., global_batch=True)``
under a tf.distribute strategy the batch is gathered over the replicas first.

Metrics: ``proxy_accuracy`` (fraction of the batch whose nearest proxy is their
class's) and ``positive_proxies`` (|P+|).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ScaleInvariant

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "proxy_anchor"
STATE = claims.STATE


@attrs.frozen
class Config:
    """Hyper-parameters of ``proxy_anchor`` (defaults: the paper's)."""

    num_classes: int = lossplug.param(
        10, low=1, kind=int, doc="number of classes, i.e. of proxies; labels lie in [0, C)"
    )
    alpha: float = lossplug.param(
        32.0,
        low=0.0,
        low_inclusive=False,
        doc="scaling factor alpha of the similarities inside the log-sum-exps",
    )
    delta: float = lossplug.param(
        0.1,
        low=0.0,
        high=1.0,
        neutral=0.0,
        doc="margin delta: positives are pulled to s > delta, negatives pushed to s < -delta",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Proxy-Anchor loss (alpha, delta) with one trainable proxy per class.",
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
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="embeddings (B, D), e.g. the model's output layer named 'embeddings'",
        ),
    ),
    properties=(
        NonNegative(),
        Custom(
            "matches_the_paper",
            check=claims.check_matches_the_paper,
            description="equals the paper's eq. 4 computed proxy by proxy (NumPy, float64)",
        ),
        ScaleInvariant("embeddings", low=0.1, high=10.0),
        Custom(
            "monotone_in_delta",
            check=claims.check_monotone_in_delta,
            description="for the same proxies the loss is non-decreasing in delta "
            f"({', '.join(map(str, claims.DELTAS))})",
        ),
        Custom(
            "bounded",
            check=claims.check_bounded,
            description="0 <= loss <= 2 log(1 + B e^(alpha (1 + delta))), and "
            "<= 2 log(1 + B e^(-alpha (1 - delta))) with two opposite proxies and every "
            "sample on its own",
        ),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """The batch's Proxy-Anchor loss; creates the proxies on every call (the first creates them)."""
    import keras
    from lossplug.numerics import class_ids
    from lossplug.pairs import embeddings_and_labels

    from .loss import proxy_anchor_loss

    config: Config = extras.config
    embeddings, labels, weights = embeddings_and_labels(
        outputs["embeddings"], inputs["y_true"], plugin=NAME, weights=extras.sample_weight
    )
    if embeddings.shape[-1] is None:
        raise lossplug.InvalidTensorError(
            f"loss plugin {NAME!r} needs embeddings with a known dimension, got shape "
            f"{tuple(embeddings.shape)}"
        )
    # the paper's code: kaiming_normal_(mode="fan_out") on (C, D), std sqrt(2 / C)
    proxies = extras.state.variable(
        STATE,
        (config.num_classes, int(embeddings.shape[-1])),
        initializer=keras.initializers.VarianceScaling(
            scale=2.0, mode="fan_in", distribution="untruncated_normal"
        ),
    )
    labels = class_ids(labels, config.num_classes, plugin=NAME, field="num_classes")
    if extras.global_batch and extras.num_replicas > 1:
        embeddings, labels = extras.all_gather(embeddings), extras.all_gather(labels)
        weights = None if weights is None else extras.all_gather(weights)
    loss, count, accuracy = proxy_anchor_loss(
        embeddings,
        labels,
        proxies,
        alpha=float(config.alpha),
        delta=float(config.delta),
        sample_weight=weights,
    )
    return LossResult(loss=loss, metrics={"proxy_accuracy": accuracy, "positive_proxies": count})

"""Proxy-Anchor loss in ``keras.ops`` (imported lazily by the plugin).

Kim, Kim, Cho & Kwak (2020), "Proxy Anchor Loss for Deep Metric Learning"
(CVPR), eq. (4). With one proxy p per class (a trainable (num_classes, D)
variable the plugin owns), s(x, p) the cosine similarity, X_p+ the batch's
embeddings of p's class and X_p- the others, P+ the proxies with at least one
positive in the batch and P all proxies:

    loss = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
         + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

one scalar for the batch: each proxy is an anchor that weighs all the batch's
samples against each other through the log-sum-exp (batch-coupled). Sample
weights w multiply each sample's term inside the sums (w = 0 leaves it out);
a proxy is in P+ when one of its positives has w > 0. A batch without any
positive gives a positive term of exactly 0 (|P+| = 0).

Each log(1 + sum exp) is :func:`lossplug.pairs.masked_logsumexp` with
``include_zero=True`` over one (B, num_classes) cosine matrix (per proxy, down
the batch axis): stable for any alpha, exactly 0 with zero gradients for a
proxy without entries. The proxies enter through a normalisation and a matrix
product (never a gather from the variable), so their gradient is dense.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug.pairs import masked_logsumexp, pairwise_similarities, safe_divide

PLUGIN = "proxy_anchor"


def proxy_anchor_loss(
    embeddings: Any,
    labels: Any,
    proxies: Any,
    *,
    alpha: float = 32.0,
    delta: float = 0.1,
    sample_weight: Any = None,
) -> tuple[Any, Any, Any]:
    """(loss, the number of proxies with positives, nearest-proxy accuracy) of one batch.

    Args:
        embeddings: (B, D) float tensor in the compute dtype.
        labels: (B,) int32 class ids in [0, num_classes).
        proxies: the (num_classes, D) proxy variable.
        alpha: scaling factor (the paper's 32).
        delta: margin (the paper's 0.1).
        sample_weight: (B,) weights or None.
    """
    cosines = pairwise_similarities(embeddings, ops.cast(proxies, embeddings.dtype), "cosine")
    num_classes = cosines.shape[-1]
    target = ops.one_hot(labels, num_classes, dtype="bool")  # (B, C)
    if sample_weight is None:
        log_weight = ops.zeros_like(cosines[:, :1])
        counted = ops.ones_like(target)
    else:
        weight = ops.cast(ops.reshape(sample_weight, (-1, 1)), cosines.dtype)
        present = weight > 0
        log_weight = ops.where(present, ops.log(ops.where(present, weight, 1.0)), 0.0)
        counted = ops.logical_and(ops.ones_like(target), present)
    positives = ops.logical_and(target, counted)
    negatives = ops.logical_and(ops.logical_not(target), counted)
    pull, with_positives = masked_logsumexp(
        -alpha * (cosines - delta) + log_weight, positives, axis=0, include_zero=True
    )
    push, _ = masked_logsumexp(
        alpha * (cosines + delta) + log_weight, negatives, axis=0, include_zero=True
    )
    count = ops.sum(ops.cast(with_positives, cosines.dtype))
    loss = safe_divide(ops.sum(pull), count) + ops.sum(push) / num_classes
    closest = ops.cast(ops.argmax(cosines, axis=-1), "int32")
    hits = ops.cast(ops.equal(closest, ops.cast(labels, "int32")), cosines.dtype)
    accuracy = safe_divide(ops.sum(hits), ops.cast(ops.shape(hits)[0], cosines.dtype))
    return loss, count, accuracy

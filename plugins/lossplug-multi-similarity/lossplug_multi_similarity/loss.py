"""Multi-Similarity loss and its pair miner, in ``keras.ops`` (imported lazily by the plugin).

Wang, Han, Huang, Dong & Scott (2019), "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning" (CVPR). With S_ik the cosine similarity of
embeddings i and k, P_i the other samples of i's class and N_i the samples of
other classes:

Mining (eq. 9 and 10; ``mine=True``), with epsilon the mining margin:

    negative pair (i, k) kept when  S_ik + epsilon > min_{k' in P_i} S_ik'
    positive pair (i, k) kept when  S_ik - epsilon < max_{k' in N_i} S_ik'

(an anchor without positives keeps no negatives and vice versa).

Loss of anchor i over its kept pairs ~P_i, ~N_i (eq. 15):

    L_i = 1/alpha log(1 + sum_{k in ~P_i} exp(-alpha (S_ik - lambda)))
        + 1/beta  log(1 + sum_{k in ~N_i} exp( beta (S_ik - lambda)))

each log(1 + sum exp) a masked log-sum-exp with an extra zero term
(:func:`lossplug.pairs.masked_logsumexp`), stable for any alpha and beta and 0 for
an empty set. The batch loss is sum_i w_i L_i / sum_i w_i (``average="batch"``,
the paper's 1/m sum over the batch), or the same over the anchors that kept at
least one pair (``average="active"``). O(B^2) memory.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import pairs

PLUGIN = "multi_similarity"


def mined_pairs(similarities: Any, positive: Any, negative: Any, epsilon: float) -> tuple[Any, Any]:
    """The positive and negative pairs the multi-similarity miner keeps, boolean (B, M)."""
    s = ops.stop_gradient(similarities)
    hardest_pos = pairs.masked_min(s, positive)  # lowest positive similarity
    hardest_neg = pairs.masked_max(s, negative)  # highest negative similarity
    has_pos = ops.any(positive, axis=1)[:, None]
    has_neg = ops.any(negative, axis=1)[:, None]
    keep_neg = ops.logical_and(negative, s + epsilon > hardest_pos[:, None])
    keep_pos = ops.logical_and(positive, s - epsilon < hardest_neg[:, None])
    return ops.logical_and(keep_pos, has_neg), ops.logical_and(keep_neg, has_pos)


def anchor_losses(similarities: Any, keep_pos: Any, keep_neg: Any, config: Any) -> Any:
    """L_i for every anchor, shape (B,) (module docstring, eq. 15)."""
    base = config.base
    pos, _ = pairs.masked_logsumexp(
        -config.alpha * (similarities - base), keep_pos, include_zero=True
    )
    neg, _ = pairs.masked_logsumexp(
        config.beta * (similarities - base), keep_neg, include_zero=True
    )
    return pos / config.alpha + neg / config.beta


def multi_similarity_loss(
    embeddings: Any, labels: Any, config: Any, weights: Any = None
) -> tuple[Any, dict[str, Any]]:
    """(L, {"mined_fraction": kept pairs / all pairs}) for (B, D) embeddings, (B,) labels."""
    embeddings, labels, weights = pairs.embeddings_and_labels(
        embeddings, labels, plugin=PLUGIN, weights=weights
    )
    similarities = pairs.pairwise_similarities(embeddings, kind="cosine")
    positive, negative = pairs.label_masks(labels)
    if config.mine:
        keep_pos, keep_neg = mined_pairs(similarities, positive, negative, config.epsilon)
    else:
        keep_pos, keep_neg = positive, negative
    losses = anchor_losses(similarities, keep_pos, keep_neg, config)
    if weights is None:
        weights = ops.ones_like(losses)
    kept = ops.logical_or(keep_pos, keep_neg)
    if config.average == "active":
        counted = ops.where(ops.any(kept, axis=1), weights, 0.0)
    else:
        counted = weights
    loss = pairs.safe_divide(ops.sum(weights * losses), ops.sum(counted))
    dtype = losses.dtype
    total = ops.sum(ops.cast(ops.logical_or(positive, negative), dtype))
    fraction = pairs.safe_divide(ops.sum(ops.cast(kept, dtype)), total)
    return loss, {"mined_fraction": fraction}

"""Contrastive loss over all in-batch pairs, in ``keras.ops`` (imported lazily by the plugin).

For embeddings x_i with labels y_i and a distance d_ij = d(x_i, x_j) (Euclidean
||x_i - x_j||, or cosine 1 - cos(x_i, x_j)), every ordered pair (i, j), i != j,
is a positive pair (y_i = y_j) or a negative pair (y_i != y_j), with the loss

    positive:  l_ij = h(d_ij - m_pos)
    negative:  l_ij = h(m_neg - d_ij)
    h(t) = 1/2 max(0, t)^2   (squared=True, Hadsell et al. 2006, eq. 4)
    h(t) = max(0, t)         (squared=False, pytorch-metric-learning's hinges)

reduced with the anchors' sample weights w_i:

    average="all":     L = sum_ij w_i l_ij / sum_ij w_i          over all pairs i != j
    average="active":  L = sum_ij w_i l_ij / sum_{ij: l_ij > 0} w_i

(each unordered pair appears twice, once per anchor: the mean is that over
unordered pairs when the weights are equal). A batch without pairs (one sample),
or without active pairs for "active", gives exactly 0 with zero gradients.
Distances come from :func:`lossplug.pairs.pairwise_distances` (float32, each
row's nearest entries from differences): O(B^2) memory.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import pairs

PLUGIN = "contrastive"


def hinge(t: Any, squared: bool) -> Any:
    """h(t): 1/2 max(0, t)^2 or max(0, t)."""
    positive = ops.relu(t)
    return 0.5 * ops.square(positive) if squared else positive


def pair_losses(distances: Any, positive: Any, negative: Any, config: Any) -> Any:
    """l_ij for a (B, M) distance matrix and its masks; 0 where a pair is neither."""
    pos = hinge(distances - config.pos_margin, config.squared)
    neg = hinge(config.neg_margin - distances, config.squared)
    return ops.where(positive, pos, ops.where(negative, neg, 0.0))


def contrastive_loss(
    embeddings: Any, labels: Any, config: Any, weights: Any = None
) -> tuple[Any, dict[str, Any]]:
    """(L, {"active_fraction": ...}) for (B, D) embeddings and (B,) labels (module docstring)."""
    embeddings, labels, weights = pairs.embeddings_and_labels(
        embeddings, labels, plugin=PLUGIN, weights=weights
    )
    distances = pairs.pairwise_distances(embeddings, metric=config.metric)
    positive, negative = pairs.label_masks(labels)
    losses = pair_losses(distances, positive, negative, config)
    valid = ops.logical_or(positive, negative)
    active = ops.logical_and(valid, losses > 0.0)
    if weights is None:
        weights = ops.ones_like(distances[:, 0])
    w = ops.broadcast_to(weights[:, None], ops.shape(distances))
    counted = active if config.average == "active" else valid
    loss = pairs.safe_divide(ops.sum(w * losses), pairs.masked_sum(w, counted, axis=None))
    dtype = distances.dtype
    fraction = pairs.safe_divide(ops.sum(ops.cast(active, dtype)), ops.sum(ops.cast(valid, dtype)))
    return loss, {"active_fraction": fraction}

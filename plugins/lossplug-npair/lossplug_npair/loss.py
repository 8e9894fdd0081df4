"""Multi-class N-pair loss in ``keras.ops`` (imported lazily by the plugin).

Sohn (2016), "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective" (NeurIPS), eq. 3 with the L2 regulariser of the embeddings. The N
pairs come from an ordinary labelled batch, one per class as in
pytorch-metric-learning's NPairsLoss: for every class with at least two samples,
its first sample is the anchor f_i and its second the positive f_i^+; other
samples are not used. "First" is in a canonical order of the embeddings
(lexicographic on their coordinates, ties between identical rows broken by
position), not in batch order, so that the loss does not depend on the order of
the batch (PML takes the first two in index order: with two samples per class
the pairs are the same, only which one is the anchor may differ). With
s(u, v) = <u, v> (``similarity="dot"``, the paper) or cos(u, v):

    CE_i = log(1 + sum_{j != i} exp(s(f_i, f_j^+) - s(f_i, f_i^+)))
         = logsumexp_j s(f_i, f_j^+) - s(f_i, f_i^+)        (j over the N anchors)
    R_i  = (||f_i||^2 + ||f_i^+||^2) / 2
    L    = sum_i w_i (CE_i + lambda R_i) / sum_i w_i          (i over the N anchors)

with the anchors' sample weights w. Memory O(B^2) (one (B, B) similarity matrix
and its columns at the positives), time O(B^2 D). A batch without a class of two samples gives
exactly 0 with zero gradients; with one pair, CE = 0 and only the regulariser is left.
"""

from __future__ import annotations

from typing import Any

import lossplug
from keras import ops
from lossplug import pairs

PLUGIN = "npair"


def canonical_before(embeddings: Any) -> Any:
    """before[i, j]: row j precedes row i lexicographically (identical rows: by position).

    D passes over (B, B) comparisons: O(B^2 D) time, O(B^2) memory. Comparisons of
    the same values are exact in any dtype, so float16 and float64 agree on the order.
    """
    x = ops.stop_gradient(embeddings)
    order = ops.arange(ops.shape(x)[0], dtype="int32")
    before = order[None, :] < order[:, None]
    for d in reversed(range(int(x.shape[1]))):
        column = x[:, d]
        smaller = column[None, :] < column[:, None]
        equal = column[None, :] == column[:, None]
        before = ops.logical_or(smaller, ops.logical_and(equal, before))
    return before


def form_pairs(labels: Any, embeddings: Any) -> tuple[Any, Any]:
    """(anchor mask (B,), index of each anchor's positive (B,)) from in-batch labels.

    A sample is an anchor when it is the first of its class in the canonical order
    (:func:`canonical_before`) and its class has a second sample, its positive.
    """
    same, _ = pairs.label_masks(labels, exclude_self=False)
    before = canonical_before(embeddings)
    rank = ops.sum(ops.cast(ops.logical_and(same, before), "int32"), axis=1)
    second = ops.logical_and(same, (rank == 1)[None, :])  # (i, j): j is the 2nd of i's class
    positive, has_positive = pairs.masked_argmax(ops.zeros(ops.shape(same)), second)
    return ops.logical_and(rank == 0, has_positive), positive


def npair_loss(
    embeddings: Any, labels: Any, config: Any, weights: Any = None
) -> tuple[Any, dict[str, Any]]:
    """(L, {"pairs": N}) for (B, D) embeddings and (B,) labels (module docstring)."""
    embeddings, labels, weights = pairs.embeddings_and_labels(
        embeddings, labels, plugin=PLUGIN, weights=weights
    )
    if embeddings.shape[1] is None:
        raise lossplug.InvalidTensorError(
            f"loss plugin {PLUGIN!r} needs embeddings with a known dim, got shape "
            f"{tuple(embeddings.shape)}"
        )
    anchor, positive = form_pairs(labels, embeddings)
    similarities = pairs.pairwise_similarities(embeddings, kind=config.similarity)
    logits = ops.take(similarities, positive, axis=1)  # logits[i, j] = s(f_i, f_j^+)
    target = ops.take_along_axis(logits, ops.arange(ops.shape(logits)[0])[:, None], axis=1)
    lse, _ = pairs.masked_logsumexp(logits, ops.broadcast_to(anchor[None, :], ops.shape(logits)))
    cross_entropy = lse - target[:, 0]
    norms = ops.sum(ops.square(embeddings), axis=1)
    regulariser = 0.5 * (norms + ops.take(norms, positive))
    per_anchor = ops.where(anchor, cross_entropy + config.l2_weight * regulariser, 0.0)
    if weights is None:
        weights = ops.ones_like(norms)
    counted = ops.where(anchor, weights, 0.0)
    loss = pairs.safe_divide(ops.sum(counted * per_anchor), ops.sum(counted))
    return loss, {"pairs": ops.sum(ops.cast(anchor, loss.dtype))}

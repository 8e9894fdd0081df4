"""In-batch triplet mining in O(B^2) memory: batch-all, batch-hard, semi-hard.

Notation: a batch of B embeddings with labels y; D[a, j] is the distance
between embeddings a and j (see :mod:`lossplug_triplet.distances`); for an
anchor a, P(a) = {p != a : y_p = y_a} are its positives and
N(a) = {n : y_n != y_a} its negatives; m >= 0 is the margin and
h(a, p, n) = max(0, m + D[a, p] - D[a, n]) the hinge of one triplet.
A triplet (a, p, n) is *valid* when p is in P(a) and n in N(a), and
*active* when its hinge is positive (D[a, n] < m + D[a, p]).

batch_all
    L = sum over valid (a, p, n) of w_a h(a, p, n)  /  sum over valid (a, p, n) of w_a
    (``average="active"``: the denominator counts active triplets only).
    Computed without the B x B x B tensor, from the negatives' side: for an
    anchor a and a negative n, the positives whose threshold t_ap = m + D[a, p]
    exceeds D[a, n] contribute t_ap - D[a, n]. Each anchor's positive distances
    are taken with top_k (P = max_a |P(a)| of them, so P = K - 1 for P x K
    batches), giving its thresholds in order; one binary search per (a, n) in
    those P thresholds gives their number q and, through suffix sums, their
    sum S, and sum over p of h(a, p, n) = S - q D[a, n].
    Time O(B^2 dim + B^2 log P), memory O(B^2 + B P) (a handful of B x B tensors).

batch_hard (Hermans et al., 2017)
    one triplet per anchor with positives and negatives:
    h_a = max(0, m + max_{p in P(a)} D[a, p] - min_{n in N(a)} D[a, n]),
    L = sum_a w_a h_a / sum_a w_a over those anchors. Time and memory O(B^2).

semi_hard (Schroff et al., 2015; the selection of TF Addons' TripletSemiHardLoss)
    one triplet per valid pair (a, p) (p in P(a), N(a) non-empty): the negative
    is the closest one farther than the positive,
    n* = argmin {D[a, n] : n in N(a), D[a, n] > D[a, p]}, or, when every
    negative is at most as far as the positive, the farthest negative
    argmax_{n in N(a)} D[a, n]. L = mean of h(a, p, n*) over valid pairs
    (weighted by w_a). Each anchor's negative distances are sorted once and
    each of its P positive distances is located by binary search:
    time O(B^2 dim + B^2 log B), memory O(B^2).

Every strategy returns exactly 0 with finite (zero) gradients when the batch
holds no valid triplet (a single class, or only singletons), instead of 0 / 0.
``w_a`` are the sample weights of the anchors (1 when none are given).
"""

from __future__ import annotations

from typing import Any

import attrs
import tensorflow as tf
from keras import ops

STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
AVERAGES = ("valid", "active")


@attrs.frozen
class MiningResult:
    """The mined loss and its bookkeeping (all scalars of the compute dtype)."""

    loss: Any
    active_fraction: Any  #: active / valid triplets (unweighted); 0 without valid triplets
    valid: Any  #: number of valid triplets the strategy scored
    active: Any  #: number of those with a positive hinge


def _safe_divide(numerator: Any, denominator: Any) -> Any:
    """numerator / denominator, and exactly 0 (finite gradients) where denominator == 0."""
    positive = denominator > 0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1.0), 0.0)


def _positive_distances(distances: Any, positive: Any, n_pos: Any) -> tuple[Any, Any]:
    """Each anchor's positive distances, largest first, and which entries are real.

    Shape (B, P) with P = max_a |P(a)| (at least 1, at most B): padding is -1.
    In the usual P x K batches P = K - 1 is small, so everything indexed by
    positives costs O(B P) instead of O(B^2).
    """
    size = ops.shape(distances)[0]
    width = ops.minimum(ops.maximum(ops.cast(ops.max(n_pos), "int32"), 1), size)
    values = tf.math.top_k(ops.where(positive, distances, -1.0), k=width).values
    return values, values >= 0.0


def mine(
    distances: Any,
    labels: Any,
    *,
    margin: float,
    strategy: str,
    average: str = "valid",
    weights: Any = None,
    transform: Any = None,
) -> MiningResult:
    """The mined triplet loss from a (B, B) distance matrix and (B,) labels.

    ``distances`` must be non-negative with a zero diagonal; ``weights`` (B,)
    weight each anchor's triplets. ``transform`` (batch_hard only): ``distances``
    hold an increasing function of the distance (squared Euclidean distances, say)
    and ``transform`` maps the two selected values per anchor to distances, which
    saves transforming all B^2 entries.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mining strategy {strategy!r}; expected one of {STRATEGIES}")
    dtype = distances.dtype
    size = ops.shape(distances)[0]
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(labels[:, None], labels[None, :])
    positive = ops.logical_and(same, ops.logical_not(ops.eye(size, dtype="bool")))
    negative = ops.logical_not(same)
    n_pos = ops.sum(ops.cast(positive, dtype), axis=1)
    n_neg = ops.sum(ops.cast(negative, dtype), axis=1)
    if weights is None:
        weights = ops.ones((size,), dtype=dtype)
    weights = ops.cast(ops.reshape(weights, (-1,)), dtype)
    # Larger than any distance, so padding never counts as a negative.
    sentinel = ops.stop_gradient(ops.max(distances)) + margin + 1.0

    if transform is not None and strategy != "batch_hard":
        raise ValueError("mine(transform=...) applies to strategy='batch_hard' only")
    if strategy == "batch_hard":
        hardest_pos = ops.max(ops.where(positive, distances, 0.0), axis=1)
        hardest_neg = ops.min(ops.where(negative, distances, sentinel), axis=1)
        if transform is not None:
            hardest_pos, hardest_neg = transform(hardest_pos), transform(hardest_neg)
        valid = ops.cast(ops.logical_and(n_pos > 0, n_neg > 0), dtype)
        hinge = ops.relu(margin + hardest_pos - hardest_neg) * valid
        per_anchor_loss = hinge
        per_anchor_valid = valid
        per_anchor_active = ops.cast(hinge > 0, dtype)
    elif strategy == "batch_all":
        # For each negative n of a: the positives p of a whose threshold
        # t = m + D[a, p] exceeds D[a, n] contribute t - D[a, n]; with a's thresholds
        # sorted, one binary search gives their number q and (suffix sums) their sum.
        pos_distances, is_pos = _positive_distances(distances, positive, n_pos)
        thresholds = ops.flip(ops.where(is_pos, margin + pos_distances, -1.0), axis=1)
        width = ops.shape(thresholds)[1]
        suffix = ops.concatenate(
            [tf.cumsum(thresholds, axis=1, reverse=True), ops.zeros((size, 1), dtype=dtype)],
            axis=1,
        )
        below = tf.searchsorted(thresholds, distances, side="right")  # thresholds <= D[a, n]
        above = ops.cast(width - below, dtype)
        hinge_sum = ops.take_along_axis(suffix, below, axis=1) - above * distances
        # a sum of positive terms; rounding may leave -eps
        hinge_sum = ops.where(negative, ops.relu(hinge_sum), 0.0)
        per_anchor_loss = ops.sum(hinge_sum, axis=1)
        per_anchor_valid = n_pos * n_neg
        per_anchor_active = ops.sum(ops.where(negative, above, 0.0), axis=1)
    else:  # semi_hard
        neg_sorted = ops.sort(ops.where(negative, distances, sentinel), axis=1)
        pos_distances, is_pos = _positive_distances(distances, positive, n_pos)
        # index of the first negative strictly farther than the positive, else the last one
        farther = tf.searchsorted(neg_sorted, pos_distances, side="right")
        last = ops.cast(ops.maximum(n_neg - 1.0, 0.0), farther.dtype)[:, None]
        chosen = ops.take_along_axis(neg_sorted, ops.minimum(farther, last), axis=1)
        valid_pair = ops.logical_and(is_pos, (n_neg > 0)[:, None])
        hinge = ops.where(valid_pair, ops.relu(margin + pos_distances - chosen), 0.0)
        per_anchor_loss = ops.sum(hinge, axis=1)
        per_anchor_valid = ops.sum(ops.cast(valid_pair, dtype), axis=1)
        per_anchor_active = ops.sum(ops.cast(hinge > 0, dtype), axis=1)

    total = ops.sum(weights * per_anchor_loss)
    counted = per_anchor_active if average == "active" else per_anchor_valid
    loss = _safe_divide(total, ops.sum(weights * counted))
    valid_total = ops.sum(per_anchor_valid)
    active_total = ops.sum(per_anchor_active)
    return MiningResult(
        loss=loss,
        active_fraction=_safe_divide(active_total, valid_total),
        valid=valid_total,
        active=active_total,
    )

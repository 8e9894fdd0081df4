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
    Computed per anchor without the B x B x B tensor: sort each anchor's
    negative distances once (O(B^2 log B)), keep their cumulative sums, and for
    each positive p with threshold t = m + D[a, p] find by binary search the
    number c of negatives closer than t; then
    sum over n of h(a, p, n) = c t - (sum of the c smallest negative distances).
    Time O(B^2 log B + B^2 dim), memory O(B^2) (a handful of B x B tensors).

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
    (weighted by w_a). Reuses the sorted negatives: O(B^2 log B) time, O(B^2) memory.

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


def _sorted_negatives(distances: Any, negative: Any, sentinel: Any) -> Any:
    """Each row's negative distances in increasing order, padded with ``sentinel``."""
    padded = ops.where(negative, distances, sentinel)
    return ops.sort(padded, axis=1)


def mine(
    distances: Any,
    labels: Any,
    *,
    margin: float,
    strategy: str,
    average: str = "valid",
    weights: Any = None,
) -> MiningResult:
    """The mined triplet loss from a (B, B) distance matrix and (B,) labels.

    ``distances`` must be non-negative with a zero diagonal; ``weights`` (B,)
    weight each anchor's triplets.
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
    # Larger than any threshold m + D[a, p], so padding never counts as a negative.
    sentinel = ops.stop_gradient(ops.max(distances)) + margin + 1.0

    if strategy == "batch_hard":
        hardest_pos = ops.max(ops.where(positive, distances, 0.0), axis=1)
        hardest_neg = ops.min(ops.where(negative, distances, sentinel), axis=1)
        valid = ops.cast(ops.logical_and(n_pos > 0, n_neg > 0), dtype)
        hinge = ops.relu(margin + hardest_pos - hardest_neg) * valid
        per_anchor_loss = hinge
        per_anchor_valid = valid
        per_anchor_active = ops.cast(hinge > 0, dtype)
    else:
        neg_sorted = _sorted_negatives(distances, negative, sentinel)
        if strategy == "batch_all":
            thresholds = margin + distances  # t[a, p]
            # c[a, p] = number of negatives of a strictly closer than t[a, p]
            closer = tf.searchsorted(neg_sorted, thresholds, side="left")
            cumulative = ops.concatenate(
                [ops.zeros((size, 1), dtype=dtype), ops.cumsum(neg_sorted, axis=1)], axis=1
            )
            closer_sum = ops.take_along_axis(cumulative, closer, axis=1)
            closer = ops.cast(closer, dtype)
            pair_loss = ops.where(positive, closer * thresholds - closer_sum, 0.0)
            # c t - sum is a sum of positive terms; rounding may leave -eps.
            per_anchor_loss = ops.sum(ops.relu(pair_loss), axis=1)
            per_anchor_valid = n_pos * n_neg
            per_anchor_active = ops.sum(ops.where(positive, closer, 0.0), axis=1)
        else:  # semi_hard
            # index of the first negative strictly farther than the positive
            farther = tf.searchsorted(neg_sorted, distances, side="right")
            last = ops.cast(ops.maximum(n_neg - 1.0, 0.0), farther.dtype)[:, None]
            chosen = ops.take_along_axis(neg_sorted, ops.minimum(farther, last), axis=1)
            valid_pair = ops.logical_and(positive, (n_neg > 0)[:, None])
            hinge = ops.where(valid_pair, ops.relu(margin + distances - chosen), 0.0)
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

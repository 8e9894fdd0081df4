"""Triplet mining in O(B * M) memory: batch-all, batch-hard, semi-hard.

Importing this module is cheap (``keras.ops`` is imported when a function is
first called; ``import lossplug`` does not import it). Everything is written in
``keras.ops`` and runs on the TensorFlow, JAX and PyTorch backends.

Notation: B anchors against M candidates (M = B for in-batch mining, more for a
cross-batch memory); D[a, j] >= 0 is the distance between anchor a and
candidate j (see :func:`lossplug.pairs.pairwise_distances`); ``positive[a, j]``
and ``negative[a, j]`` are the label masks (:func:`lossplug.pairs.label_masks`),
so P(a) = {j : positive[a, j]} and N(a) = {j : negative[a, j]}; m >= 0 is the
margin and h(a, p, n) = max(0, m + D[a, p] - D[a, n]) the hinge of one triplet.
A triplet (a, p, n) is *valid* when p is in P(a) and n in N(a), and *active*
when its hinge is positive.

batch_all
    L = sum over valid (a, p, n) of w_a h(a, p, n)  /  sum over valid (a, p, n) of w_a
    (``average="active"``: the denominator counts active triplets only).
    Computed without a B x M x M tensor, from the negatives' side: for an
    anchor a and a negative n, the positives whose threshold t_ap = m + D[a, p]
    exceeds D[a, n] contribute t_ap - D[a, n]. Each anchor's positive distances
    are taken with top_k (P = max_a |P(a)| of them: K - 1 in P x K batches).
    With at most BATCH_ALL_SCAN positives per anchor, one pass over the (B, M)
    distances per positive slot sums relu(t_ap - D[a, n]) directly: time
    O(B M P), memory O(B M P). With more, the thresholds are taken in order and
    one binary search per (a, n) among them gives their number q and, through
    suffix sums, their sum S, and sum over p of h(a, p, n) = S - q D[a, n]:
    time O(B M log P), memory O(B M + B P). The scans need P as a number, as
    for semi_hard.

batch_hard (Hermans et al., 2017)
    one triplet per anchor with positives and negatives:
    h_a = max(0, m + max_{p in P(a)} D[a, p] - min_{n in N(a)} D[a, n]),
    L = sum_a w_a h_a / sum_a w_a over those anchors. Time and memory O(B M).
    With ``recompute``, ``distances`` only rank the pairs (any increasing
    function of the distance, e.g. float32 squared distances from the Gram
    matrix) and the 2B selected distances are ``recompute(rows, cols)``,
    computed accurately from the embeddings (:func:`lossplug.pairs.gathered_distances`).
    A selection tie within the ranking's rounding error then changes the loss by
    at most that error (the hinge is 1-Lipschitz in each distance).

semi_hard (Schroff et al., 2015; the selection of TF Addons' TripletSemiHardLoss)
    one triplet per valid pair (a, p) (p in P(a), N(a) non-empty): the negative
    is the closest one farther than the positive,
    n* = argmin {D[a, n] : n in N(a), D[a, n] > D[a, p]}, or, when every
    negative is at most as far as the positive, the farthest negative
    argmax_{n in N(a)} D[a, n]. L = mean of h(a, p, n*) over valid pairs
    (weighted by w_a). With at most SEMI_HARD_SCAN positives per anchor, one
    masked argmin over the negatives per positive: time O(B M P); with more,
    each anchor's negative distances are sorted once and each of its P positive
    distances is located by binary search: time O(B M log M). Memory O(B M).
    The scans need P as a number when the function runs (PyTorch, eager
    TensorFlow); a compiled TensorFlow step (P a tensor) and JAX (P = M) sort.

Every strategy returns exactly 0 with finite (zero) gradients when there is no
valid triplet (a single class, or only singletons), instead of 0 / 0. ``w_a``
are the sample weights of the anchors (1 when none are given).

P is data-dependent: on TensorFlow and PyTorch the positive distances are cut
to the largest number of positives of an anchor; under JAX, whose compiled
shapes are static, to all M candidates (the same result, more work).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .numerics import cumsum, maximum
from .pairs import label_masks, masked_argmax, masked_argmin, safe_divide

__all__ = [
    "AVERAGES",
    "STRATEGIES",
    "MiningResult",
    "batch_all",
    "batch_hard",
    "mine",
    "semi_hard",
]

STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
AVERAGES = ("valid", "active")

#: recompute(rows, cols) -> the distances D[rows[k], cols[k]], computed accurately
Recompute = Callable[[Any, Any], Any]


class MiningResult(NamedTuple):
    """The mined loss and its bookkeeping (all scalars of the compute dtype).

    A named tuple, not an attrs class: it is built inside compiled steps, and
    torch.compile's tracer cannot follow attrs' generated ``__init__``.
    """

    loss: Any
    active_fraction: Any  #: active / valid triplets (unweighted); 0 without valid triplets
    valid: Any  #: number of valid triplets the strategy scored
    active: Any  #: number of those with a positive hinge


def _prepare(distances: Any, positive: Any, negative: Any, weights: Any) -> tuple[Any, ...]:
    from keras import ops

    distances = ops.convert_to_tensor(distances)
    dtype = distances.dtype
    positive = ops.cast(positive, "bool")
    negative = ops.cast(negative, "bool")
    n_pos = ops.sum(ops.cast(positive, dtype), axis=1)
    n_neg = ops.sum(ops.cast(negative, dtype), axis=1)
    if weights is None:
        weights = ops.ones_like(n_pos)
    weights = ops.cast(ops.reshape(weights, (-1,)), dtype)
    return distances, positive, negative, n_pos, n_neg, weights


def _as_int(value: Any) -> int | None:
    """``value`` as a Python int when it is concrete (an int, an eager tensor), else None."""
    if isinstance(value, int):
        return value
    for method in ("item", "numpy"):  # torch tensors, TensorFlow eager tensors
        read = getattr(value, method, None)
        if read is not None:
            try:
                return int(read())
            except Exception:  # a symbolic tensor of a traced graph
                return None
    return None


def _width(count: Any, size: Any) -> Any:
    """How many entries per row to keep: max(count) (>= 1, <= size), or ``size`` under JAX."""
    import keras
    from keras import ops

    if keras.backend.backend() == "jax" and isinstance(size, int):
        return size
    width = ops.minimum(ops.maximum(ops.cast(ops.max(count), "int32"), 1), size)
    concrete = _as_int(width)
    return width if concrete is None else concrete


def _columns(x: Any) -> Any:
    from keras import ops

    static = x.shape[1]
    return static if static is not None else ops.shape(x)[1]


def _positive_distances(distances: Any, positive: Any, n_pos: Any) -> tuple[Any, Any]:
    """Each anchor's positive distances, largest first, and which entries are real.

    Shape (B, P), padded with -1 (distances are >= 0).
    """
    from keras import ops

    width = _width(n_pos, _columns(distances))
    values, _ = ops.top_k(ops.where(positive, distances, -1.0), width)
    return values, values >= 0.0


def _take_rows(matrix: Any, index: Any) -> Any:
    """``take_along_axis(matrix, index, axis=1)`` for 2-D tensors, as one flat gather.

    (Keras' TensorFlow ``take_along_axis`` broadcasts index grids and costs
    several times a plain gather.) Needs fewer than 2**31 entries in ``matrix``.
    """
    from keras import ops

    width = _columns(matrix)
    offsets = ops.arange(ops.shape(matrix)[0], dtype="int32")[:, None] * ops.cast(width, "int32")
    return ops.take(ops.reshape(matrix, (-1,)), offsets + ops.cast(index, "int32"))


def _scans(pos_distances: Any, limit: int) -> bool:
    """Whether to scan once per positive slot: P is a number (eager) and at most ``limit``."""
    width = _columns(pos_distances)
    return isinstance(width, int) and width <= limit


def _negatives_or_beyond(distances: Any, negative: Any, margin: float) -> Any:
    """D[a, n] on the negatives; elsewhere a value above every m + D[a, j], without gradient."""
    from keras import ops

    beyond = ops.stop_gradient(ops.max(distances)) + margin + 1.0
    return ops.where(negative, distances, beyond)


def _bit_length(n: Any) -> Any:
    """``n.bit_length()`` of a positive int32 scalar tensor (a float guess, corrected)."""
    from keras import ops

    one = ops.ones((), "int32")
    guess = ops.cast(ops.floor(ops.log(ops.cast(n, "float32")) / math.log(2.0)), "int32") + 1
    guess = ops.where(ops.left_shift(one, guess) <= n, guess + 1, guess)
    return ops.where(ops.left_shift(one, guess - 1) > n, guess - 1, guess)


def _searchsorted_rows(sorted_rows: Any, values: Any, side: str) -> Any:
    """Row-wise searchsorted: for each row r, ``searchsorted(sorted_rows[r], values[r], side)``.

    (Keras' ``ops.searchsorted`` takes one 1-D sequence.) Under JAX it is
    vmapped; elsewhere a branchless binary search over all rows at once: each row
    (length L) is padded with +inf to 2**k - 1 entries, k = L.bit_length(), and the
    count of entries <= (side "right") or < (side "left") each value is built from
    the largest power of two down: ``pos += step`` where ``row[pos + step - 1]``
    passes, for step = 2**(k-1), ..., 1. That is k steps of one gather, one
    comparison, one select and one addition each, so that a few sorted entries per row (the
    positives of batch-all) cost a few steps. Values must not be NaN or +inf.
    int32 indices in [0, L], without gradient.
    """
    import keras
    from keras import ops

    sorted_rows = ops.stop_gradient(sorted_rows)
    values = ops.stop_gradient(ops.cast(values, sorted_rows.dtype))
    if keras.backend.backend() == "jax":
        found = ops.vectorized_map(
            lambda row: ops.searchsorted(row[0], row[1], side=side), (sorted_rows, values)
        )
        return ops.cast(found, "int32")
    length = _columns(sorted_rows)
    concrete = _as_int(length)
    if concrete is not None:
        steps = max(concrete.bit_length(), 1)
        top = 1 << (steps - 1)
    else:
        steps = _bit_length(ops.maximum(ops.cast(length, "int32"), 1))
        top = ops.left_shift(ops.ones((), "int32"), steps - 1)
    rows = ops.shape(sorted_rows)[0]
    padded_width = 2 * top - 1
    padding = ops.full((rows, padded_width - length), float("inf"), sorted_rows.dtype)
    flat = ops.reshape(ops.concatenate([sorted_rows, padding], axis=1), (-1,))
    base = ops.arange(rows, dtype="int32")[:, None] * ops.cast(padded_width, "int32")

    # ``probe``: the flat index pos + size - 1 of the entry a step compares, carried from
    # step to step: the next step's probe (size / 2) is pos' + size / 2 - 1, i.e. this one
    # moved by size - half if it passed (pos' = pos + size) and by -half if not; the last
    # step (size 1, half 0) leaves it at pos itself.
    def step(i: Any, probe: Any) -> Any:
        size = ops.right_shift(ops.cast(top, "int32"), i) if concrete is None else top >> i
        half = ops.right_shift(size, 1) if concrete is None else size >> 1
        entry = ops.take(flat, probe)
        passes = entry <= values if side == "right" else entry < values
        return probe + ops.cast(ops.where(passes, size - half, -half), "int32")

    probe = ops.broadcast_to(base + ops.cast(top - 1, "int32"), ops.shape(values))
    if concrete is not None:
        for i in range(steps):
            probe = step(i, probe)
    else:
        probe = ops.fori_loop(0, steps, step, probe)
    return probe - base


def _result(
    per_anchor_loss: Any,
    per_anchor_valid: Any,
    per_anchor_active: Any,
    weights: Any,
    average: str,
) -> MiningResult:
    from keras import ops

    total = ops.sum(weights * per_anchor_loss)
    counted = per_anchor_active if average == "active" else per_anchor_valid
    loss = safe_divide(total, ops.sum(weights * counted))
    valid_total = ops.sum(per_anchor_valid)
    active_total = ops.sum(per_anchor_active)
    return MiningResult(
        loss=loss,
        active_fraction=safe_divide(active_total, valid_total),
        valid=valid_total,
        active=active_total,
    )


def _check_average(average: str) -> None:
    if average not in AVERAGES:
        raise ValueError(f"unknown average {average!r}; expected one of {AVERAGES}")


def batch_hard(
    distances: Any,
    positive: Any,
    negative: Any,
    *,
    margin: float,
    average: str = "valid",
    weights: Any = None,
    recompute: Recompute | None = None,
) -> MiningResult:
    """Batch-hard mining (see the module docstring); ``recompute`` re-evaluates the 2B picks."""
    from keras import ops

    _check_average(average)
    distances, positive, negative, n_pos, n_neg, weights = _prepare(
        distances, positive, negative, weights
    )
    hardest_pos, _ = masked_argmax(distances, positive)
    hardest_neg, _ = masked_argmin(distances, negative)
    if recompute is None:
        d_pos = ops.take_along_axis(distances, hardest_pos[:, None], axis=1)[:, 0]
        d_neg = ops.take_along_axis(distances, hardest_neg[:, None], axis=1)[:, 0]
    else:
        anchors = ops.arange(ops.shape(distances)[0], dtype="int32")
        d_pos = ops.cast(recompute(anchors, hardest_pos), distances.dtype)
        d_neg = ops.cast(recompute(anchors, hardest_neg), distances.dtype)
    valid = ops.logical_and(n_pos > 0, n_neg > 0)
    hinge = ops.where(valid, ops.relu(margin + d_pos - d_neg), 0.0)
    return _result(
        hinge,
        ops.cast(valid, distances.dtype),
        ops.cast(hinge > 0, distances.dtype),
        weights,
        average,
    )


def batch_all(
    distances: Any,
    positive: Any,
    negative: Any,
    *,
    margin: float,
    average: str = "valid",
    weights: Any = None,
) -> MiningResult:
    """Batch-all: every valid triplet, in O(B M log P) time (see the module docstring)."""
    from keras import ops

    _check_average(average)
    distances, positive, negative, n_pos, n_neg, weights = _prepare(
        distances, positive, negative, weights
    )
    pos_distances, is_pos = _positive_distances(distances, positive, n_pos)
    # thresholds t = m + D[a, p], -1 in the padding (below every distance: no hinge)
    thresholds = ops.where(is_pos, margin + pos_distances, -1.0)
    if _scans(thresholds, BATCH_ALL_SCAN):
        hinge_sums, per_anchor_active = _batch_all_by_scans(distances, negative, thresholds, margin)
    else:
        hinge_sums, per_anchor_active = _batch_all_by_search(distances, negative, thresholds)
    return _result(hinge_sums, n_pos * n_neg, per_anchor_active, weights, average)


#: batch_all scans the (B, M) distances once per positive when the anchors have at most this
#: many positives, and locates each distance among the thresholds by binary search otherwise
BATCH_ALL_SCAN = 8


def _batch_all_by_scans(
    distances: Any, negative: Any, thresholds: Any, margin: float
) -> tuple[Any, Any]:
    """Per anchor: sum over n in N(a), p of h(a, p, n), and the number of active (p, n).

    One pass per positive slot p: sum_n relu(t_ap - D'[a, n]), where D' holds the
    negatives' distances and, elsewhere, a value above every threshold (no hinge, no
    gradient). Time O(B M P); a few (B, M) tensors per slot, no gather.
    """
    from keras import ops

    dtype = distances.dtype
    candidates = _negatives_or_beyond(distances, negative, margin)
    hinge_sums = ops.zeros_like(thresholds[:, 0])
    active = ops.zeros_like(hinge_sums)
    for slot in range(_columns(thresholds)):
        hinges = ops.relu(thresholds[:, slot : slot + 1] - candidates)
        hinge_sums = hinge_sums + ops.sum(hinges, axis=1)
        active = active + ops.sum(ops.cast(ops.stop_gradient(hinges) > 0, dtype), axis=1)
    return hinge_sums, active


def _batch_all_by_search(distances: Any, negative: Any, thresholds: Any) -> tuple[Any, Any]:
    """:func:`_batch_all_by_scans`'s two sums by a binary search per (a, n) among the
    anchor's sorted thresholds and their suffix sums: O(B M log P) for any P."""
    from keras import ops

    dtype = distances.dtype
    thresholds = ops.flip(thresholds, axis=1)  # ascending, padding first
    width = ops.shape(thresholds)[1]
    suffix = ops.flip(cumsum(ops.flip(thresholds, axis=1), axis=1), axis=1)
    suffix = ops.concatenate([suffix, ops.zeros_like(suffix[:, :1])], axis=1)
    below = _searchsorted_rows(thresholds, distances, "right")  # thresholds <= D[a, n]
    above = ops.cast(width - below, dtype)
    hinge_sum = _take_rows(suffix, below) - above * distances
    # a sum of positive terms; rounding may leave -eps
    hinge_sum = ops.where(negative, ops.relu(hinge_sum), 0.0)
    per_anchor_active = ops.sum(ops.where(negative, above, 0.0), axis=1)
    return ops.sum(hinge_sum, axis=1), per_anchor_active


def semi_hard(
    distances: Any,
    positive: Any,
    negative: Any,
    *,
    margin: float,
    average: str = "valid",
    weights: Any = None,
) -> MiningResult:
    """Semi-hard negatives per positive pair, by scans or sorting (see the module docstring)."""
    from keras import ops

    _check_average(average)
    distances, positive, negative, n_pos, n_neg, weights = _prepare(
        distances, positive, negative, weights
    )
    dtype = distances.dtype
    pos_distances, is_pos = _positive_distances(distances, positive, n_pos)
    if _scans(pos_distances, SEMI_HARD_SCAN):
        chosen = _semi_hard_by_scans(distances, negative, pos_distances)
    else:
        chosen = _semi_hard_by_sorting(distances, negative, pos_distances, n_neg, margin)
    valid_pair = ops.logical_and(is_pos, (n_neg > 0)[:, None])
    hinge = ops.where(valid_pair, ops.relu(margin + pos_distances - chosen), 0.0)
    return _result(
        ops.sum(hinge, axis=1),
        ops.sum(ops.cast(valid_pair, dtype), axis=1),
        ops.sum(ops.cast(hinge > 0, dtype), axis=1),
        weights,
        average,
    )


#: semi_hard scans the negatives once per positive (P masked argmins over (B, M)) when the
#: anchors have at most this many positives, and sorts each anchor's negatives otherwise
SEMI_HARD_SCAN = 8


def _semi_hard_by_scans(distances: Any, negative: Any, pos_distances: Any) -> Any:
    """D[a, n*] (B, P) for each anchor and positive slot, by one masked argmin per slot.

    n* = the nearest negative farther than the positive, else the farthest negative
    (any negative where the anchor has none: such pairs are not valid). The
    distances are gathered at n*, so the gradient reaches the chosen negative only.
    """
    from keras import ops

    ranking = ops.stop_gradient(distances)
    farthest, _ = masked_argmax(ranking, negative)
    nearness = -ranking
    columns = []
    for slot in range(_columns(pos_distances)):
        farther = ops.logical_and(
            negative, ranking > ops.stop_gradient(pos_distances[:, slot : slot + 1])
        )
        nearest, has = masked_argmax(nearness, farther)
        columns.append(ops.where(has, nearest, farthest))
    return _take_rows(distances, ops.stack(columns, axis=1))


def _semi_hard_by_sorting(
    distances: Any, negative: Any, pos_distances: Any, n_neg: Any, margin: float
) -> Any:
    """D[a, n*] (B, P) as :func:`_semi_hard_by_scans`, by sorting each anchor's negatives once
    and locating its positives by binary search: O(B M log M) for any number of positives."""
    from keras import ops

    # Non-negatives sort last, beyond every distance: padding never counts as a negative.
    neg_sorted = ops.sort(_negatives_or_beyond(distances, negative, margin), axis=1)
    # index of the first negative strictly farther than the positive, else the last one
    farther = _searchsorted_rows(neg_sorted, pos_distances, "right")
    last = ops.cast(maximum(n_neg - 1.0, 0.0), "int32")[:, None]
    return _take_rows(neg_sorted, ops.minimum(farther, last))


def mine(
    distances: Any,
    positive: Any = None,
    negative: Any = None,
    *,
    margin: float,
    strategy: str,
    average: str = "valid",
    weights: Any = None,
    labels: Any = None,
    recompute: Recompute | None = None,
) -> MiningResult:
    """The mined triplet loss from a (B, M) distance matrix and its label masks.

    Pass ``positive`` and ``negative`` (boolean (B, M)), or ``labels`` (B,) for
    in-batch mining (M = B; the masks of :func:`lossplug.pairs.label_masks`).
    ``distances`` must be non-negative (with a zero diagonal in-batch);
    ``weights`` (B,) weight each anchor's triplets; ``recompute`` applies to
    ``strategy="batch_hard"`` (see :func:`batch_hard`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mining strategy {strategy!r}; expected one of {STRATEGIES}")
    if labels is not None:
        if positive is not None or negative is not None:
            raise ValueError("mine() takes labels or the positive/negative masks, not both")
        positive, negative = label_masks(labels)
    if positive is None or negative is None:
        raise ValueError("mine() needs the positive and negative masks (or labels)")
    if recompute is not None and strategy != "batch_hard":
        raise ValueError("mine(recompute=...) applies to strategy='batch_hard' only")
    if strategy == "batch_hard":
        return batch_hard(
            distances,
            positive,
            negative,
            margin=margin,
            average=average,
            weights=weights,
            recompute=recompute,
        )
    miner = batch_all if strategy == "batch_all" else semi_hard
    return miner(distances, positive, negative, margin=margin, average=average, weights=weights)

"""Pair helpers that metric-learning plugins share: distances, label masks, masked reductions.

Importing this module is cheap (it imports neither Keras nor a backend; the
functions import ``keras.ops`` when first called), and ``import lossplug``
does not import it. Everything is written in ``keras.ops``, so it runs on the
TensorFlow, JAX and PyTorch backends, and takes O(B * M) memory for B rows
against M rows: no (B, M, D) tensor is ever formed.

Distances between the rows x_i of x (B, D) and y_j of y (M, D); y defaults
to x, and then the diagonal is exactly 0:

=====================  ============================  ==========
metric                 d(x_i, y_j)                   range
=====================  ============================  ==========
``euclidean``          ||x_i - y_j||                 [0, inf)
``squared_euclidean``  ||x_i - y_j||^2               [0, inf)
``cosine``             1 - <u_i, v_j>                [0, 2]
=====================  ============================  ==========

with u, v the rows normalised by :func:`lossplug.numerics.l2_normalize`.

Accuracy without float64. A (B, M) Euclidean matrix comes from one float32
matrix product, ||c_i||^2 + ||c_j||^2 - 2 <c_i, c_j> on rows centred on their
common mean (distances are translation invariant). That identity cancels: its
absolute error is about eps * (||c_i||^2 + ||c_j||^2), so a distance of 1e-3
between rows of norm 10 comes out wrong by ~1e-2 in float32. Hence
:func:`pairwise_distances` recomputes each row's ``exact_neighbours`` nearest
entries (``EXACT_NEIGHBOURS`` = 8 by default) from the differences x_i - y_j
themselves (relative error ~eps, as a float64 Gram matrix would give), and
treats the remaining entries below the Gram form's own rounding level as 0.
Far entries keep the Gram form, whose error relative to the distance is
eps * ||c||^2 / d^2. Losses that select a few pairs (batch-hard mining) rank on
the fast matrix and recompute only the selected distances with
:func:`gathered_distances`.

The square root of ``euclidean`` is taken with a "double where": coincident
points give exactly 0 with a zero (not NaN) gradient, and the derivative of a
distance computed from differences is a unit vector, bounded by 1.

A set of references may have rows that do not exist yet (the unfilled slots of
a cross-batch memory): pass ``valid`` (boolean (M,)) to
:func:`pairwise_distances` and :func:`label_masks`, and those rows enter
neither the distances' centring and refinement nor any pair.

Masked reductions over the last axis (``mask`` True where an entry counts) all
return a defined value with finite, zero gradients for a row without entries:
:func:`masked_max`, :func:`masked_min`, :func:`masked_argmax`,
:func:`masked_argmin`, :func:`masked_sum`, :func:`masked_mean` and
:func:`masked_logsumexp` (which also says which rows had entries).
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidTensorError
from .numerics import compute_dtype, l2_normalize, matmul, maximum, mean

__all__ = [
    "EXACT_NEIGHBOURS",
    "METRICS",
    "SIMILARITIES",
    "embeddings_and_labels",
    "gathered_distances",
    "label_masks",
    "masked_argmax",
    "masked_argmin",
    "masked_logsumexp",
    "masked_max",
    "masked_mean",
    "masked_min",
    "masked_sum",
    "paired_distances",
    "pairwise_distances",
    "pairwise_similarities",
    "pairwise_squared_euclidean",
    "safe_divide",
    "safe_sqrt",
]

METRICS = ("euclidean", "squared_euclidean", "cosine")
SIMILARITIES = ("dot", "cosine")
#: entries of each row that :func:`pairwise_distances` recomputes from differences
EXACT_NEIGHBOURS = 8
#: Gram entries below GRAM_NOISE * eps * (||c_i||^2 + ||c_j||^2) count as 0
GRAM_NOISE = 8.0


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; expected one of {METRICS}")


def _same_dtype(x: Any, y: Any) -> tuple[Any, Any, str]:
    """x and y cast to their common compute dtype (float64 if either is, else float32)."""
    from keras import ops

    dtype = compute_dtype(x, y)
    return ops.cast(x, dtype), ops.cast(y, dtype), dtype


def _eps(dtype: str) -> float:
    return 2.0**-52 if dtype == "float64" else 2.0**-23


# ----------------------------------------------------------------------- safe arithmetic
def safe_sqrt(x: Any, floor: Any = 0.0) -> Any:
    """sqrt(x) where x > floor, else exactly 0 with a zero (finite) gradient.

    sqrt(x) has an infinite derivative at 0; the inner ``where`` keeps it out of
    the gradient (``where(x > 0, sqrt(x), 0)`` alone gives 0 * inf = NaN).
    ``floor`` (a number or a tensor broadcasting against x) is the value up to
    which x counts as zero.
    """
    from keras import ops

    positive = x > floor
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), 0.0)


def safe_divide(numerator: Any, denominator: Any) -> Any:
    """numerator / denominator, and exactly 0 (with finite, zero gradients) where it is 0."""
    from keras import ops

    numerator = ops.convert_to_tensor(numerator)
    denominator = ops.cast(denominator, numerator.dtype)
    nonzero = ops.not_equal(denominator, 0.0)
    safe = ops.where(nonzero, denominator, ops.ones_like(denominator))
    return ops.where(nonzero, numerator / safe, 0.0)


# ----------------------------------------------------------------------- distances
def _row_distance(difference: Any, metric: str) -> Any:
    """Distance from the differences x - y along the last axis (not for cosine)."""
    from keras import ops

    squared = ops.sum(ops.square(difference), axis=-1)
    return squared if metric == "squared_euclidean" else safe_sqrt(squared)


def paired_distances(x: Any, y: Any, metric: str = "euclidean") -> Any:
    """Row-wise distances d(x_i, y_i) between two (B, D) tensors, shape (B,).

    Euclidean metrics come from the differences x_i - y_i (accurate for close
    rows); cosine is 1 - <u_i, v_i>, clipped to [0, 2].
    """
    from keras import ops

    _check_metric(metric)
    x, y, _ = _same_dtype(x, y)
    if metric == "cosine":
        cosine = ops.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
        return ops.clip(1.0 - cosine, 0.0, 2.0)
    return _row_distance(x - y, metric)


def gathered_distances(x: Any, y: Any, rows: Any, cols: Any, metric: str = "euclidean") -> Any:
    """d(x[rows[k]], y[cols[k]]) for index tensors of one shape S, computed from the rows.

    The result has shape S; memory is O(size(S) * D). This is how a loss that
    selected pairs on a fast distance matrix gets their distances accurately
    (differences, not the Gram identity) with gradients through those rows only.
    """
    from keras import ops

    same = y is x
    x, y, _ = _same_dtype(x, y)
    y = x if same else y
    _check_metric(metric)
    # Gathering from the result of an arithmetic op makes the gradient with respect
    # to x dense on TensorFlow (a gather's own gradient is IndexedSlices, which
    # Keras' optimizers mishandle for repeated rows; see docs/authoring.md).
    x = x * 1.0
    y = x if same else y * 1.0
    first = ops.take(x, ops.cast(rows, "int32"), axis=0)
    second = ops.take(y, ops.cast(cols, "int32"), axis=0)
    if metric == "cosine":
        return paired_distances(first, second, metric)
    return _row_distance(first - second, metric)


def _num_rows(x: Any) -> Any:
    """The number of rows: a Python int when static, else a scalar tensor."""
    from keras import ops

    static = x.shape[0]
    return static if static is not None else ops.shape(x)[0]


def _set_diagonal(matrix: Any, value: Any) -> Any:
    """``matrix`` (B, B) with its diagonal set to ``value`` (a scalar): B writes, no (B, B)
    mask (the diagonal entries' gradient is zero)."""
    from keras import ops

    index = ops.arange(_num_rows(matrix), dtype="int32")
    diagonal = ops.zeros_like(index, dtype=matrix.dtype) + ops.cast(value, matrix.dtype)
    return ops.scatter_update(matrix, ops.stack([index, index], axis=1), diagonal)


def _zero_diagonal(matrix: Any) -> Any:
    return _set_diagonal(matrix, 0.0)


def _refine_nearest(squared: Any, x: Any, y: Any, k: int, same: bool, valid: Any = None) -> Any:
    """``squared`` with each row's k smallest entries recomputed from differences.

    Columns where ``valid`` (boolean (M,)) is False are ranked last, so they take
    a refined slot only when a row has fewer than k valid columns.
    """
    from keras import ops

    rows, cols = _num_rows(x), _num_rows(y)
    if isinstance(cols, int):
        k = min(k, cols)
    else:
        k = ops.minimum(k, cols)
    ranking = ops.stop_gradient(squared)
    if same:  # the diagonal is exactly 0 already: rank it last
        ranking = _set_diagonal(ranking, ops.max(ranking) + 1.0)
    if valid is not None:
        ranking = ops.where(valid[None, :], ranking, ops.max(ranking) + 1.0)
    _, nearest = ops.top_k(-ranking, k)  # (B, k) column indices
    nearest = ops.cast(nearest, "int32")
    difference = x[:, None, :] - ops.take(y, nearest, axis=0)  # (B, k, D)
    exact = ops.sum(ops.square(difference), axis=-1)  # (B, k)
    row_ids = ops.broadcast_to(ops.arange(rows, dtype="int32")[:, None], ops.shape(nearest))
    where = ops.reshape(ops.stack([row_ids, nearest], axis=-1), (-1, 2))
    # The k columns of a row are distinct: an update, not a sum (Keras 3.15's torch
    # ``ops.scatter`` is a Python loop over the indices; ``scatter_update`` is one op).
    return ops.scatter_update(squared, where, ops.reshape(exact, (-1,)))


def pairwise_squared_euclidean(
    x: Any, y: Any = None, *, exact_neighbours: int = EXACT_NEIGHBOURS, valid: Any = None
) -> Any:
    """||x_i - y_j||^2 for all rows, shape (B, M); zero diagonal when ``y`` is None.

    One matrix product of the centred rows (the Gram identity); then the other
    entries below the Gram form's rounding level, GRAM_NOISE * eps * (||c_i||^2 +
    ||c_j||^2), are set to 0 with zero gradient (their value is rounding noise) and
    each row's ``exact_neighbours`` smallest entries are recomputed from
    differences. ``exact_neighbours=0`` skips both: the plain float32 Gram form,
    for ranking pairs whose distances are then recomputed (its entries below the
    rounding level are noise, with meaningless gradients). Time O(B M D), memory
    O(B M + B k D).

    ``valid`` (boolean (M,), only with ``y``) marks the rows of ``y`` that exist
    (the filled slots of a memory): the others enter neither the common mean the
    rows are centred on nor the refined nearest entries, and their columns hold
    finite values without meaning (mask them out, e.g. with :func:`label_masks`).
    """
    from keras import ops

    same = y is None
    if valid is not None and same:
        raise ValueError("pairwise distances: valid= applies to a second set y only")
    x, y, dtype = _same_dtype(x, x if same else y)
    if same:
        centre = mean(x, axis=0, keepdims=True)
    elif valid is None:
        centre = mean(ops.concatenate([x, y], axis=0), axis=0, keepdims=True)
    else:
        valid = ops.reshape(ops.cast(valid, "bool"), (-1,))
        kept = ops.where(valid[:, None], y, 0.0)  # not a product: rows may hold anything
        total = ops.sum(x, axis=0, keepdims=True) + ops.sum(kept, axis=0, keepdims=True)
        count = ops.cast(ops.shape(x)[0], dtype) + ops.sum(ops.cast(valid, dtype))
        centre = total / maximum(count, 1.0)
    cx, cy = x - ops.stop_gradient(centre), y - ops.stop_gradient(centre)
    nx = ops.sum(ops.square(cx), axis=1)
    ny = ops.sum(ops.square(cy), axis=1)
    gram = matmul(cx, ops.transpose(cy))
    norms = nx[:, None] + ny[None, :]
    squared = maximum(norms - 2.0 * gram, 0.0)
    if exact_neighbours > 0:
        noise = GRAM_NOISE * _eps(dtype) * ops.stop_gradient(norms)
        squared = ops.where(squared > noise, squared, 0.0)
        squared = _refine_nearest(squared, x, y, int(exact_neighbours), same, valid)
    return _zero_diagonal(squared) if same else squared


def pairwise_distances(
    x: Any,
    y: Any = None,
    metric: str = "euclidean",
    *,
    exact_neighbours: int = EXACT_NEIGHBOURS,
    valid: Any = None,
) -> Any:
    """All distances d(x_i, y_j), shape (B, M); zero diagonal when ``y`` is None.

    ``metric`` is one of :data:`METRICS` (see the module docstring). Euclidean
    metrics are exact (from differences) for each row's ``exact_neighbours``
    nearest entries and accurate to ~eps * ||c||^2 / d relative elsewhere;
    pass ``exact_neighbours=0`` for a matrix used only to rank pairs. Computed
    in the compute dtype (float32, or float64 for float64 inputs).

    ``valid`` (boolean (M,), only with ``y``): which rows of ``y`` exist, see
    :func:`pairwise_squared_euclidean`; the columns of the other rows hold finite
    values without meaning (cosine distances ignore ``valid``: each entry depends
    on its two rows only).
    """
    from keras import ops

    _check_metric(metric)
    if metric == "cosine":
        same = y is None
        if valid is not None and same:
            raise ValueError("pairwise distances: valid= applies to a second set y only")
        x, y, _ = _same_dtype(x, x if same else y)
        unit_x = l2_normalize(x)
        unit_y = unit_x if same else l2_normalize(y)
        distances = ops.clip(1.0 - matmul(unit_x, ops.transpose(unit_y)), 0.0, 2.0)
        return _zero_diagonal(distances) if same else distances
    squared = pairwise_squared_euclidean(x, y, exact_neighbours=exact_neighbours, valid=valid)
    return squared if metric == "squared_euclidean" else safe_sqrt(squared)


def pairwise_similarities(x: Any, y: Any = None, kind: str = "cosine") -> Any:
    """Similarities s(x_i, y_j), shape (B, M): ``dot`` <x_i, y_j> or ``cosine`` <u_i, v_j>.

    Cosine similarities use :func:`lossplug.numerics.l2_normalize` (a zero row
    has similarity 0 to everything) and are clipped to [-1, 1]. The diagonal is
    left as it is (mask it with :func:`label_masks`).
    """
    from keras import ops

    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; expected one of {SIMILARITIES}")
    same = y is None
    x, y, _ = _same_dtype(x, x if same else y)
    if kind == "dot":
        return matmul(x, ops.transpose(y))
    unit_x = l2_normalize(x)
    unit_y = unit_x if same else l2_normalize(y)
    return ops.clip(matmul(unit_x, ops.transpose(unit_y)), -1.0, 1.0)


# ----------------------------------------------------------------------- inputs
def embeddings_and_labels(
    embeddings: Any, labels: Any, *, plugin: str, weights: Any = None
) -> tuple[Any, Any, Any]:
    """(embeddings in the compute dtype, labels of shape (B,), weights (B,) or None).

    The checks every in-batch pair loss needs, with errors naming ``plugin``:
    embeddings of shape (batch, dim) and integer labels of shape (batch,) or
    (batch, 1) (not one-hot rows); sample ``weights`` (any shape with B
    entries) are flattened and cast to the compute dtype.
    """
    from keras import ops

    if len(embeddings.shape) != 2:
        raise InvalidTensorError(
            f"loss plugin {plugin!r} needs embeddings of shape (batch, dim), got shape "
            f"{tuple(embeddings.shape)}; flatten or pool them first, or bind another layer"
        )
    if len(labels.shape) > 2 or (len(labels.shape) == 2 and labels.shape[-1] not in (1, None)):
        raise InvalidTensorError(
            f"loss plugin {plugin!r} needs integer labels of shape (batch,), got shape "
            f"{tuple(labels.shape)} (one-hot?); pass class ids (e.g. argmax of one-hot)"
        )
    dtype = compute_dtype(embeddings)
    embeddings = ops.cast(embeddings, dtype)
    labels = ops.reshape(labels, (-1,))
    if weights is not None:
        weights = ops.reshape(ops.cast(weights, dtype), (-1,))
    return embeddings, labels, weights


# ----------------------------------------------------------------------- label masks
def label_masks(
    labels: Any,
    other_labels: Any = None,
    *,
    exclude_self: bool | None = None,
    valid: Any = None,
) -> tuple[Any, Any]:
    """Boolean (B, M) masks of positive pairs (same label) and negative pairs (other label).

    ``other_labels`` defaults to ``labels`` (then M = B); labels of shape (B,)
    or (B, 1). ``exclude_self`` (default: True when ``other_labels`` is None)
    removes the diagonal from the positives: a sample is not its own positive.
    ``valid`` (boolean (M,)) marks the references that exist (the filled slots
    of a memory): a column where it is False is in neither mask. ``other_labels``
    are compared in the dtype of ``labels`` (a memory may keep integer ids as
    float32, which is exact below 2**24).
    """
    from keras import ops

    same_batch = other_labels is None
    if exclude_self is None:
        exclude_self = same_batch
    first = ops.reshape(labels, (-1,))
    second = first if same_batch else ops.reshape(other_labels, (-1,))
    second = ops.cast(second, first.dtype)
    same = ops.equal(first[:, None], second[None, :])
    negative = ops.logical_not(same)
    positive = same
    if exclude_self:
        rows, cols = _num_rows(first), _num_rows(second)
        if isinstance(rows, int) and isinstance(cols, int) and rows != cols:
            raise ValueError(
                f"label_masks(exclude_self=True) needs as many labels on both sides, got "
                f"{rows} and {cols}"
            )
        positive = ops.logical_and(same, ops.logical_not(ops.eye(rows, dtype="bool")))
    if valid is not None:
        exists = ops.reshape(ops.cast(valid, "bool"), (1, -1))
        positive = ops.logical_and(positive, exists)
        negative = ops.logical_and(negative, exists)
    return positive, negative


# ----------------------------------------------------------------------- masked reductions
def _lowest(dtype: str) -> float:
    return -1.0e300 if dtype == "float64" else -3.0e38


def masked_max(values: Any, mask: Any, axis: int = -1, *, empty: float = 0.0) -> Any:
    """max over the entries where ``mask`` holds; ``empty`` (zero gradient) without any."""
    from keras import ops

    values = ops.convert_to_tensor(values)
    has = ops.any(mask, axis=axis)
    lowest = _lowest(_dtype_name(values))
    best = ops.max(ops.where(mask, values, lowest), axis=axis)
    return ops.where(has, best, ops.cast(empty, best.dtype))


def masked_min(values: Any, mask: Any, axis: int = -1, *, empty: float = 0.0) -> Any:
    """min over the entries where ``mask`` holds; ``empty`` (zero gradient) without any."""
    return -masked_max(-values, mask, axis=axis, empty=-empty)


def masked_argmax(values: Any, mask: Any, axis: int = -1) -> tuple[Any, Any]:
    """(index of the largest masked entry, whether there is one); index 0 without entries.

    Ties go to the first index.
    """
    from keras import ops

    values = ops.convert_to_tensor(values)
    has = ops.any(mask, axis=axis)
    lowest = _lowest(_dtype_name(values))
    index = ops.argmax(ops.where(mask, ops.stop_gradient(values), lowest), axis=axis)
    return ops.where(has, ops.cast(index, "int32"), 0), has


def masked_argmin(values: Any, mask: Any, axis: int = -1) -> tuple[Any, Any]:
    """(index of the smallest masked entry, whether there is one); index 0 without entries."""
    return masked_argmax(-values, mask, axis=axis)


def masked_sum(values: Any, mask: Any, axis: Any = -1) -> Any:
    """Sum of the entries where ``mask`` holds (0 without any)."""
    from keras import ops

    return ops.sum(ops.where(mask, values, 0.0), axis=axis)


def masked_mean(values: Any, mask: Any, axis: Any = -1) -> tuple[Any, Any]:
    """(mean of the entries where ``mask`` holds, their number); the mean is 0 without any."""
    from keras import ops

    count = ops.sum(ops.cast(mask, values.dtype), axis=axis)
    return safe_divide(masked_sum(values, mask, axis=axis), count), count


def _dtype_name(x: Any) -> str:
    import keras

    return keras.backend.standardize_dtype(x.dtype)


def masked_logsumexp(
    values: Any,
    mask: Any,
    axis: int = -1,
    *,
    include_zero: bool = False,
    empty: float = 0.0,
    keepdims: bool = False,
) -> tuple[Any, Any]:
    """(log sum_{j: mask} exp(values_j), whether the row has entries), stable for any values.

    With m the largest masked entry (held constant for the gradient, which does
    not change the value or the derivative of the log-sum-exp):

        lse = m + log sum_{j: mask} exp(values_j - m)

    computed with ``values_j - m <= 0``, so nothing overflows; masked-out entries
    enter neither the value nor the gradient (exp is taken of 0 there), even
    where they are huge. ``include_zero=True`` adds a term exp(0) = 1:
    log(1 + sum exp(values_j)), which is 0 for a row without entries. Otherwise
    a row without entries gives ``empty`` (default 0) with zero gradients, and
    the second result (bool, same shape) is False there.
    """
    from keras import ops

    values = ops.convert_to_tensor(values)
    has = ops.any(mask, axis=axis, keepdims=True)
    lowest = _lowest(_dtype_name(values))
    peak = ops.max(ops.where(mask, values, lowest), axis=axis, keepdims=True)
    if include_zero:
        peak = maximum(peak, 0.0)
    peak = ops.stop_gradient(ops.where(has, peak, 0.0))
    shifted = ops.where(mask, values, peak) - peak  # 0 where masked out
    terms = ops.where(mask, ops.exp(shifted), 0.0)
    total = ops.sum(terms, axis=axis, keepdims=True)
    if include_zero:
        total = total + ops.exp(-peak)
    positive = total > 0.0
    result = peak + ops.log(ops.where(positive, total, 1.0))
    if not include_zero:
        result = ops.where(has, result, ops.cast(empty, result.dtype))
    if not keepdims:
        result = ops.squeeze(result, axis=axis)
        has = ops.squeeze(has, axis=axis)
    return result, has

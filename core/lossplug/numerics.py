"""Numerics helpers that loss plugins share: compute dtypes, class ids, targets, stable logs.

Importing this module is cheap: it imports neither Keras nor TensorFlow. The
shape rule :func:`is_sparse_labels` is plain Python (claims modules use it on
NumPy shapes); the tensor helpers import ``keras.ops`` and TensorFlow when
first called, inside a plugin's ``build_loss_graph``. ``import lossplug`` does
not import this module; the attribute ``lossplug.numerics`` imports it on first use.

Conventions (every helper follows them):

* compute dtype: float64 inputs are computed in float64, everything else
  (float16, bfloat16, float32, integers) in float32; on every backend, also where
  Keras 3.15 computes an op of float64 tensors in float32 (JAX, PyTorch): for those
  ops (:func:`mean`, :func:`maximum`, :func:`minimum`, :func:`clip`, :func:`matmul`,
  :func:`cumsum`, :func:`floor`, :func:`cos`, :func:`arctan2`, :func:`logaddexp`)
  plugins call the helper here instead of ``keras.ops``;
* errors name the plugin: ``loss plugin 'NAME': ...``, with what to do; a
  tensor of the wrong shape raises :class:`lossplug.InvalidTensorError`;
* class-id checks come before anything that indexes with the ids, on every
  backend: eagerly they raise :class:`lossplug.InvalidTensorError` at once;
  inside compiled steps they report the error through a host callback and mark
  the term invalid, so the step is skipped and ``fit`` raises the same error
  (see :mod:`lossplug.runtime`).
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidTensorError

__all__ = [
    "arctan2",
    "binary_targets",
    "categorical_log_probabilities",
    "class_ids",
    "clip",
    "clipped_binary_probabilities",
    "compute_dtype",
    "cos",
    "cumsum",
    "floor",
    "is_sparse_labels",
    "l2_normalize",
    "logaddexp",
    "matmul",
    "maximum",
    "mean",
    "minimum",
    "one_hot_targets",
    "ratio",
    "reduce_trailing",
    "segmentation_masks",
    "to_compute_dtype",
]

REDUCTIONS = ("sum", "mean")

#: The norm floor of :func:`l2_normalize`: 2**-10, about 9.8e-4, for every dtype.
L2_EPSILON = 2.0**-10


def _shape(x: Any) -> tuple[Any, ...]:
    """The shape of a tensor or array, or ``x`` itself when it is a shape."""
    return tuple(getattr(x, "shape", x))


def compute_dtype(*tensors: Any) -> str:
    """The dtype to compute in: "float64" if any of ``tensors`` is float64, else "float32".

    So half precision (float16, bfloat16) is computed in float32 and float64 is
    never narrowed. Objects without a ``dtype`` (Python numbers) count as float32.
    """
    import keras

    for x in tensors:
        dtype = getattr(x, "dtype", None)
        if dtype is not None and keras.backend.standardize_dtype(dtype) == "float64":
            return "float64"
    return "float32"


def to_compute_dtype(x: Any) -> Any:
    """``x`` as a tensor cast to its :func:`compute_dtype` (float64 stays, all else float32)."""
    from keras import ops

    x = ops.convert_to_tensor(x)
    return ops.cast(x, compute_dtype(x))


def is_sparse_labels(y_true: Any, y_pred: Any) -> bool:
    """Whether targets ``y_true`` hold class ids (rather than rows) for predictions ``y_pred``.

    Both may be tensors, arrays or shapes. With r = rank, the targets are class ids when

        r(y_true) == r(y_pred) - 1                       e.g. (B,) for (B, C)
        or r(y_true) == r(y_pred) > 0, y_true.shape[-1] == 1 and y_pred.shape[-1] != 1
                                                         e.g. (B, 1) for (B, C), C > 1

    Otherwise they are one-hot, multi-hot or soft rows of the predictions' shape
    (so (B, 1) targets for (B, 1) predictions are rows).
    """
    true_shape, pred_shape = _shape(y_true), _shape(y_pred)
    if len(true_shape) == len(pred_shape) - 1:
        return True
    return (
        len(true_shape) == len(pred_shape)
        and len(true_shape) > 0
        and true_shape[-1] == 1
        and pred_shape[-1] != 1
    )


def class_ids(
    y: Any, num_classes: int, *, plugin: str, field: str | None = None, tensor: str = "y_true"
) -> Any:
    """int32 class ids, checked to lie in [0, num_classes) before anything indexes with them.

    An out-of-range id would otherwise fail in a gather with a backend error
    naming no plugin, or silently gather a wrong row (XLA and JAX clamp indices,
    one_hot gives a zero row). A bad id raises :class:`lossplug.InvalidTensorError`
    whose message starts with the plugin's sentence, names ``tensor``, the field
    (``field``, e.g. "num_classes", when the class count comes from the config;
    otherwise the predictions' class axis), the smallest and largest offending
    ids, and what to set. Eagerly it raises at once; inside a compiled step the
    check reports through a host callback and marks the term invalid (the step
    is skipped, ``fit`` raises the error with the epoch and batch). The ids
    returned are the checked ones, with offending ids replaced by 0 so that no
    gather can fail before the check has spoken.

    Only the values are converted (float ids such as 2.0 become 2); the shape is
    kept.
    """
    from keras import ops

    from . import runtime

    ids = ops.cast(y, "int32")
    in_range = ops.logical_and(ids >= 0, ids < num_classes)
    if 0 in tuple(ids.shape):  # an empty batch has nothing to check
        return ids
    bad = ops.logical_not(ops.all(in_range))

    who = runtime.who(plugin)  # now, while the term's scope is open (the error may come later)

    def error(smallest: Any, largest: Any) -> InvalidTensorError:
        found = f"smallest offending id {int(smallest)}, largest {int(largest)}"
        if field is None:
            bound = f"[0, {num_classes}) (the predictions have {num_classes} classes)"
            fix = "Check the labels, and the number of classes of the output layer"
        else:
            bound = f"[0, {field}={num_classes})"
            fix = f"Set lossplug.use({plugin!r}, {field}=<the number of classes>) or fix the labels"
        return InvalidTensorError(
            f"{who}: {tensor} holds class ids outside {bound}: {found}. {fix}."
        )

    # Offending ids only: in-range entries are replaced by the extreme on the other side.
    smallest = ops.min(ops.where(in_range, ops.max(ids), ids))
    largest = ops.max(ops.where(in_range, ops.min(ids), ids))
    checked = runtime.check(ids, bad, error, smallest, largest)
    return ops.where(in_range, checked, ops.zeros_like(checked))


def one_hot_targets(
    y_true: Any, y_pred: Any, *, plugin: str, dtype: str = "float32", targets: str = "targets"
) -> Any:
    """Float targets with the predictions' shape, in ``dtype``.

    For C = y_pred.shape[-1] classes:

        class ids (see :func:`is_sparse_labels`)  ->  one_hot(ids, C), ids checked in [0, C)
        rows of y_pred's shape                    ->  y_true cast to ``dtype``

    ``y_pred`` may be the predictions or their shape. Class ids need a static
    class axis; rows must have y_pred's rank and class axis (an unknown class
    axis on y_true matches).
    Otherwise :class:`lossplug.InvalidTensorError` (a ``ValueError``) names
    ``plugin``, both shapes and the accepted ones (``targets`` names the row
    form in that message, e.g. "one-hot targets").
    """
    from keras import ops

    pred_shape, true_shape = _shape(y_pred), _shape(y_true)
    num_classes = pred_shape[-1]
    if is_sparse_labels(true_shape, pred_shape):
        if num_classes is None:
            raise InvalidTensorError(
                f"loss plugin {plugin!r}: class ids need a static class axis on y_pred, got "
                f"shape {pred_shape}"
            )
        if len(true_shape) == len(pred_shape):
            y_true = ops.squeeze(y_true, axis=-1)
        return ops.one_hot(class_ids(y_true, num_classes, plugin=plugin), num_classes, dtype=dtype)
    if len(true_shape) != len(pred_shape) or true_shape[-1] not in (None, num_classes):
        raise InvalidTensorError(
            f"loss plugin {plugin!r}: y_true has shape {true_shape} but y_pred has shape "
            f"{pred_shape}; pass class ids of shape {pred_shape[:-1]} or {targets} of shape "
            f"{pred_shape}"
        )
    return ops.cast(y_true, dtype)


def binary_targets(
    y_true: Any, y_pred: Any, *, plugin: str, dtype: str = "float32", targets: str = "targets"
) -> Any:
    """Float targets for predictions whose last axis holds independent sigmoid units.

    The rule of binary (sigmoid) classification and of binary masks, for C =
    y_pred.shape[-1] units:

        C = 1 and y_true of rank r(y_pred) - 1   ->  y_true[..., None] cast to ``dtype``
                                                     e.g. (B,) 0/1 targets for (B, 1) logits
        anything else                            ->  :func:`one_hot_targets` (class ids
                                                     one-hot: one sigmoid per class, one-vs-
                                                     rest; rows of y_pred's shape cast)

    The targets of a single unit are taken as they are (0/1 or soft), not as class
    ids. ``y_pred`` may be the predictions or their shape; errors are those of
    :func:`one_hot_targets` (``targets`` names the row form in their messages).
    """
    from keras import ops

    pred_shape = _shape(y_pred)
    if pred_shape and pred_shape[-1] == 1 and is_sparse_labels(y_true, pred_shape):
        return ops.expand_dims(ops.cast(y_true, dtype), -1)
    return one_hot_targets(y_true, pred_shape, plugin=plugin, dtype=dtype, targets=targets)


def segmentation_masks(y_true: Any, y_pred: Any, *, plugin: str) -> tuple[Any, Any]:
    """Targets and predictions of a segmentation loss as (B, S, C) masks: (t, p).

    S is the number of pixels (the spatial axes flattened, static or dynamic), C the
    number of classes; both results are in the :func:`compute_dtype` of ``y_pred``.
    Accepted layouts (channels last):

        y_pred            y_true
        (B, ..., C)       the same shape: one-hot, 0/1 or soft masks
        (B, ..., C), C>1  class ids (B, ...) or (B, ..., 1), one-hot encoded (ids
                          checked in [0, C) by :func:`class_ids`)
        (B, ..., 1)       a binary mask without its channel axis, (B, ...)
        (B, N)            the same shape: a flattened binary mask (C = 1, S = N)
        (B,)              the same shape: one pixel per sample (C = 1, S = 1)

    where ``...`` is one or more spatial axes. The targets' rule for C = 1 is
    :func:`binary_targets`, for C > 1 :func:`one_hot_targets`. A static axis of
    y_true that differs from y_pred's (batch or spatial) and any other layout raise
    :class:`lossplug.InvalidTensorError` naming ``plugin``, both shapes and the
    accepted layouts; y_pred needs a static channel axis when its rank is 3 or more.
    """
    from keras import ops

    dtype = compute_dtype(y_pred)
    p = ops.cast(ops.convert_to_tensor(y_pred), dtype)
    pred_shape, true_shape = _shape(p), _shape(y_true)
    rank = len(pred_shape)
    if rank == 0:
        raise InvalidTensorError(
            f"loss plugin {plugin!r}: y_pred is a scalar; give channels-last masks "
            "(B, ..., C), a flattened binary mask (B, N) or one pixel per sample (B,)"
        )
    if rank <= 2:
        if len(true_shape) != rank:
            raise InvalidTensorError(
                f"loss plugin {plugin!r}: y_pred of shape {pred_shape} is a flattened binary "
                f"mask, so y_true needs the same shape; got {true_shape} (for channels-last "
                "masks (B, ..., C) give y_pred a channel axis)"
            )
        classes, t = 1, ops.cast(y_true, dtype)
        got, want = true_shape, pred_shape
    else:
        classes = pred_shape[-1]
        if classes is None:
            raise InvalidTensorError(
                f"loss plugin {plugin!r}: y_pred of shape {pred_shape} needs a static channel "
                "(class) axis"
            )
        to_targets = binary_targets if classes == 1 else one_hot_targets
        t = to_targets(y_true, p, plugin=plugin, dtype=dtype, targets="masks")
        got, want = (true_shape[0], *_shape(t)[1:-1]), pred_shape[:-1]
    for a, b in zip(got, want, strict=True):
        if a is not None and b is not None and a != b:
            raise InvalidTensorError(
                f"loss plugin {plugin!r}: y_true of shape {true_shape} does not match y_pred "
                f"of shape {pred_shape}; give channels-last masks (B, ..., C) of the same "
                "batch and spatial shape (or class ids of shape (B, ...))"
            )
    return _as_pixels(t, classes), _as_pixels(p, classes)


def _as_pixels(x: Any, classes: int) -> Any:
    """(B, ..., C), or (B,) / (B, N) with C = 1, reshaped to (B, S, C)."""
    from keras import ops

    shape = _shape(x)
    spatial = shape[1:-1] if len(shape) > 2 else shape[1:]
    if any(axis is None for axis in spatial):
        return ops.reshape(x, (ops.shape(x)[0], -1, classes))
    size = 1
    for axis in spatial:
        size *= axis
    return ops.reshape(x, (-1, size, classes))


#: The smallest positive normal number of each compute dtype (2**-126, about 1.2e-38, in float32).
SMALLEST_NORMAL = {"float32": 2.0**-126, "float64": 2.0**-1022}
#: (below, factor) of :func:`ratio` per compute dtype: a denominator d below ``below`` (whose
#: square would underflow) is divided with numerator and denominator multiplied by ``factor``,
#: which puts d * factor in [2**-26, 2**40) in float32 and [2**-222, 2**300) in float64.
RATIO_RESCALE = {"float32": (2.0**-60, 2.0**100), "float64": (2.0**-500, 2.0**800)}


def ratio(numerator: Any, denominator: Any, *, at_zero: float = 0.0) -> Any:
    """numerator / denominator for a denominator d >= 0 (and |numerator| <= d), ``at_zero``
    where d is 0, with finite gradients for every positive d, on every backend and compiler.

    The quotient of the overlap losses (Dice, Jaccard, Tversky), n / d, where d can be as
    small as a tiny ``smooth`` added to empty masks, and 0/0 has the value the loss defines:

        d >= tiny:  n / d,   d(n/d)/dn = 1 / d,   d(n/d)/dd = -(n / d) / d
        d <  tiny:  at_zero, with zero gradients

    tiny is the smallest normal number of the dtype (``SMALLEST_NORMAL``, 1.2e-38 in
    float32): a subnormal d counts as 0, as TensorFlow's and XLA's CPU kernels flush it
    to zero anyway (on PyTorch 1 / d would overflow). ``n / d`` alone has the right value
    but not always a finite gradient: JAX differentiates it as -n * d**-2, and XLA
    rewrites TensorFlow's -(n / d) / d as -n / (d * d); d * d underflows to 0 for d below
    about 1e-19 in float32, which gives inf or 0 * inf = NaN. So a d below
    ``RATIO_RESCALE``'s threshold (2**-60 in float32) is divided as
    (n * 2**100) / (d * 2**100): the same quotient (scaling by a power of two is exact),
    whose square never underflows. Above the threshold the quotient is n / d itself. The
    inner ``where`` (a denominator of 1) keeps the unused branch finite. Computed in
    :func:`compute_dtype` of both tensors.
    """
    from keras import ops

    dtype = compute_dtype(numerator, denominator)
    numerator, denominator = ops.cast(numerator, dtype), ops.cast(denominator, dtype)

    def constant(value: float) -> Any:  # typed: a Python 2**-1022 would become a float32 0
        return ops.convert_to_tensor(value, dtype)

    below, factor = RATIO_RESCALE[dtype]
    positive = denominator >= constant(SMALLEST_NORMAL[dtype])
    safe = ops.where(positive, denominator, ops.ones_like(denominator))
    scale = ops.where(safe < constant(below), constant(factor), constant(1.0))
    quotient = (numerator * scale) / (safe * scale)
    return ops.where(positive, quotient, ops.full_like(quotient, at_zero))


def categorical_log_probabilities(y_pred: Any, *, from_logits: bool) -> Any:
    """log p over the last (class) axis, in the compute dtype of ``y_pred``.

    From logits z: log p = log_softmax(z) = z - logsumexp(z) (stable for any z).
    From probabilities (eps = keras.config.epsilon()):

        p = clip(y_pred, eps, 1);  p = p / sum_c p_c;  log p = log(clip(p, eps, 1 - eps))

    The first clip changes nothing on valid rows and turns a row of zeros (or
    any other scores) into a distribution instead of dividing by 0; the last is
    Keras' categorical_crossentropy convention (a probability of 0 costs
    -log(eps), not infinity).
    """
    import keras
    from keras import ops

    y_pred = to_compute_dtype(y_pred)
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    eps = keras.config.epsilon()
    p = clip(y_pred, eps, 1.0)
    p = p / ops.sum(p, axis=-1, keepdims=True)
    return ops.log(clip(p, eps, 1.0 - eps))


def clipped_binary_probabilities(p: Any) -> tuple[Any, Any]:
    """(clip(p, eps, 1 - eps), clip(1 - p, eps, 1 - eps)), eps = keras.config.epsilon().

    p and 1 - p are clipped separately, so that float16, float32 and float64
    agree at saturated outputs: 1 - clip(p) would round to 1.19e-7 in float32
    at p = 1, whereas clip(1 - p) is exactly eps. Computed in ``p``'s dtype.
    """
    import keras

    eps = keras.config.epsilon()
    return clip(p, eps, 1.0 - eps), clip(1.0 - p, eps, 1.0 - eps)


def mean(values: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Any:
    """``keras.ops.mean`` computed as sum / count, in the dtype of ``values``.

    Keras 3.15 computes ``ops.mean`` of a float64 tensor in float32 on JAX and PyTorch
    (docs/decisions.md, upstream limitations); plugins that must be float64-exact (the
    kit's finite-difference and dtype checks) use this instead.
    """
    from keras import ops

    total = ops.sum(values, axis=axis, keepdims=keepdims)
    shape = ops.shape(values)
    if axis is None:
        axes: tuple[int, ...] = tuple(range(len(values.shape)))
    else:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
    count = 1
    for a in axes:
        count = count * shape[a]
    return total / ops.cast(count, total.dtype)


# ----------------------------------------------------------------- float64-exact ops
# Keras 3.15 maps float64 to float32 in its dtype promotion on every backend but
# TensorFlow (``keras.backend.result_type("float64") == "float32"`` on JAX and torch),
# and the ops below cast their inputs to that type: float64 in, float32 (or float32
# precision) out. Each helper is the Keras op for every other dtype; when a tensor
# argument is float64 it computes in float64 with the backend's own function
# (``lossplug.backend.<name>.FLOAT64_OPS``), Python numbers converted to float64 too
# (Keras' torch ops round them to float32 first). See docs/decisions.md.


def _keep_float64(name: str, tensors: tuple[Any, ...], *options: Any) -> Any:
    """``keras.ops.<name>(*tensors, *options)``, computed in float64 if a tensor is float64.

    ``tensors`` are the tensor (or number) arguments; ``options`` (an axis) are passed
    as they are.
    """
    from keras import ops

    from . import backend

    op = getattr(ops, name)
    if compute_dtype(*tensors) != "float64":
        return op(*tensors, *options)
    native = backend.current().FLOAT64_OPS.get(name, op)
    return native(*(ops.convert_to_tensor(t, "float64") for t in tensors), *options)


def maximum(a: Any, b: Any) -> Any:
    """max(a, b) elementwise (``keras.ops.maximum``); float64 stays float64."""
    return _keep_float64("maximum", (a, b))


def minimum(a: Any, b: Any) -> Any:
    """min(a, b) elementwise (``keras.ops.minimum``); float64 stays float64."""
    return _keep_float64("minimum", (a, b))


def clip(x: Any, low: Any, high: Any) -> Any:
    """min(max(x, low), high) elementwise (``keras.ops.clip``); float64 stays float64.

    For a float64 ``x`` the bounds are float64 too: Keras' torch backend would clip at
    the bounds rounded to float32 (1e-7 becomes 1.00000001e-7).
    """
    return _keep_float64("clip", (x, low, high))


def matmul(a: Any, b: Any) -> Any:
    """The matrix product (a b)_ij = sum_k a_ik b_kj (``keras.ops.matmul``); float64 stays."""
    return _keep_float64("matmul", (a, b))


def cumsum(x: Any, axis: int) -> Any:
    """Running sums s_i = sum_{j <= i} x_j along ``axis``; float64 stays float64."""
    return _keep_float64("cumsum", (x,), axis)


def floor(x: Any) -> Any:
    """floor(x), the largest integer <= x, elementwise; float64 stays float64.

    The float32 Keras computes in on JAX and torch would round x first: 3 - 1e-9
    becomes 3, whose floor is 3, not 2.
    """
    return _keep_float64("floor", (x,))


def cos(x: Any) -> Any:
    """cos(x) elementwise; float64 stays float64 (JAX computes it in float32)."""
    return _keep_float64("cos", (x,))


def arctan2(y: Any, x: Any) -> Any:
    """The angle of the point (x, y): atan2(y, x) in [-pi, pi]; float64 stays float64."""
    return _keep_float64("arctan2", (y, x))


def logaddexp(a: Any, b: Any) -> Any:
    """log(exp(a) + exp(b)) = max(a, b) + log1p(exp(-|a - b|)), elementwise; float64 stays."""
    return _keep_float64("logaddexp", (a, b))


def reduce_trailing(values: Any, reduction: str = "sum") -> Any:
    """Sum or mean over every axis but the first: shape (B, ...) -> (B,).

    reduce_trailing(x, "sum")[b] = sum_j x[b, j...],  "mean": the same / (number of j).
    A tensor of shape (B,) (or a scalar) is returned unchanged.
    """
    from keras import ops

    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    axes = tuple(range(1, len(values.shape)))
    if not axes:
        return values
    if reduction == "sum":
        return ops.sum(values, axis=axes)
    return mean(values, axis=axes)


def l2_normalize(x: Any, axis: int = -1, *, epsilon: float = L2_EPSILON) -> Any:
    """x / max(||x||, epsilon) along ``axis``, with bounded, finite gradients everywhere.

    With n = ||x|| (the L2 norm along ``axis``) and eps = ``epsilon``:

        n >  eps:  x / n      (a unit vector); Jacobian (I - u u^T) / n, norm 1 / n < 1 / eps
        n <= eps:  x / eps    (zero stays zero); Jacobian I / eps

    so the gradient of any loss through the normalisation is at most 1 / eps times
    the gradient with respect to the result, at, near and away from the zero vector.
    The square root is taken with a "double where", so its infinite derivative at
    n = 0 never enters (``sqrt(max(n^2, eps^2))`` would give 0 * inf = NaN there).
    ``x * rsqrt(max(n^2, 1e-12))`` (TensorFlow's ``l2_normalize``, Keras'
    ``UnitNormalization``) scales a zero row's gradient by 1e6, which is ``inf`` once
    cast back to float16.

    The default eps = 2**-10 (~9.8e-4) bounds that factor by 1024, so a float16
    gradient stays finite for gradients below 63.96 (65504 / 1024) with respect to
    the unit vector.
    It is one floor for every dtype, so float16, bfloat16, float32 and float64
    inputs give the same result on the same values (a per-dtype floor would make
    rows with norms between two floors differ by dtype). Rows shorter than eps
    are treated as having no direction; a row of norm 1e-3 or more is normalised
    exactly.

    Computed in :func:`compute_dtype` (float16 and bfloat16 in float32, float64
    stays float64), which is also the dtype of the result, so that squares of
    half-precision values neither overflow nor underflow.
    """
    from keras import ops

    if not epsilon > 0.0:
        raise ValueError(f"l2_normalize needs epsilon > 0, got {epsilon!r}")
    x = to_compute_dtype(x)
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    long_enough = squared > epsilon * epsilon
    norm = ops.where(long_enough, ops.sqrt(ops.where(long_enough, squared, 1.0)), epsilon)
    return x / norm

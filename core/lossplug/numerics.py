"""Numerics helpers that loss plugins share: compute dtypes, class ids, targets, stable logs.

Importing this module is cheap: it imports neither Keras nor TensorFlow. The
shape rule :func:`is_sparse_labels` is plain Python (claims modules use it on
NumPy shapes); the tensor helpers import ``keras.ops`` and TensorFlow when
first called, inside a plugin's ``build_loss_graph``. ``import lossplug`` does
not import this module; the attribute ``lossplug.numerics`` imports it on first use.

Conventions (every helper follows them):

* compute dtype: float64 inputs are computed in float64, everything else
  (float16, bfloat16, float32, integers) in float32;
* errors name the plugin: ``loss plugin 'NAME': ...``, with what to do; a
  tensor of the wrong shape raises :class:`lossplug.InvalidTensorError`;
* class-id checks are ``tf.debugging`` assertions, so they also fire in
  ``tf.function`` graphs (XLA drops them without changing the value).
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidTensorError

__all__ = [
    "categorical_log_probabilities",
    "class_ids",
    "clipped_binary_probabilities",
    "compute_dtype",
    "is_sparse_labels",
    "one_hot_targets",
    "reduce_trailing",
    "to_compute_dtype",
]

REDUCTIONS = ("sum", "mean")


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
    """int32 class ids, with a check (also in compiled graphs) that 0 <= id < num_classes.

    An out-of-range id would otherwise give a zero one-hot row (or, on GPU, a
    zero row of a gathered variable) and a silently wrong loss. The check raises
    ``tf.errors.InvalidArgumentError`` with a message naming ``plugin`` and
    ``tensor``. When ``num_classes`` comes from the plugin's config field
    ``field`` (e.g. "num_classes"), the message says so and how to set it;
    otherwise it is the size of the predictions' class axis.

    Only the values are converted (float ids such as 2.0 become 2); the shape is
    kept.
    """
    import tensorflow as tf
    from keras import ops

    ids = ops.cast(y, "int32")
    if field is None:
        message = (
            f"loss plugin {plugin!r}: {tensor} holds a class id outside [0, {num_classes}) for "
            f"predictions with {num_classes} classes; check the labels (and the number of "
            "classes)"
        )
    else:
        message = (
            f"loss plugin {plugin!r}: {tensor} holds a class id outside [0, {field}="
            f"{num_classes}); set lossplug.use({plugin!r}, {field}=<the number of classes>)"
        )
    tf.debugging.assert_non_negative(ids, message=message)
    tf.debugging.assert_less(ids, num_classes, message=message)
    return ids


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
    p = ops.clip(y_pred, eps, 1.0)
    p = p / ops.sum(p, axis=-1, keepdims=True)
    return ops.log(ops.clip(p, eps, 1.0 - eps))


def clipped_binary_probabilities(p: Any) -> tuple[Any, Any]:
    """(clip(p, eps, 1 - eps), clip(1 - p, eps, 1 - eps)), eps = keras.config.epsilon().

    p and 1 - p are clipped separately, so that float16, float32 and float64
    agree at saturated outputs: 1 - clip(p) would round to 1.19e-7 in float32
    at p = 1, whereas clip(1 - p) is exactly eps. Computed in ``p``'s dtype.
    """
    import keras
    from keras import ops

    eps = keras.config.epsilon()
    return ops.clip(p, eps, 1.0 - eps), ops.clip(1.0 - p, eps, 1.0 - eps)


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
    return ops.sum(values, axis=axes) if reduction == "sum" else ops.mean(values, axis=axes)

"""The label-smoothed cross-entropy in ``keras.ops`` (imported lazily by the plugin).

For C classes, targets t (one-hot, soft, or sparse class ids turned one-hot) and
smoothing epsilon:

    q = (1 - epsilon) * t + epsilon / C            (the smoothed target)
    loss = -sum_c q_c * log p_c                    (one value per sample)

where log p = log_softmax(logits) (stable log-sum-exp form) when ``from_logits``,
otherwise p is the given probabilities clipped to [eps_k, 1], renormalised over
the class axis and clipped to [eps_k, 1 - eps_k] with eps_k =
keras.config.epsilon() (Keras' convention, so a probability of 0 costs
-log(eps_k) instead of infinity; the first clip changes nothing on valid rows
and turns any other scores into a distribution). Float64 inputs are computed
in float64, all others in float32.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

PLUGIN = "label_smoothing"


def checked_ids(ids: Any, num_classes: int) -> Any:
    """int32 class ids, with a check (also in compiled graphs) that they lie in [0, num_classes).

    Out-of-range ids would otherwise give a zero one-hot row (or, on GPU, a
    zero centre) and a silently wrong loss.
    """
    ids = ops.cast(ids, "int32")
    message = (
        f"loss plugin {PLUGIN!r}: y_true holds a class id outside [0, {num_classes}) for "
        f"predictions with {num_classes} classes; check the labels (and the number of classes)"
    )
    tf.debugging.assert_non_negative(ids, message=message)
    tf.debugging.assert_less(ids, num_classes, message=message)
    return ids


def compute_dtype(x: Any) -> str:
    """float64 inputs are computed in float64; everything else (float16, bfloat16) in float32."""
    return "float64" if keras.backend.standardize_dtype(x.dtype) == "float64" else "float32"


def is_sparse(true_shape: tuple[Any, ...], pred_shape: tuple[Any, ...]) -> bool:
    """Whether targets of ``true_shape`` are class ids for predictions of ``pred_shape``.

    Sparse: one axis fewer than the predictions ((B,) for (B, C)), or a trailing
    axis of 1 when there is more than one class ((B, 1) for (B, C)). Otherwise
    the targets are one-hot (or soft) rows with the predictions' shape.
    """
    if len(true_shape) == len(pred_shape) - 1:
        return True
    return (
        len(true_shape) == len(pred_shape)
        and len(true_shape) > 0
        and true_shape[-1] == 1
        and pred_shape[-1] != 1
    )


def dense_targets(y_true: Any, num_classes: int, dtype: str = "float32") -> Any:
    """Float targets with the predictions' shape: class ids are turned one-hot."""
    return ops.one_hot(checked_ids(y_true, num_classes), num_classes, dtype=dtype)


def log_probabilities(y_pred: Any, from_logits: bool) -> Any:
    """log p over the last axis, stable for logits and for (possibly degenerate) probabilities."""
    y_pred = ops.cast(y_pred, compute_dtype(y_pred))
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    eps = keras.config.epsilon()
    # Clip first so that a row of zeros (or junk) cannot divide by zero, then
    # renormalise and clip as Keras' categorical_crossentropy does.
    p = ops.clip(y_pred, eps, 1.0)
    p = p / ops.sum(p, axis=-1, keepdims=True)
    return ops.log(ops.clip(p, eps, 1.0 - eps))


def smoothed_targets(
    y_true: Any, y_pred_shape: tuple[Any, ...], epsilon: float, dtype: str = "float32"
) -> Any:
    """q = (1 - epsilon) * t + epsilon / C, with t one-hot if ``y_true`` holds class ids."""
    num_classes = y_pred_shape[-1]
    if num_classes is None:
        raise ValueError(
            f"loss plugin {PLUGIN!r}: the class axis (last axis) of y_pred must have a static "
            f"size, got shape {tuple(y_pred_shape)}"
        )
    true_shape = tuple(y_true.shape)
    if is_sparse(true_shape, tuple(y_pred_shape)):
        if len(true_shape) == len(y_pred_shape):
            y_true = ops.squeeze(y_true, axis=-1)
        target = dense_targets(y_true, num_classes, dtype)
    else:
        if len(true_shape) != len(y_pred_shape) or true_shape[-1] not in (None, num_classes):
            raise ValueError(
                f"loss plugin {PLUGIN!r}: y_true has shape {true_shape} but y_pred has shape "
                f"{tuple(y_pred_shape)}; pass class ids of shape {tuple(y_pred_shape[:-1])} "
                f"or one-hot targets of shape {tuple(y_pred_shape)}"
            )
        target = ops.cast(y_true, dtype)
    return (1.0 - epsilon) * target + epsilon / num_classes


def label_smoothing_crossentropy(
    y_true: Any, y_pred: Any, *, epsilon: float = 0.1, from_logits: bool = True
) -> Any:
    """Per-sample cross-entropy -sum_c q_c log p_c against the smoothed target q.

    Args:
        y_true: class ids (shape ``y_pred.shape[:-1]``, or with a trailing 1) or
            one-hot / soft targets (shape ``y_pred.shape``).
        y_pred: logits (``from_logits=True``) or probabilities, classes last.
        epsilon: smoothing mass in [0, 1] spread uniformly over the C classes.
        from_logits: whether ``y_pred`` holds logits.

    Returns:
        tensor of shape ``y_pred.shape[:-1]``, float32 (float64 for float64 predictions).
    """
    q = smoothed_targets(y_true, tuple(y_pred.shape), epsilon, compute_dtype(y_pred))
    return -ops.sum(q * log_probabilities(y_pred, from_logits), axis=-1)

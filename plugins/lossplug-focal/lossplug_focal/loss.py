"""Focal loss in ``keras.ops`` (imported lazily by the plugin).

Categorical, for targets t over C classes (one-hot, soft, or class ids):

    loss = -a * sum_c t_c * (1 - p_c)^gamma * log p_c

with a = alpha (a constant factor, as in Keras) or 1 when alpha is None.

Binary, element-wise for targets t in [0, 1] and probabilities p, then the mean
over the last axis (as keras.losses.binary_crossentropy):

    bce   = -(t log p + (1 - t) log(1 - p))
    1-p_t = t (1 - p) + (1 - t) p
    a_t   = alpha t + (1 - alpha)(1 - t)          (1 when alpha is None)
    loss  = mean_last_axis(a_t * (1 - p_t)^gamma * bce)

Numerics: from logits, log p = log_softmax (categorical) or -softplus(-z)
(binary) and 1 - p = -expm1(log p) or sigmoid(-z), so no probability is
rounded to 1 before its complement is taken. From probabilities, p is clipped
to [eps_k, 1 - eps_k] (eps_k = keras.config.epsilon()) and, in categorical
mode, renormalised. The modulating factor is computed on max(1 - p_t, 1e-12)
so that its gradient stays finite for 0 < gamma < 1 at p_t = 1.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PLUGIN = "focal"
#: floor of 1 - p_t inside the modulating factor (finite gradient for gamma < 1)
_FLOOR = 1e-12


def is_sparse(true_shape: tuple[Any, ...], pred_shape: tuple[Any, ...]) -> bool:
    """Class ids: one axis fewer than y_pred, or a trailing axis of 1 with more than one class."""
    if len(true_shape) == len(pred_shape) - 1:
        return True
    return (
        len(true_shape) == len(pred_shape)
        and len(true_shape) > 0
        and true_shape[-1] == 1
        and pred_shape[-1] != 1
    )


def dense_targets(y_true: Any, pred_shape: tuple[Any, ...], mode: str) -> Any:
    """Float targets with y_pred's shape.

    Class ids become one-hot rows; in binary mode with a single output unit
    (y_pred of shape (B, 1)), targets of shape (B,) are the 0/1 targets
    themselves.
    """
    num_classes = pred_shape[-1]
    true_shape = tuple(y_true.shape)
    if is_sparse(true_shape, pred_shape):
        if len(true_shape) == len(pred_shape):
            y_true = ops.squeeze(y_true, axis=-1)
        if mode == "binary" and num_classes == 1:
            return ops.expand_dims(ops.cast(y_true, "float32"), -1)
        if num_classes is None:
            raise ValueError(
                f"loss plugin {PLUGIN!r}: class ids need a static class axis on y_pred, got "
                f"shape {tuple(pred_shape)}"
            )
        return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype="float32")
    if len(true_shape) != len(pred_shape) or true_shape[-1] not in (None, num_classes):
        raise ValueError(
            f"loss plugin {PLUGIN!r} ({mode} mode): y_true has shape {true_shape} but y_pred "
            f"has shape {tuple(pred_shape)}; pass class ids of shape {tuple(pred_shape[:-1])} "
            f"or targets of shape {tuple(pred_shape)}"
        )
    return ops.cast(y_true, "float32")


def _modulator(one_minus_pt: Any, gamma: float) -> Any:
    if gamma == 0:
        return ops.ones_like(one_minus_pt)
    return ops.power(ops.maximum(one_minus_pt, _FLOOR), gamma)


def categorical_focal(
    target: Any, y_pred: Any, *, gamma: float, alpha: float | None, from_logits: bool
) -> Any:
    """-a * sum_c t_c (1 - p_c)^gamma log p_c over the last axis."""
    y_pred = ops.cast(y_pred, "float32")
    if from_logits:
        log_p = ops.log_softmax(y_pred, axis=-1)
    else:
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0)
        p = p / ops.sum(p, axis=-1, keepdims=True)
        log_p = ops.log(ops.clip(p, eps, 1.0 - eps))
    one_minus_p = -ops.expm1(log_p)
    loss = -ops.sum(target * _modulator(one_minus_p, gamma) * log_p, axis=-1)
    return loss if alpha is None else alpha * loss


def binary_focal(
    target: Any, y_pred: Any, *, gamma: float, alpha: float | None, from_logits: bool
) -> Any:
    """mean over the last axis of a_t (1 - p_t)^gamma * bce, element-wise."""
    y_pred = ops.cast(y_pred, "float32")
    if from_logits:
        log_p = -ops.softplus(-y_pred)
        log_not_p = -ops.softplus(y_pred)
        p, not_p = ops.sigmoid(y_pred), ops.sigmoid(-y_pred)
    else:
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        not_p = 1.0 - p
        log_p, log_not_p = ops.log(p), ops.log(not_p)
    bce = -(target * log_p + (1.0 - target) * log_not_p)
    one_minus_pt = target * not_p + (1.0 - target) * p
    loss = _modulator(one_minus_pt, gamma) * bce
    if alpha is not None:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    return ops.mean(loss, axis=-1)


def focal_loss(
    y_true: Any,
    y_pred: Any,
    *,
    mode: str = "categorical",
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    from_logits: bool = True,
) -> Any:
    """Per-sample focal loss, shape ``y_pred.shape[:-1]``; see the module docstring."""
    target = dense_targets(y_true, tuple(y_pred.shape), mode)
    fn = binary_focal if mode == "binary" else categorical_focal
    return fn(target, y_pred, gamma=gamma, alpha=alpha, from_logits=from_logits)

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
rounded to 1 before its complement is taken. From probabilities, p (and, in
binary mode, 1 - p separately) is clipped to [eps_k, 1 - eps_k]
(eps_k = keras.config.epsilon()); in categorical mode the scores are first
clipped to [eps_k, 1] and renormalised over the class axis. The modulating
factor is computed on max(1 - p_t, 1e-12) so that its gradient stays finite
for 0 < gamma < 1 at p_t = 1. Float64 inputs are computed in float64, others
in float32.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import numerics
from lossplug.numerics import (
    binary_targets,
    categorical_log_probabilities,
    clipped_binary_probabilities,
    compute_dtype,
    one_hot_targets,
    to_compute_dtype,
)

PLUGIN = "focal"
#: floor of 1 - p_t inside the modulating factor (finite gradient for gamma < 1)
_FLOOR = 1e-12


def _modulator(one_minus_pt: Any, gamma: float) -> Any:
    if gamma == 0:
        return ops.ones_like(one_minus_pt)
    return ops.power(numerics.maximum(one_minus_pt, _FLOOR), gamma)


def categorical_focal(
    target: Any, y_pred: Any, *, gamma: float, alpha: float | None, from_logits: bool
) -> Any:
    """-a * sum_c t_c (1 - p_c)^gamma log p_c over the last axis."""
    log_p = categorical_log_probabilities(y_pred, from_logits=from_logits)
    one_minus_p = -ops.expm1(log_p)
    loss = -ops.sum(target * _modulator(one_minus_p, gamma) * log_p, axis=-1)
    return loss if alpha is None else alpha * loss


def binary_focal(
    target: Any, y_pred: Any, *, gamma: float, alpha: float | None, from_logits: bool
) -> Any:
    """mean over the last axis of a_t (1 - p_t)^gamma * bce, element-wise."""
    y_pred = to_compute_dtype(y_pred)
    if from_logits:
        log_p = -ops.softplus(-y_pred)
        log_not_p = -ops.softplus(y_pred)
        p, not_p = ops.sigmoid(y_pred), ops.sigmoid(-y_pred)
    else:
        p, not_p = clipped_binary_probabilities(y_pred)
        log_p, log_not_p = ops.log(p), ops.log(not_p)
    bce = -(target * log_p + (1.0 - target) * log_not_p)
    one_minus_pt = target * not_p + (1.0 - target) * p
    loss = _modulator(one_minus_pt, gamma) * bce
    if alpha is not None:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    return numerics.mean(loss, axis=-1)


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
    # binary: one sigmoid per class (class ids one-vs-rest), or (B,) 0/1 targets of one unit
    to_targets = binary_targets if mode == "binary" else one_hot_targets
    target = to_targets(y_true, tuple(y_pred.shape), plugin=PLUGIN, dtype=compute_dtype(y_pred))
    fn = binary_focal if mode == "binary" else categorical_focal
    return fn(target, y_pred, gamma=gamma, alpha=alpha, from_logits=from_logits)

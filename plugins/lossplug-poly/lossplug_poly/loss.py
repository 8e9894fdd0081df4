"""Poly-1 loss in ``keras.ops`` (imported lazily by the plugin).

Leng et al. (2022), "PolyLoss: A Polynomial Expansion Perspective of
Classification Loss Functions" (ICLR), eq. (3): cross-entropy expands as
-log p_t = sum_j (1 - p_t)^j / j, and Poly-1 shifts the first coefficient by
epsilon:

    poly1 = -log p_t + epsilon * (1 - p_t)

Categorical (softmax over the last axis), per sample, for targets q (class ids
turned one-hot, one-hot or soft rows, label-smoothed when alpha > 0):

    q    = (1 - alpha) t + alpha / C
    loss = sum_c q_c * (-log p_c + epsilon * (1 - p_c))
         = CE(q, p) + epsilon * (1 - sum_c q_c p_c)

which is the paper's code (its label-smoothed variant weighs 1 - p_c by the
smoothed targets too). Binary (an independent sigmoid per entry), element-wise
for targets t in [0, 1] (smoothed towards 1/2: (1 - alpha) t + alpha / 2, as
Keras' binary cross-entropy does), then the mean over the last axis:

    1 - p_t = t (1 - p) + (1 - t) p
    loss    = mean_last_axis(t (-log p + epsilon (1 - p)) + (1 - t) (-log(1 - p) + epsilon p))

Every per-class (per-entry) term -log u + epsilon (1 - u) with u in (0, 1] is
>= 0 for epsilon >= -1, because -log u >= 1 - u. For epsilon < 0 each term is
clamped at 0, which only removes float rounding (the clamp is inactive in exact
arithmetic).

Numerics: from logits, log p = log_softmax(z) (categorical) or -softplus(-z)
(binary), and 1 - p = -expm1(log p) or sigmoid(-z), so a confident prediction
never rounds p to 1 before its complement is taken. From probabilities, the
clipping of :func:`lossplug.numerics.categorical_log_probabilities` /
:func:`lossplug.numerics.clipped_binary_probabilities` applies. Float64
inputs are computed in float64, all others in float32.
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

PLUGIN = "poly"


def poly_targets(
    y_true: Any,
    pred_shape: tuple[Any, ...],
    *,
    mode: str,
    label_smoothing: float,
    dtype: str = "float32",
) -> Any:
    """Float targets with the predictions' shape, label-smoothed.

    Class ids become one-hot rows (checked to lie in [0, C)); in binary mode they
    give one sigmoid per class (one-vs-rest), except for a single output unit
    (predictions (B, 1)), where targets of shape (B,) are the 0/1 targets
    (:func:`lossplug.numerics.binary_targets`).
    Smoothing: categorical (1 - a) t + a / C, binary (1 - a) t + a / 2.
    """
    to_targets = binary_targets if mode == "binary" else one_hot_targets
    target = to_targets(y_true, pred_shape, plugin=PLUGIN, dtype=dtype)
    if label_smoothing == 0:
        return target
    spread = 2 if mode == "binary" else pred_shape[-1]
    return (1.0 - label_smoothing) * target + label_smoothing / spread


def _nonnegative(term: Any, epsilon: float) -> Any:
    """-log u + epsilon (1 - u) >= 0 for epsilon >= -1: clamp the rounding away."""
    return numerics.maximum(term, 0.0) if epsilon < 0 else term


def categorical_poly1(target: Any, y_pred: Any, *, epsilon: float, from_logits: bool) -> Any:
    """sum_c q_c (-log p_c + epsilon (1 - p_c)) over the last axis (softmax)."""
    log_p = categorical_log_probabilities(y_pred, from_logits=from_logits)
    term = _nonnegative(-log_p + epsilon * -ops.expm1(log_p), epsilon)
    return ops.sum(target * term, axis=-1)


def binary_poly1(target: Any, y_pred: Any, *, epsilon: float, from_logits: bool) -> Any:
    """mean over the last axis of the element-wise sigmoid Poly-1 loss."""
    y_pred = to_compute_dtype(y_pred)
    if from_logits:
        log_p, log_not_p = -ops.softplus(-y_pred), -ops.softplus(y_pred)
        p, not_p = ops.sigmoid(y_pred), ops.sigmoid(-y_pred)
    else:
        p, not_p = clipped_binary_probabilities(y_pred)
        log_p, log_not_p = ops.log(p), ops.log(not_p)
    positive = _nonnegative(-log_p + epsilon * not_p, epsilon)
    negative = _nonnegative(-log_not_p + epsilon * p, epsilon)
    return numerics.mean(target * positive + (1.0 - target) * negative, axis=-1)


def poly1_loss(
    y_true: Any,
    y_pred: Any,
    *,
    epsilon: float = 1.0,
    mode: str = "categorical",
    label_smoothing: float = 0.0,
    from_logits: bool = True,
) -> Any:
    """Per-sample Poly-1 loss, shape ``y_pred.shape[:-1]``; see the module docstring.

    Args:
        y_true: class ids (shape ``y_pred.shape[:-1]`` or with a trailing 1), or
            one-hot / multi-hot / soft targets of ``y_pred``'s shape.
        y_pred: logits (``from_logits=True``) or probabilities, classes last.
        epsilon: shift of the first polynomial coefficient, >= -1.
        mode: "categorical" (softmax) or "binary" (independent sigmoids).
        label_smoothing: alpha in [0, 1].
        from_logits: whether ``y_pred`` holds logits.
    """
    shape = tuple(y_pred.shape)
    target = poly_targets(
        y_true, shape, mode=mode, label_smoothing=label_smoothing, dtype=compute_dtype(y_pred)
    )
    fn = binary_poly1 if mode == "binary" else categorical_poly1
    return fn(target, y_pred, epsilon=epsilon, from_logits=from_logits)

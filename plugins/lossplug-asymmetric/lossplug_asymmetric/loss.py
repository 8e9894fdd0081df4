"""Asymmetric loss (ASL) in ``keras.ops`` (imported lazily by the plugin).

Ridnik et al. (2021), "Asymmetric Loss For Multi-Label Classification" (ICCV),
eqs. (4)-(8). Element-wise, for a label with target t in [0, 1] and probability
p = sigmoid(z):

    L+  = (1 - p)^gamma_pos * -log(max(p, eps))                       positives
    p_m = max(p - m, 0)                                               shifted probability
    L-  = p_m^gamma_neg * -log(max(1 - p_m, eps))                     negatives
    loss_element = t L+ + (1 - t) L-

and per sample the sum (``reduction="sum"``, the paper's and the official
code's convention) or the mean over the label axis. The probability margin m
(``clip``) discards easy negatives (p <= m contributes exactly 0) and lowers
the weight of the others; eps is the official code's floor of the
probabilities inside the logarithms (0 switches it off).

Numerics: from logits, log p = -softplus(-z), 1 - p = sigmoid(-z); with m = 0,
log(1 - p_m) = -softplus(z) and the focusing factors are exp(gamma * log ...),
so nothing saturates at logits of +-1e4. With m > 0, 1 - p_m = min(1 - p + m, 1)
(its log is >= log m) and p_m^gamma_neg is taken of max(p_m, 1e-12), which keeps
its gradient finite for gamma_neg < 1 where p_m = 0. From probabilities, p and
1 - p are clipped separately to [eps_k, 1 - eps_k] (eps_k = keras.config.epsilon()).
Float64 inputs are computed in float64, all others in float32.
"""

from __future__ import annotations

import math
from typing import Any

from keras import ops
from lossplug.numerics import (
    clipped_binary_probabilities,
    compute_dtype,
    maximum,
    minimum,
    one_hot_targets,
    reduce_trailing,
    to_compute_dtype,
)

PLUGIN = "asymmetric"
#: floor of p_m inside p_m^gamma_neg (finite gradient for gamma_neg < 1 at p_m = 0)
_FLOOR = 1e-12


def _log_probabilities(y_pred: Any, from_logits: bool) -> tuple[Any, Any, Any, Any]:
    """(log p, log(1 - p), p, 1 - p), element-wise, in the compute dtype."""
    y_pred = to_compute_dtype(y_pred)
    if from_logits:
        return (
            -ops.softplus(-y_pred),
            -ops.softplus(y_pred),
            ops.sigmoid(y_pred),
            ops.sigmoid(-y_pred),
        )
    p, not_p = clipped_binary_probabilities(y_pred)
    return ops.log(p), ops.log(not_p), p, not_p


def _floored(log_value: Any, eps: float) -> Any:
    """log(max(u, eps)) = max(log u, log eps); eps = 0 leaves log u alone."""
    return maximum(log_value, math.log(eps)) if eps > 0 else log_value


def asymmetric_elements(
    target: Any,
    y_pred: Any,
    *,
    gamma_pos: float,
    gamma_neg: float,
    clip: float,
    eps: float,
    from_logits: bool,
) -> Any:
    """t L+ + (1 - t) L- for every label (same shape as ``y_pred``)."""
    log_p, log_not_p, p, not_p = _log_probabilities(y_pred, from_logits)
    positive = -_floored(log_p, eps)
    if gamma_pos:
        positive = ops.exp(gamma_pos * log_not_p) * positive  # (1 - p)^gamma_pos
    if clip > 0:
        # 1 - p_m = min(1 - p + m, 1): exactly 1 (a zero loss) for p <= m
        log_not_pm = ops.log(minimum(not_p + clip, 1.0))
        p_m = maximum(p - clip, 0.0)
        weight = ops.power(maximum(p_m, _FLOOR), gamma_neg) if gamma_neg else None
    else:
        log_not_pm = log_not_p
        weight = ops.exp(gamma_neg * log_p) if gamma_neg else None  # p^gamma_neg
    negative = -_floored(log_not_pm, eps)
    if weight is not None:
        negative = weight * negative
    return target * positive + (1.0 - target) * negative


def asymmetric_loss(
    y_true: Any,
    y_pred: Any,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    reduction: str = "sum",
    from_logits: bool = True,
) -> Any:
    """Per-sample asymmetric loss, shape ``(B,)``; see the module docstring.

    Args:
        y_true: multi-hot (or soft) targets of ``y_pred``'s shape, or class ids
            (one positive label per sample, turned one-hot).
        y_pred: logits (``from_logits=True``) or sigmoid probabilities, labels last.
        gamma_pos, gamma_neg: focusing parameters of positives and negatives (>= 0).
        clip: probability margin m in [0, 1].
        eps: floor of the probabilities inside the logarithms, in [0, 1).
        reduction: "sum" or "mean" over the label axis (and any other non-batch axis).
        from_logits: whether ``y_pred`` holds logits.
    """
    target = one_hot_targets(
        y_true,
        tuple(y_pred.shape),
        plugin=PLUGIN,
        dtype=compute_dtype(y_pred),
        targets="multi-hot targets",
    )
    elements = asymmetric_elements(
        target,
        y_pred,
        gamma_pos=gamma_pos,
        gamma_neg=gamma_neg,
        clip=clip,
        eps=eps,
        from_logits=from_logits,
    )
    return reduce_trailing(elements, reduction)

"""NumPy helpers behind the properties the bi_tempered plugin claims (no Keras at import).

Written from the paper's definitions in float64, independently of ``loss.py``:
the tempered softmax is normalised by bisection on lambda (to ~1e-15), not by
the plugin's fixed-point / Newton iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.numerics import is_sparse_labels
from lossplug.properties import Example

#: floor of the targets in :func:`perfect` (a one-hot target is not reachable exactly)
PERFECT_FLOOR = 1e-6


def tempered_log(u: np.ndarray, t: float) -> np.ndarray:
    """log_t(u) = (u^(1-t) - 1) / (1 - t); log at t = 1.

    Computed as expm1((1 - t) log u) / (1 - t), accurate for t next to 1.
    """
    log_u = np.log(np.asarray(u, dtype=np.float64))
    if t == 1:
        return log_u
    return np.expm1((1.0 - t) * log_u) / (1.0 - t)


def tempered_exp(x: np.ndarray, t: float) -> np.ndarray:
    """exp_t(x) = [1 + (1 - t) x]_+^(1/(1-t)); exp at t = 1 (here t >= 1 and x <= 0).

    Computed as exp(log1p((1 - t) x) / (1 - t)), accurate for t next to 1.
    """
    x = np.asarray(x, dtype=np.float64)
    if t == 1:
        return np.exp(x)
    return np.exp(np.log1p((1.0 - t) * x) / (1.0 - t))


def tempered_softmax(logits: np.ndarray, t: float, iterations: int = 200) -> np.ndarray:
    """exp_t(a - lambda) with sum 1, lambda found by bisection (float64)."""
    a = np.asarray(logits, dtype=np.float64)
    if t == 1:
        z = a - a.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
    a0 = a - a.max(axis=-1, keepdims=True)
    low = np.zeros((*a0.shape[:-1], 1))
    # the root is at most -log_t(1 / C): sum_c exp_t(a0_c - l) <= C exp_t(-l)
    high = np.full_like(low, -tempered_log(np.array(1.0 / a0.shape[-1]), t))
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        above = tempered_exp(a0 - mid, t).sum(axis=-1, keepdims=True) > 1.0
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    return tempered_exp(a0 - 0.5 * (low + high), t)


def targets(example: Example) -> np.ndarray:
    """q = (1 - alpha) t + alpha / C, with class ids turned one-hot (float64)."""
    y_pred = np.asarray(example.outputs["y_pred"])
    y_true = np.asarray(example.inputs["y_true"])
    num_classes = y_pred.shape[-1]
    if is_sparse_labels(y_true, y_pred):
        ids = y_true.reshape(y_pred.shape[:-1]).astype(np.int64)
        t = np.eye(num_classes, dtype=np.float64)[ids]
    else:
        t = y_true.astype(np.float64)
    alpha = float(example.config.label_smoothing)
    return (1.0 - alpha) * t + alpha / num_classes


def bregman_terms(q: np.ndarray, y_hat: np.ndarray, t1: float) -> np.ndarray:
    """q (log_t1 q - log_t1 y) - (q^(2-t1) - y^(2-t1)) / (2 - t1), with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q_log_q = np.where(q > 0, q * tempered_log(np.maximum(q, 1e-300), t1), 0.0)
        q_log_y = np.where(q > 0, q * tempered_log(np.maximum(y_hat, 1e-300), t1), 0.0)
    return q_log_q - q_log_y - (q ** (2.0 - t1) - y_hat ** (2.0 - t1)) / (2.0 - t1)


def loss_reference(example: Example) -> np.ndarray:
    """The paper's loss per sample (float64, exact normalisation)."""
    cfg = example.config
    y_hat = tempered_softmax(example.outputs["y_pred"], float(cfg.t2))
    return bregman_terms(targets(example), y_hat, float(cfg.t1)).sum(axis=-1)


def softmax_cross_entropy(example: Example) -> np.ndarray:
    """-sum_c q_c log softmax(a)_c (the ReducesTo reference at t1 = t2 = 1, hard labels)."""
    a = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    z = a - a.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(targets(example) * log_p).sum(axis=-1)


def half_squared_error(example: Example) -> np.ndarray:
    """sum_c (q_c - y_hat_c)^2 / 2 with the exact tempered softmax (the loss at t1 = 0)."""
    y_hat = tempered_softmax(example.outputs["y_pred"], float(example.config.t2))
    return 0.5 * ((targets(example) - y_hat) ** 2).sum(axis=-1)


def upper_bound(example: Example) -> np.ndarray:
    """For t1 < 1: loss <= sum_c q_c^(2-t1) / ((1-t1)(2-t1)) + 1 / (2-t1) (1 / (1-t1), one-hot)."""
    t1 = float(example.config.t1)
    q = targets(example)
    return (q ** (2.0 - t1)).sum(axis=-1) / ((1.0 - t1) * (2.0 - t1)) + 1.0 / (2.0 - t1)


def perfect(example: Example) -> Example:
    """Logits log_t2(q') whose tempered softmax is q' = q floored at 1e-6 (renormalised).

    With label smoothing q' = q; a one-hot q is not reachable by a finite logit,
    so q' puts 1e-6 on the other classes, and the loss there is ~1e-6.
    """
    q = np.maximum(targets(example), PERFECT_FLOOR)
    q = q / q.sum(axis=-1, keepdims=True)
    logits = tempered_log(q, float(example.config.t2))
    dtype = np.asarray(example.outputs["y_pred"]).dtype
    return example.with_tensor("y_pred", logits.astype(dtype))


def check_matches_the_paper(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """The plugin equals :func:`loss_reference` (exact normalisation) to float32 accuracy."""
    got = np.asarray(loss_fn(example), dtype=np.float64)
    np.testing.assert_allclose(got, loss_reference(example), rtol=1e-4, atol=1e-5)


def check_bounded(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """For t1 < 1 the loss is bounded by :func:`upper_bound`, whatever the logits.

    Cross-entropy (t1 = 1) is unbounded; this bound is what makes the loss robust
    to outliers and mislabeled examples. The check also scales the logits by 1e3.
    """
    if float(example.config.t1) >= 1.0:
        return
    bound = upper_bound(example)
    y_pred = np.asarray(example.outputs["y_pred"])
    for scale in (1.0, 1e3):
        scaled = example.with_tensor(
            "y_pred", (y_pred.astype(np.float64) * scale).astype(y_pred.dtype)
        )
        loss = np.asarray(loss_fn(scaled), dtype=np.float64)
        assert np.all(loss <= bound * (1 + 1e-5) + 1e-5), (
            f"loss {loss} exceeds the bound {bound} of t1 = {example.config.t1} < 1 "
            f"(logits scaled by {scale})"
        )

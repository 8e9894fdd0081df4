"""NumPy helpers behind the properties the poly plugin claims (no Keras at import).

Written from the paper's formula (Leng et al. 2022, eq. 3), independently of
``loss.py``: p is the softmax (or sigmoid) of the logits, computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from lossplug.properties import Example
from lossplug.reference import dense_targets

_EPS = 1e-7  # keras.config.epsilon() default, for probabilities
#: a logit margin that makes softmax / sigmoid equal to the one-hot target to ~1e-22
CONFIDENT = 50.0


def targets(example: Example) -> np.ndarray:
    """Dense float64 targets of y_pred's shape, label-smoothed as the plugin does."""
    cfg = example.config
    y_pred = np.asarray(example.outputs["y_pred"])
    y_true = np.asarray(example.inputs["y_true"])
    t = dense_targets(y_true, y_pred.shape, binary=cfg.mode == "binary")
    alpha = float(cfg.label_smoothing)
    spread = 2 if cfg.mode == "binary" else y_pred.shape[-1]
    return (1.0 - alpha) * t + alpha / spread


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def probabilities(example: Example) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log p, log(1 - p), p, 1 - p) in float64, as the paper defines p for the mode.

    Categorical: p = softmax(z), or the given probabilities clipped to [eps, 1],
    renormalised and clipped to [eps, 1 - eps] (Keras' convention). Binary:
    p = sigmoid(z), or p and 1 - p clipped separately to [eps, 1 - eps].
    """
    cfg = example.config
    y = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    if cfg.mode == "categorical":
        if cfg.from_logits:
            log_p = _log_softmax(y)
        else:
            p = np.clip(y, _EPS, 1.0)
            p = p / p.sum(axis=-1, keepdims=True)
            log_p = np.log(np.clip(p, _EPS, 1.0 - _EPS))
        not_p = -np.expm1(log_p)
        return log_p, np.log(np.maximum(not_p, 1e-300)), np.exp(log_p), not_p
    if cfg.from_logits:
        log_p, log_not_p = -np.logaddexp(0.0, -y), -np.logaddexp(0.0, y)
        return log_p, log_not_p, np.exp(log_p), np.exp(log_not_p)
    p, not_p = np.clip(y, _EPS, 1.0 - _EPS), np.clip(1.0 - y, _EPS, 1.0 - _EPS)
    return np.log(p), np.log(not_p), p, not_p


def poly1_reference(example: Example, epsilon: float | None = None) -> np.ndarray:
    """The Poly-1 loss per sample: CE + epsilon (1 - p_t), from the paper's formula."""
    cfg = example.config
    eps = float(cfg.epsilon if epsilon is None else epsilon)
    t = targets(example)
    log_p, log_not_p, p, not_p = probabilities(example)
    if cfg.mode == "categorical":
        return np.sum(t * (-log_p + eps * not_p), axis=-1)
    positive = -log_p + eps * not_p
    negative = -log_not_p + eps * p
    return np.mean(t * positive + (1.0 - t) * negative, axis=-1)


def cross_entropy_reference(example: Example) -> np.ndarray:
    """Cross-entropy against the (smoothed) targets: categorical, or binary averaged."""
    return poly1_reference(example, epsilon=0.0)


def one_minus_pt(example: Example) -> np.ndarray:
    """The paper's 1 - p_t per sample: 1 - sum_c q_c p_c, or the mean of t(1-p) + (1-t)p."""
    t = targets(example)
    _, _, p, not_p = probabilities(example)
    if example.config.mode == "categorical":
        return np.sum(t * not_p, axis=-1)
    return np.mean(t * not_p + (1.0 - t) * p, axis=-1)


def perfect(example: Example) -> Example:
    """A perfect prediction: the one-hot (0/1) targets as probabilities, or confident logits."""
    cfg = example.config
    t = targets(example.replace(config=attrs.evolve(cfg, label_smoothing=0.0)))
    if cfg.from_logits:
        if cfg.mode == "categorical":
            y_pred = CONFIDENT * t
        else:
            y_pred = CONFIDENT * (2.0 * t - 1.0)
    else:
        y_pred = t
    dtype = np.asarray(example.outputs["y_pred"]).dtype
    return example.with_tensor("y_pred", y_pred.astype(dtype))


def check_first_coefficient(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """Poly-1 - cross-entropy = epsilon * (1 - p_t): only the first polynomial term moves.

    The plugin's own loss at epsilon and at epsilon = 0 (its cross-entropy) differ by
    epsilon times the NumPy 1 - p_t of the paper.
    """
    eps = float(example.config.epsilon)
    poly = np.asarray(loss_fn(example), dtype=np.float64)
    ce = np.asarray(
        loss_fn(example.replace(config=attrs.evolve(example.config, epsilon=0.0))),
        dtype=np.float64,
    )
    expected = eps * one_minus_pt(example)
    tol = 1e-3 * np.abs(expected) + 2e-5 * (1.0 + np.abs(ce))
    bad = np.abs((poly - ce) - expected) > tol
    assert not np.any(bad), (
        f"loss(epsilon={eps}) - loss(epsilon=0) = {poly - ce}, but epsilon * (1 - p_t) = "
        f"{expected} (loss {poly}, cross-entropy {ce})"
    )

"""NumPy helpers behind the properties the asymmetric plugin claims (no Keras at import).

Written from the paper's equations (Ridnik et al. 2021, eqs. 4-8), in float64,
independently of ``loss.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from lossplug.numerics import is_sparse_labels
from lossplug.properties import Example

_EPS = 1e-7  # keras.config.epsilon() default, for probabilities
#: a logit margin that makes sigmoid equal to the 0/1 target to ~1e-22
CONFIDENT = 50.0


def targets(example: Example) -> np.ndarray:
    """Dense float64 targets of y_pred's shape (class ids become one-hot rows)."""
    y_pred = np.asarray(example.outputs["y_pred"])
    y_true = np.asarray(example.inputs["y_true"])
    if is_sparse_labels(y_true, y_pred):
        ids = y_true.reshape(y_pred.shape[:-1]).astype(np.int64)
        return np.eye(y_pred.shape[-1], dtype=np.float64)[ids]
    return y_true.astype(np.float64)


def probabilities(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(p, 1 - p) in float64: sigmoid of logits, or clipped probabilities."""
    y = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    if example.config.from_logits:
        return 0.5 * (1.0 + np.tanh(0.5 * y)), 0.5 * (1.0 - np.tanh(0.5 * y))
    return np.clip(y, _EPS, 1.0 - _EPS), np.clip(1.0 - y, _EPS, 1.0 - _EPS)


def _log(u: np.ndarray, floor: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(u, floor)) if floor > 0 else np.log(u)


def _reduce(elements: np.ndarray, reduction: str) -> np.ndarray:
    axes = tuple(range(1, elements.ndim))
    return elements.sum(axis=axes) if reduction == "sum" else elements.mean(axis=axes)


def asl_reference(example: Example, **overrides: Any) -> np.ndarray:
    """ASL per sample from the paper: t L+ + (1 - t) L-, summed (or averaged) over labels.

    ``overrides`` replace Config values (``gamma_pos``, ``gamma_neg``, ``clip``, ``eps``).
    Logarithms of the logit case are taken as log-sigmoids (exact in float64).
    """
    cfg = attrs.evolve(example.config, **overrides)
    t = targets(example)
    p, not_p = probabilities(example)
    if cfg.from_logits:
        z = np.asarray(example.outputs["y_pred"], dtype=np.float64)
        log_p, log_not_p = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
    else:
        log_p, log_not_p = np.log(p), np.log(not_p)
    floor = float(cfg.eps)
    if floor > 0:
        log_p, log_not_p = np.maximum(log_p, np.log(floor)), np.maximum(log_not_p, np.log(floor))
    positive = not_p ** float(cfg.gamma_pos) * -log_p
    m = float(cfg.clip)
    p_m = np.maximum(p - m, 0.0)
    log_not_pm = _log(np.minimum(not_p + m, 1.0), floor) if m > 0 else log_not_p
    negative = p_m ** float(cfg.gamma_neg) * -log_not_pm
    return _reduce(t * positive + (1.0 - t) * negative, cfg.reduction)


def bce_reference(example: Example) -> np.ndarray:
    """Binary cross-entropy, summed (or averaged, by ``reduction``) over the labels."""
    t = targets(example)
    p, not_p = probabilities(example)
    if example.config.from_logits:
        z = np.asarray(example.outputs["y_pred"], dtype=np.float64)
        bce = t * np.logaddexp(0.0, -z) + (1.0 - t) * np.logaddexp(0.0, z)
    else:
        bce = -(t * np.log(p) + (1.0 - t) * np.log(not_p))
    return _reduce(bce, example.config.reduction)


def focal_reference(example: Example, gamma: float | None = None) -> np.ndarray:
    """Binary focal loss without alpha (Lin et al. 2017): (1 - p_t)^gamma * bce, reduced."""
    g = float(example.config.gamma_pos if gamma is None else gamma)
    t = targets(example)
    p, not_p = probabilities(example)
    if example.config.from_logits:
        z = np.asarray(example.outputs["y_pred"], dtype=np.float64)
        bce = t * np.logaddexp(0.0, -z) + (1.0 - t) * np.logaddexp(0.0, z)
    else:
        bce = -(t * np.log(p) + (1.0 - t) * np.log(not_p))
    one_minus_pt = t * not_p + (1.0 - t) * p
    return _reduce(one_minus_pt**g * bce, example.config.reduction)


def focal_gamma2_reference(example: Example) -> np.ndarray:
    """:func:`focal_reference` at gamma = 2 (the claim's ``at``)."""
    return focal_reference(example, gamma=2.0)


def check_matches_the_paper(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """The plugin equals :func:`asl_reference` (the paper's equations) at the example's config."""
    got = np.asarray(loss_fn(example), dtype=np.float64)
    np.testing.assert_allclose(got, asl_reference(example), rtol=1e-4, atol=1e-5)


def perfect(example: Example) -> Example:
    """A perfect prediction: the 0/1 targets as probabilities, or logits of +-50."""
    t = np.round(targets(example))
    y_pred = CONFIDENT * (2.0 * t - 1.0) if example.config.from_logits else t
    dtype = np.asarray(example.outputs["y_pred"]).dtype
    return example.with_tensor("y_pred", y_pred.astype(dtype))


def check_focal_at_equal_gammas(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """With gamma_neg = gamma_pos = gamma, clip = 0 and eps = 0, ASL is the focal loss."""
    cfg = attrs.evolve(example.config, gamma_neg=example.config.gamma_pos, clip=0.0, eps=0.0)
    symmetric = example.replace(config=cfg)
    got = np.asarray(loss_fn(symmetric), dtype=np.float64)
    expected = focal_reference(symmetric)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def check_clip_discards_easy_negatives(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """A negative label with p <= clip contributes exactly 0 (hard thresholding, eq. 6).

    Every target is set to 0 and every probability to at most clip / 2: the loss
    must be exactly 0, whatever gamma_neg and eps.
    """
    m = float(example.config.clip)
    if m < 1e-5:
        return  # no margin to discard with (p is clipped to >= 1e-7 anyway)
    y_pred = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    if example.config.from_logits:
        limit = np.log(0.5 * m) - np.log1p(-0.5 * m)  # logit of m / 2
        easy = np.minimum(y_pred, limit)
    else:
        easy = np.clip(y_pred, 0.0, 0.5 * m)
    zeros = np.zeros(np.shape(y_pred), dtype=np.float32)  # every label negative
    dtype = np.asarray(example.outputs["y_pred"]).dtype
    easy_example = example.with_tensor("y_pred", easy.astype(dtype))
    easy_example = easy_example.with_tensor("y_true", zeros)
    loss = np.asarray(loss_fn(easy_example), dtype=np.float64)
    assert np.all(loss == 0.0), (
        f"every label negative with p <= clip / 2 = {0.5 * m}, but the loss is {loss}"
    )

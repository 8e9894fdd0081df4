"""Helpers of the tests of lossplug.pairs and lossplug.mining: NumPy references, gradients.

Gradients and compiled functions come from lossplug.testing (the backend's autodiff and
compilers: GradientTape / tf.function, jax.grad / jax.jit, torch autograd /
torch.compile), so these tests also run with KERAS_BACKEND=jax or torch. As there,
float64 inputs stay float64 on JAX (64-bit mode while the helpers run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.testing import compiled, value_and_gradients

__all__ = [
    "brute_force_triplets",
    "compiled",
    "np_masked_logsumexp",
    "np_pairwise",
    "value_and_gradient",
]


def value_and_gradient(fn: Callable[[Any], Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fn(x), d sum(fn(x)) / dx) as NumPy arrays; x is a NumPy array of any float dtype."""
    value, grads = value_and_gradients(lambda x: fn(x), {"x": x})  # fn names its argument
    return value, grads["x"]


def np_pairwise(x: np.ndarray, y: np.ndarray | None, metric: str, eps: float) -> np.ndarray:
    """Distances between the rows of x and y in float64 from differences (the reference)."""
    a = np.asarray(x, dtype=np.float64)
    b = a if y is None else np.asarray(y, dtype=np.float64)
    if metric == "cosine":
        ua = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), eps)
        ub = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), eps)
        d = np.clip(1.0 - ua @ ub.T, 0.0, 2.0)
    else:
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        if metric == "euclidean":
            d = np.sqrt(d)
    if y is None:
        np.fill_diagonal(d, 0.0)
    return d


def np_masked_logsumexp(values: np.ndarray, mask: np.ndarray, include_zero: bool) -> np.ndarray:
    """log sum_{mask} exp(values) per row in float64 (0 for empty rows; + exp(0) if asked)."""
    out = []
    for row, keep in zip(np.asarray(values, np.float64), np.asarray(mask, bool), strict=True):
        terms = list(row[keep]) + ([0.0] if include_zero else [])
        out.append(np.logaddexp.reduce(terms) if terms else 0.0)
    return np.array(out)


def brute_force_triplets(
    d: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    margin: float,
    strategy: str,
    average: str = "valid",
    weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """The mined loss by enumerating every (anchor, positive, negative): O(B M^2).

    Returns (loss, active fraction)."""
    rows = d.shape[0]
    w = np.ones(rows) if weights is None else np.asarray(weights, dtype=np.float64)
    scored = []  # (anchor, hinge)
    for a in range(rows):
        pos = np.flatnonzero(positive[a])
        neg = np.flatnonzero(negative[a])
        if strategy == "batch_all":
            scored += [(a, max(0.0, margin + d[a, p] - d[a, q])) for p in pos for q in neg]
        elif strategy == "batch_hard":
            if len(pos) and len(neg):
                hardest = margin + max(d[a, p] for p in pos) - min(d[a, q] for q in neg)
                scored.append((a, max(0.0, hardest)))
        else:  # semi_hard
            if not len(neg):
                continue
            for p in pos:
                farther = [d[a, q] for q in neg if d[a, q] > d[a, p]]
                chosen = min(farther) if farther else max(d[a, q] for q in neg)
                scored.append((a, max(0.0, margin + d[a, p] - chosen)))
    counted = [(a, h) for a, h in scored if average == "valid" or h > 0]
    total = sum(w[a] * h for a, h in scored)
    denominator = sum(w[a] for a, _ in counted)
    loss = total / denominator if denominator > 0 else 0.0
    active = sum(1 for _, h in scored if h > 0)
    return loss, (active / len(scored) if scored else 0.0)

"""NumPy helpers behind the properties the proxy_nca plugin claims (no Keras at import).

Written from the paper's formula with explicit squared distances between the
normalised vectors, in float64, independently of ``loss.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.numerics import L2_EPSILON
from lossplug.properties import Example

STATE = "proxies"


def normalise(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, eps) row by row (lossplug.numerics.l2_normalize's rule)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), L2_EPSILON)


def squared_distances(example: Example) -> np.ndarray:
    """||x^_i - p^_c||^2 for every sample and proxy, (B, num_classes)."""
    x = normalise(example.outputs["embeddings"])
    p = normalise(example.state[STATE])
    return ((x[:, None, :] - p[None, :, :]) ** 2).sum(axis=-1)


def labels(example: Example) -> np.ndarray:
    return np.asarray(example.inputs["y_true"]).reshape(-1).astype(np.int64)


def proxy_nca_reference(example: Example) -> np.ndarray:
    """The paper's NCA over proxies, -log(exp(-s d_y) / sum_{c in Z} exp(-s d_c)), per sample.

    Z is every proxy (``denominator="all"``) or every proxy but the sample's own
    (``"negatives"``, the paper's eq. 6).
    """
    cfg = example.config
    logits = -float(cfg.scale) * squared_distances(example)
    y = labels(example)
    rows = np.arange(len(y))
    if cfg.denominator == "negatives":
        logits_z = logits.copy()
        logits_z[rows, y] = -np.inf
    else:
        logits_z = logits
    top = logits_z.max(axis=-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits_z - top).sum(axis=-1))
    return lse - logits[rows, y]


def bounds(example: Example) -> tuple[float, float]:
    """The range of the loss: the cosines' differences are in [-2, 2].

    all:        [log(1 + (C-1) e^(-4 s)), log(1 + (C-1) e^(4 s))]
    negatives:  [log(C-1) - 4 s,          log(C-1) + 4 s]
    """
    cfg = example.config
    c, s = int(cfg.num_classes), float(cfg.scale)
    if cfg.denominator == "negatives":
        return np.log(c - 1) - 4 * s, np.log(c - 1) + 4 * s
    return float(np.logaddexp(0.0, np.log(c - 1) - 4 * s)), float(
        np.logaddexp(0.0, np.log(c - 1) + 4 * s)
    )


def check_bounded(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """The loss lies in :func:`bounds`, and reaches the lower end at the ideal layout.

    Ideal for class k: its proxy at v, every other proxy at -v, the sample at v.
    """
    low, high = bounds(example)
    loss = np.asarray(loss_fn(example), dtype=np.float64)
    tol = 1e-4 * (1 + abs(low) + abs(high))
    assert np.all(loss >= low - tol) and np.all(loss <= high + tol), (
        f"loss {loss} outside [{low}, {high}]"
    )
    proxies = np.asarray(example.state[STATE], dtype=np.float64)
    y = labels(example)
    k = int(y[0])
    v = proxies[k] if np.linalg.norm(proxies[k]) > 1e-3 else np.eye(proxies.shape[1])[0]
    ideal = np.tile(-v, (proxies.shape[0], 1))
    ideal[k] = v
    x = np.tile(v, (len(y), 1)).astype(np.asarray(example.outputs["embeddings"]).dtype)
    best = example.replace(state={**example.state, STATE: ideal.astype(np.float32)})
    best = best.with_tensor("embeddings", x).with_tensor(
        "y_true", np.full_like(np.asarray(example.inputs["y_true"]), k)
    )
    at_best = np.asarray(loss_fn(best), dtype=np.float64)
    np.testing.assert_allclose(at_best, low, rtol=1e-4, atol=tol)

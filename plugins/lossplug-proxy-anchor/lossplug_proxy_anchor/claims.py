"""NumPy helpers behind the properties the proxy_anchor plugin claims (no Keras at import).

Written from the paper's eq. (4) with explicit loops over the proxies, in float64,
independently of ``loss.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from lossplug.numerics import L2_EPSILON
from lossplug.properties import Example

STATE = "proxies"


def normalise(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, eps) row by row (lossplug.numerics.l2_normalize's rule)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), L2_EPSILON)


def _log1p_sum_exp(values: np.ndarray) -> float:
    """log(1 + sum exp(values)), stable (0 for no values)."""
    if values.size == 0:
        return 0.0
    return float(np.logaddexp.reduce(np.concatenate([[0.0], values])))


def proxy_anchor_reference(example: Example, weights: np.ndarray | None = None) -> float:
    """Kim et al. eq. (4) for the example's embeddings, labels and proxies."""
    cfg = example.config
    alpha, delta = float(cfg.alpha), float(cfg.delta)
    x = normalise(example.outputs["embeddings"])
    proxies = normalise(example.state[STATE])
    y = np.asarray(example.inputs["y_true"]).reshape(-1).astype(np.int64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    cos = np.clip(x @ proxies.T, -1.0, 1.0)
    pull, push, with_positives = 0.0, 0.0, 0
    for c in range(proxies.shape[0]):
        pos = (y == c) & (w > 0)
        neg = (y != c) & (w > 0)
        if pos.any():
            with_positives += 1
            pull += _log1p_sum_exp(-alpha * (cos[pos, c] - delta) + np.log(w[pos]))
        push += _log1p_sum_exp(alpha * (cos[neg, c] + delta) + np.log(w[neg]))
    return (pull / with_positives if with_positives else 0.0) + push / proxies.shape[0]


def upper_bound(example: Example) -> float:
    """loss <= 2 log(1 + B e^(alpha (1 + delta))) (every cosine in [-1, 1])."""
    cfg = example.config
    b = len(np.asarray(example.inputs["y_true"]).reshape(-1))
    return 2.0 * float(np.logaddexp(0.0, np.log(b) + float(cfg.alpha) * (1 + float(cfg.delta))))


def check_bounded(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """0 <= loss <= :func:`upper_bound`, and ~0 at an ideal two-class layout.

    Ideal: proxies v and -v, every sample on its own proxy: each pull term is
    log(1 + n e^(-alpha (1 - delta))) and each push term log(1 + n e^(-alpha (1 - delta))).
    """
    loss = float(np.asarray(loss_fn(example), dtype=np.float64))
    bound = upper_bound(example)
    assert 0.0 <= loss <= bound * (1 + 1e-5), f"loss {loss} outside [0, {bound}]"
    cfg = example.config
    if cfg.num_classes != 2:
        return
    proxies = np.asarray(example.state[STATE], dtype=np.float64)
    v = proxies[0] if np.linalg.norm(proxies[0]) > 1e-3 else np.eye(proxies.shape[1])[0]
    ideal = np.stack([v, -v])
    y = np.asarray(example.inputs["y_true"]).reshape(-1).astype(np.int64)
    x = ideal[y].astype(np.asarray(example.outputs["embeddings"]).dtype)
    best = example.replace(state={**example.state, STATE: ideal.astype(np.float32)})
    at_best = float(np.asarray(loss_fn(best.with_tensor("embeddings", x)), dtype=np.float64))
    tiny = np.log1p(len(y) * np.exp(-float(cfg.alpha) * (1.0 - float(cfg.delta))))
    assert at_best <= 2 * tiny + 1e-5, f"loss {at_best} at the ideal layout, expected <= {2 * tiny}"


def check_matches_the_paper(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """The plugin equals :func:`proxy_anchor_reference` on the example's proxies."""
    got = float(np.asarray(loss_fn(example), dtype=np.float64))
    expected = proxy_anchor_reference(example)
    alpha = float(example.config.alpha)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-5 * (1 + alpha))


DELTAS = (0.0, 0.05, 0.1, 0.3, 0.6, 1.0)


def check_monotone_in_delta(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """For the same proxies, the loss does not decrease as the margin delta grows.

    (Both terms grow with delta. A Monotone claim would not do: the kit draws new
    state for every config, and the loss depends on the proxies.)
    """
    values = [
        float(np.asarray(loss_fn(example.replace(config=attrs.evolve(example.config, delta=d)))))
        for d in DELTAS
    ]
    for i in range(1, len(DELTAS)):
        (d1, v1), (d2, v2) = (DELTAS[i - 1], values[i - 1]), (DELTAS[i], values[i])
        assert v2 >= v1 - 1e-5 * (1 + abs(v1)), (
            f"loss {v1} at delta={d1} but {v2} at delta={d2} (same proxies)"
        )

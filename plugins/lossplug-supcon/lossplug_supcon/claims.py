"""NumPy helpers behind the properties ``supcon`` claims (no Keras import at import).

:func:`reference` is eq. 2 of Khosla et al. (2020) written with a loop over anchors;
:func:`check_two_views_is_ntxent` checks that with two views per sample and a label of
its own for each sample, the loss is SimCLR's NT-Xent (times tau / tau_b).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.properties import Example


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows divided by max(norm, 2**-10), as lossplug.numerics.l2_normalize."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 2.0**-10)


def _logsumexp(values: np.ndarray) -> float:
    peak = float(np.max(values))
    return peak + float(np.log(np.sum(np.exp(values - peak))))


def reference(example: Example) -> float:
    """The batch loss: mean over anchors i of -(tau / tau_b) mean_{p in P(i)} log softmax_p,
    the softmax over A(i) = every other row; 0 for an anchor without positives."""
    z = _unit(np.asarray(example.outputs["embeddings"], dtype=np.float64))
    labels = np.asarray(example.inputs["y_true"]).reshape(-1)
    tau, base = float(example.config.temperature), float(example.config.base_temperature)
    logits = np.clip(z @ z.T, -1.0, 1.0) / tau
    losses = []
    for i in range(len(z)):
        others = np.arange(len(z)) != i
        positives = others & (labels == labels[i])
        if not positives.any():
            losses.append(0.0)
            continue
        log_prob = logits[i, positives] - _logsumexp(logits[i, others])
        losses.append(-(tau / base) * float(np.mean(log_prob)))
    return float(np.mean(losses)) if losses else 0.0


def ntxent(view_a: np.ndarray, view_b: np.ndarray, temperature: float) -> float:
    """SimCLR's NT-Xent (eq. 1 of Chen et al. 2020), the mean over the 2N rows."""
    z = _unit(np.concatenate([view_a, view_b]).astype(np.float64))
    n = len(view_a)
    logits = np.clip(z @ z.T, -1.0, 1.0) / temperature
    losses = []
    for i in range(2 * n):
        others = np.arange(2 * n) != i
        partner = (i + n) % (2 * n)
        losses.append(_logsumexp(logits[i, others]) - logits[i, partner])
    return float(np.mean(losses))


def check_two_views_is_ntxent(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """Rows [E; E'] (E the example's embeddings, E' a perturbed copy) with labels
    [0..B-1, 0..B-1]: each anchor's only positive is its other view, and SupCon is
    (tau / tau_b) times NT-Xent."""
    embeddings = np.asarray(example.outputs["embeddings"])
    rng = np.random.default_rng(len(embeddings))
    other = embeddings * (1.0 + 0.3 * rng.standard_normal(embeddings.shape))
    rows = np.concatenate([embeddings, other.astype(embeddings.dtype)])
    labels = np.asarray(example.inputs["y_true"])
    ids = np.tile(np.arange(len(embeddings)), 2).astype(labels.dtype)
    paired = example.with_tensor("embeddings", rows).with_tensor("y_true", ids)
    tau, base = float(example.config.temperature), float(example.config.base_temperature)
    expected = (tau / base) * ntxent(embeddings, other, tau)
    got = float(np.asarray(loss_fn(paired)))
    assert abs(got - expected) <= 1e-4 * abs(expected) + 1e-5, (
        f"two views with a label each: supcon gives {got!r}, (tau / tau_b) NT-Xent {expected!r}"
    )

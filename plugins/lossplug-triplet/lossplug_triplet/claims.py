"""NumPy helpers behind the claims of ``triplet`` (no TensorFlow import here).

- :func:`perfect_example`: embeddings where every triplet's hinge is zero.
- :func:`check_cosine_scale_invariance`: with the cosine metric, multiplying
  any embedding by a positive factor leaves the loss unchanged. The spec claims
  it with ``at={"metric": "cosine"}``, so the kit passes cosine configs; called
  directly with another metric, the check switches the example to cosine itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from lossplug.properties import Example

#: rows with a norm below this are left alone when rescaling (they are
#: normalised with the epsilon floor, where scale invariance ends)
_TINY_NORM = 1e-3


def _class_index(labels: Any) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels).reshape(-1)
    _, index = np.unique(labels, return_inverse=True)
    return index.reshape(-1), int(index.max()) + 1 if index.size else 0


def _cosine_directions(count: int, dim: int) -> tuple[np.ndarray, float]:
    """``count`` unit vectors in ``dim`` dimensions, spread apart, and their smallest
    pairwise cosine distance (1 - cos)."""
    if count <= 1:
        directions = np.zeros((max(count, 1), dim))
        directions[:, 0] = 1.0
        return directions, 2.0
    if dim >= count - 1 and count >= 3:
        # regular simplex: pairwise cosine -1/(count-1)
        centred = np.eye(count) - 1.0 / count
        _, _, basis = np.linalg.svd(centred)
        coords = centred @ basis[: count - 1].T
        coords /= np.linalg.norm(coords, axis=1, keepdims=True)
        directions = np.zeros((count, dim))
        directions[:, : count - 1] = coords
        return directions, 1.0 + 1.0 / (count - 1)
    if dim >= 2:
        angles = 2.0 * math.pi * np.arange(count) / count
        directions = np.zeros((count, dim))
        directions[:, 0], directions[:, 1] = np.cos(angles), np.sin(angles)
        return directions, 1.0 - math.cos(2.0 * math.pi / count)
    directions = np.ones((count, 1))
    directions[1::2] = -1.0
    return directions, 2.0 if count == 2 else 0.0


def perfect_example(example: Example) -> Example:
    """Embeddings where every negative is farther than every positive by more than the margin.

    Explicit mode: positive = anchor and the negative moved away (Euclidean:
    by 2 (m + 1) along the first axis; cosine: negative = -anchor, distance 2).
    Mining mode: every sample of class k sits on the class point (Euclidean:
    2 (m + 1) k on the first axis; cosine: the k-th of well-spread unit
    directions). With the cosine metric and more classes than the dimension
    allows to separate by the margin, no zero-loss arrangement exists; the
    margin is then lowered to half the best achievable separation.
    """
    config = example.config
    margin = float(config.margin)
    if config.mode == "explicit":
        anchor = np.array(example.outputs["anchor"], dtype=np.float64)
        dtype = np.asarray(example.outputs["anchor"]).dtype
        if config.metric == "cosine":
            small = np.linalg.norm(anchor, axis=1) < _TINY_NORM
            anchor[small] = 0.0
            anchor[small, 0] = 1.0
            negative = -anchor
        else:
            negative = anchor.copy()
            negative[:, 0] += 2.0 * (margin + 1.0)
        outputs = {
            **example.outputs,
            "anchor": anchor.astype(dtype),
            "positive": anchor.astype(dtype),
            "negative": negative.astype(dtype),
        }
        return example.replace(outputs=outputs)

    embeddings = np.asarray(example.outputs["embeddings"])
    index, count = _class_index(example.inputs["y_true"])
    dim = embeddings.shape[1]
    if config.metric == "cosine":
        directions, separation = _cosine_directions(count, dim)
        if count and separation <= margin * 1.01:
            config = attrs.evolve(config, margin=separation / 2.0)
        points = directions[index] if count else np.zeros_like(embeddings)
    else:
        points = np.zeros(embeddings.shape)
        points[:, 0] = 2.0 * (margin + 1.0) * index
    return example.replace(
        outputs={**example.outputs, "embeddings": points.astype(embeddings.dtype)}, config=config
    )


def _embedding_tensors(config: Any) -> tuple[str, ...]:
    return ("anchor", "positive", "negative") if config.mode == "explicit" else ("embeddings",)


def check_cosine_scale_invariance(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """With metric='cosine', rescaling embeddings row by row leaves the loss unchanged.

    Powers of two (exact in floating point) are always checked; other factors
    in [0.1, 10] too when the loss is continuous in the distances (not
    semi-hard mining and not ``average='active'``, whose selections can flip
    on a rounding-level tie).
    """
    config = example.config
    margin = config.margin if config.margin < 2.0 else 1.0
    base = example.replace(config=attrs.evolve(config, metric="cosine", margin=margin))
    reference = np.asarray(loss_fn(base), dtype=np.float64)
    rng = np.random.default_rng(12345)
    continuous = config.mode == "explicit" or (
        config.mining != "semi_hard" and config.average == "valid"
    )
    factor_sets = [2.0 ** rng.integers(-3, 4, size=64)]
    if continuous:
        factor_sets.append(np.exp(rng.uniform(math.log(0.1), math.log(10.0), size=64)))
    for factors in factor_sets:
        scaled = base
        for name in _embedding_tensors(config):
            values = np.asarray(base.tensor(name))
            rows = values.shape[0]
            row_factors = np.resize(factors, rows).astype(np.float64)
            norms = np.linalg.norm(values.astype(np.float64), axis=1)
            row_factors[norms < _TINY_NORM] = 1.0
            # multiplying in the tensor's own dtype keeps powers of two exact
            scaled = scaled.with_tensor(name, values * row_factors[:, None].astype(values.dtype))
        got = np.asarray(loss_fn(scaled), dtype=np.float64)
        np.testing.assert_allclose(
            got,
            reference,
            rtol=1e-3,
            atol=1e-4,
            err_msg="triplet with metric='cosine' changed when the embeddings were rescaled",
        )

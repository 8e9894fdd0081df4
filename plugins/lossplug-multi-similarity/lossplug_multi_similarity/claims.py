"""NumPy helpers behind the claims of ``multi_similarity`` (no Keras import here)."""

from __future__ import annotations

import math

import attrs
import numpy as np
from lossplug.properties import Example


def _directions(count: int, dim: int) -> np.ndarray:
    """``count`` unit vectors in ``dim`` >= 2 dimensions: one-hot if they fit, else a circle."""
    if dim >= count:
        return np.eye(count, dim)
    angles = 2.0 * math.pi * np.arange(count) / count
    directions = np.zeros((count, dim))
    directions[:, 0], directions[:, 1] = np.cos(angles), np.sin(angles)
    return directions


def perfect(example: Example) -> Example:
    """Embeddings the miner keeps no pair of (so the mined loss is exactly 0).

    Every sample points in its class's direction (positives: similarity 1) and
    different classes' directions have similarity at most 1 - epsilon (epsilon is
    lowered to half the achievable gap when the dimension cannot do better). In one
    dimension only two directions exist: classes are merged by parity of their index.
    """
    embeddings = np.asarray(example.outputs["embeddings"])
    labels = np.asarray(example.inputs["y_true"])
    _, index = np.unique(labels.reshape(-1), return_inverse=True)
    index = index.reshape(-1)
    dim = embeddings.shape[1]
    if dim == 1:
        index = index % 2
        example = example.with_tensor("y_true", index.reshape(labels.shape).astype(labels.dtype))
        directions = np.array([[1.0], [-1.0]])
    else:
        directions = _directions(int(index.max()) + 1, dim)
    config = example.config
    if len(directions) > 1:
        sims = directions @ directions.T
        highest = float(np.max(sims[~np.eye(len(directions), dtype=bool)]))
        if highest > 1.0 - config.epsilon:
            config = attrs.evolve(config, epsilon=max(0.0, (1.0 - highest) / 2.0))
    points = directions[index] * 2.0
    return example.with_tensor("embeddings", points.astype(embeddings.dtype)).replace(config=config)

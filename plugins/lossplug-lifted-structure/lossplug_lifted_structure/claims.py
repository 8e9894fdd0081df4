"""NumPy helpers behind the claims of ``lifted_structure`` (no Keras import here)."""

from __future__ import annotations

import math

import numpy as np
from lossplug.properties import Example


def perfect(example: Example) -> Example:
    """Euclidean embeddings with zero loss: each class at one point of a line, consecutive
    classes s = margin + log(2 B) + 1 apart. Then D_ij = 0 for positives and every
    exp(margin - D) <= exp(-log(2 B) - 1), so J_ij <= -1 < 0."""
    embeddings = np.asarray(example.outputs["embeddings"])
    labels = np.asarray(example.inputs["y_true"]).reshape(-1)
    _, index = np.unique(labels, return_inverse=True)
    spacing = example.config.margin + math.log(2.0 * max(len(labels), 1)) + 1.0
    points = np.zeros(embeddings.shape, dtype=np.float64)
    points[:, 0] = spacing * index.reshape(-1)
    return example.with_tensor("embeddings", points.astype(embeddings.dtype))

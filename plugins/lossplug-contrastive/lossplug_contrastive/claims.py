"""NumPy helpers behind the claims of ``contrastive`` (no Keras import here)."""

from __future__ import annotations

import numpy as np
from lossplug.properties import Example


def perfect(example: Example) -> Example:
    """Euclidean embeddings with zero loss: every sample at its class's point, the points of
    different classes farther apart than ``neg_margin`` (positives coincide: d = 0 <= m_pos)."""
    embeddings = np.asarray(example.outputs["embeddings"])
    labels = np.asarray(example.inputs["y_true"]).reshape(-1)
    _, index = np.unique(labels, return_inverse=True)
    spacing = 2.0 * (example.config.neg_margin + 1.0)
    points = np.zeros(embeddings.shape, dtype=np.float64)
    points[:, 0] = spacing * index.reshape(-1)
    return example.with_tensor("embeddings", points.astype(embeddings.dtype))

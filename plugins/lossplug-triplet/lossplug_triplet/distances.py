"""Distances for the triplet loss, with finite gradients everywhere.

Three metrics, all distances (0 for identical vectors, larger = farther):

- ``euclidean``:          d(x, y) = ||x - y||
- ``squared_euclidean``:  d(x, y) = ||x - y||^2
- ``cosine``:             d(x, y) = 1 - <x, y> / (||x|| ||y||), in [0, 2]

The square root of ``euclidean`` has an infinite derivative at 0; it is taken
with the "double where" so that coincident points give exactly 0 with a zero
(not NaN) gradient. Pairwise (B x B) Euclidean distances come from the Gram
matrix, ||x||^2 - 2 <x, y> + ||y||^2, after centring the batch (distances are
translation invariant; centring reduces cancellation); their absolute error
is about machine epsilon times the squared norm of the embeddings.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

METRICS = ("euclidean", "squared_euclidean", "cosine")

#: squared norms below this are treated as zero when normalising (cosine)
NORM_EPSILON = 1e-12
#: squared distances at or below this give a Euclidean distance of exactly 0
SQRT_FLOOR = 1e-12


def compute_dtype(x: Any) -> str:
    """float64 stays float64; everything else (float16, bfloat16, float32) computes in float32."""
    return "float64" if keras.backend.standardize_dtype(x.dtype) == "float64" else "float32"


def safe_sqrt(x: Any) -> Any:
    """sqrt(x) for x >= 0, exactly 0 (with zero gradient) where x <= SQRT_FLOOR."""
    positive = x > SQRT_FLOOR
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), 0.0)


def l2_normalize(x: Any) -> Any:
    """x / ||x|| row-wise; rows with ||x||^2 < NORM_EPSILON are scaled by 1/sqrt(NORM_EPSILON)."""
    squared = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, NORM_EPSILON))


def paired_distance(x: Any, y: Any, metric: str) -> Any:
    """Row-wise distance between two (B, D) tensors, shape (B,)."""
    if metric == "cosine":
        cosine = ops.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
        return ops.clip(1.0 - cosine, 0.0, 2.0)
    squared = ops.sum(ops.square(x - y), axis=-1)
    if metric == "squared_euclidean":
        return squared
    return safe_sqrt(squared)


def pairwise_distances(x: Any, metric: str) -> Any:
    """All distances between the rows of a (B, D) tensor, shape (B, B), zero diagonal.

    Memory is O(B^2 + B D); the B x B x D difference tensor is never formed.
    """
    size = ops.shape(x)[0]
    off_diagonal = 1.0 - ops.eye(size, dtype=x.dtype)
    if metric == "cosine":
        unit = l2_normalize(x)
        distance = ops.clip(1.0 - ops.matmul(unit, ops.transpose(unit)), 0.0, 2.0)
        return distance * off_diagonal
    centred = x - ops.mean(x, axis=0, keepdims=True)
    squared_norms = ops.sum(ops.square(centred), axis=1)
    gram = ops.matmul(centred, ops.transpose(centred))
    squared = squared_norms[:, None] - 2.0 * gram + squared_norms[None, :]
    squared = ops.maximum(squared, 0.0) * off_diagonal
    if metric == "squared_euclidean":
        return squared
    return safe_sqrt(squared)

"""Distances for the triplet loss, with finite gradients everywhere.

Three metrics, all distances (0 for identical vectors, larger = farther):

- ``euclidean``:          d(x, y) = ||x - y||
- ``squared_euclidean``:  d(x, y) = ||x - y||^2
- ``cosine``:             d(x, y) = 1 - <x, y> / (||x|| ||y||), in [0, 2]

The square root of ``euclidean`` has an infinite derivative at 0; it is taken
with the "double where" so that coincident points give exactly 0 with a zero
(not NaN) gradient. Pairwise (B x B) Euclidean distances come from the Gram
matrix, ||x||^2 - 2 <x, y> + ||y||^2, computed in float64 after centring the
batch (distances are translation invariant) and rounded to the compute dtype:
in float32 the cancellation would cost an absolute error of about
1e-7 ||x||^2 on squared distances, i.e. ~1e-3 on the distance of close points.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
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


def _zero_diagonal(matrix: Any) -> Any:
    return tf.linalg.set_diag(matrix, ops.zeros((ops.shape(matrix)[0],), dtype=matrix.dtype))


def pairwise_squared_euclidean(x: Any) -> Any:
    """||x_i - x_j||^2 for all rows of a (B, D) tensor, shape (B, B), zero diagonal.

    One float64 matrix product of augmented rows, [c_i, ||c_i||^2, 1] . [-2 c_j, 1, ||c_j||^2]
    = ||c_i||^2 - 2 <c_i, c_j> + ||c_j||^2, with c the centred rows (distances are
    translation invariant), rounded to x's dtype. The Gram form cancels badly in
    float32: an absolute error of about 1e-7 ||c||^2 on squared distances, ~1e-3 on
    the distance of nearby points; in float64 it is ~1e-16 ||c||^2.
    """
    wide = ops.cast(x, "float64")
    centred = wide - ops.mean(wide, axis=0, keepdims=True)
    norms = ops.sum(ops.square(centred), axis=1, keepdims=True)
    ones = ops.ones_like(norms)
    left = ops.concatenate([centred, norms, ones], axis=1)
    right = ops.concatenate([-2.0 * centred, ones, norms], axis=1)
    squared = ops.maximum(ops.matmul(left, ops.transpose(right)), 0.0)
    return _zero_diagonal(ops.cast(squared, x.dtype))


def pairwise_distances(x: Any, metric: str) -> Any:
    """All distances between the rows of a (B, D) tensor, shape (B, B), zero diagonal.

    Memory is O(B^2 + B D); the B x B x D difference tensor is never formed.
    """
    if metric == "cosine":
        unit = l2_normalize(x)
        return _zero_diagonal(ops.clip(1.0 - ops.matmul(unit, ops.transpose(unit)), 0.0, 2.0))
    squared = pairwise_squared_euclidean(x)
    if metric == "squared_euclidean":
        return squared
    return safe_sqrt(squared)

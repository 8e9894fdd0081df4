"""Tests of the ``valid=`` masks of lossplug.pairs: references with rows that do not exist yet.

A cross-batch memory (``cross_batch_memory``) is a (M, D) buffer whose slots fill up
during training; ``pairwise_distances(x, memory, valid=...)`` and
``label_masks(labels, memory_labels, valid=...)`` leave the unfilled slots out.
Backend-neutral (keras.ops only).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import ops
from lossplug import pairs
from lossplug.numerics import L2_EPSILON
from pair_helpers import np_pairwise

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def sets(draw):
    """Anchors (B, D), references (M, D) whose invalid rows hold junk, and the mask."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # few shapes: JAX compiles every eager op per shape
    rows, size, dim = draw(st.sampled_from(((1, 3, 2), (4, 12, 3), (6, 20, 2))))
    x = rng.normal(size=(rows, dim)).astype(np.float32) * 3.0
    y = rng.normal(size=(size, dim)).astype(np.float32) * 3.0
    valid = rng.random(size) < draw(st.sampled_from((0.0, 0.5, 1.0)))
    junk = y.copy()
    junk[~valid] = rng.uniform(-1e6, 1e6, size=(int((~valid).sum()), dim))
    return x, y, junk, valid


@SETTINGS
@given(problem=sets(), metric=st.sampled_from(pairs.METRICS))
def test_invalid_rows_change_no_valid_distance(problem, metric):
    x, y, junk, valid = problem
    clean = np.asarray(ops.convert_to_numpy(pairs.pairwise_distances(x, y, metric, valid=valid)))
    dirty = np.asarray(ops.convert_to_numpy(pairs.pairwise_distances(x, junk, metric, valid=valid)))
    assert np.all(np.isfinite(dirty))
    expected = np_pairwise(x, y, metric, L2_EPSILON)
    np.testing.assert_allclose(clean[:, valid], expected[:, valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dirty[:, valid], clean[:, valid], rtol=1e-6, atol=1e-6)
    # the same entries as the distances to the valid rows alone
    if valid.any():
        alone = ops.convert_to_numpy(pairs.pairwise_distances(x, y[valid], metric))
        np.testing.assert_allclose(clean[:, valid], alone, rtol=1e-5, atol=1e-5)


def test_the_nearest_valid_rows_are_refined_not_the_invalid_ones():
    # 1e-3 apart at norm 10: the float32 Gram form is off by ~1e-2 there, the refined
    # entries (from differences) are exact. Nine invalid rows coincide with the anchor and
    # would take all eight refined slots if they were ranked.
    x = np.array([[10.0, 0.0]], np.float32)
    near = x + np.array([[1e-3, 0.0]], np.float32)
    y = np.concatenate([np.repeat(x, 9, axis=0), near, -x]).astype(np.float32)
    valid = np.array([False] * 9 + [True, True])
    d = ops.convert_to_numpy(pairs.pairwise_distances(x, y, "euclidean", valid=valid))
    np.testing.assert_allclose(d[0, 9], 1e-3, rtol=1e-3)


def test_valid_needs_a_second_set():
    with pytest.raises(ValueError, match="second set"):
        pairs.pairwise_distances(np.zeros((2, 2), np.float32), valid=np.array([True, True]))


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(((1, 4), (5, 3), (4, 9))),
)
def test_label_masks_drop_invalid_references(seed, shape):
    rng = np.random.default_rng(seed)
    rows, size = shape
    labels = rng.integers(0, 3, rows).astype(np.int32)
    other = rng.integers(0, 3, size).astype(np.float32)  # a memory keeps ids as float32
    valid = rng.random(size) < 0.6
    positive, negative = pairs.label_masks(labels, other, valid=valid)
    same = labels[:, None] == other[None, :].astype(np.int32)
    np.testing.assert_array_equal(ops.convert_to_numpy(positive), same & valid[None, :])
    np.testing.assert_array_equal(ops.convert_to_numpy(negative), ~same & valid[None, :])

"""Tests of lossplug.mining: the miners against brute force, in-batch and cross-batch.

Backend-neutral (keras.ops and the helpers of pair_helpers): they also run with
KERAS_BACKEND=jax.
"""

from __future__ import annotations

import os
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug import mining, numerics, pairs
from pair_helpers import brute_force_triplets, compiled, np_pairwise, value_and_gradient

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
MARGINS = [0.0, 0.5, 1.0, 1.25, 3.0]


def as_float(x):
    return float(ops.convert_to_numpy(x))


@st.composite
def cross_problems(draw, square=False):
    """A (B, M) distance matrix on a coarse grid (many exact ties), disjoint masks, weights."""
    rows = draw(st.integers(1, 6))
    cols = rows if square else draw(st.integers(1, 7))
    grid = st.integers(0, 6).map(lambda v: v / 2)
    d = draw(hnp.arrays(np.float32, (rows, cols), elements=grid))
    kind = draw(hnp.arrays(np.int8, (rows, cols), elements=st.integers(0, 2)))  # 0 neither
    positive, negative = kind == 1, kind == 2
    weights = draw(
        st.none() | hnp.arrays(np.float32, (rows,), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    )
    return d, positive, negative, weights


@SETTINGS
@given(
    problem=cross_problems(),
    strategy=st.sampled_from(mining.STRATEGIES),
    average=st.sampled_from(mining.AVERAGES),
    margin=st.sampled_from(MARGINS),
)
def test_miners_equal_brute_force_on_any_masks(problem, strategy, average, margin):
    """Cross-batch form: B anchors against M candidates, any positive / negative masks."""
    d, positive, negative, weights = problem
    result = mining.mine(
        d, positive, negative, margin=margin, strategy=strategy, average=average, weights=weights
    )
    expected, fraction = brute_force_triplets(
        d.astype(np.float64), positive, negative, margin, strategy, average, weights
    )
    np.testing.assert_allclose(as_float(result.loss), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as_float(result.active_fraction), fraction, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(
    labels=hnp.arrays(np.int32, st.integers(1, 9), elements=st.integers(0, 3)),
    strategy=st.sampled_from(mining.STRATEGIES),
    margin=st.sampled_from(MARGINS),
    data=st.data(),
)
def test_in_batch_mining_from_labels(labels, strategy, margin, data):
    n = len(labels)
    grid = st.integers(0, 6).map(lambda v: v / 2)
    upper = np.triu(data.draw(hnp.arrays(np.float32, (n, n), elements=grid)), 1)
    d = upper + upper.T
    result = mining.mine(d, labels=labels, margin=margin, strategy=strategy)
    same = labels[:, None] == labels[None, :]
    positive, negative = same & ~np.eye(n, dtype=bool), ~same
    expected, _ = brute_force_triplets(d.astype(np.float64), positive, negative, margin, strategy)
    np.testing.assert_allclose(as_float(result.loss), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("strategy", mining.STRATEGIES)
@pytest.mark.parametrize("metric", pairs.METRICS)
def test_mining_from_embeddings_in_float32(strategy, metric):
    rng = np.random.default_rng(sum(map(ord, strategy + metric)))
    x = rng.normal(size=(20, 5)).astype(np.float32)
    memory = rng.normal(size=(30, 5)).astype(np.float32)
    labels, memory_labels = rng.integers(0, 4, 20), rng.integers(0, 4, 30)
    for other, other_labels in ((None, None), (memory, memory_labels)):
        d = pairs.pairwise_distances(x, other, metric=metric)
        positive, negative = pairs.label_masks(labels, other_labels)
        loss = mining.mine(d, positive, negative, margin=0.3, strategy=strategy).loss
        reference = np_pairwise(x, other, metric, numerics.L2_EPSILON)
        right = labels if other_labels is None else other_labels
        same = labels[:, None] == right[None, :]
        pos = same & ~np.eye(len(labels), len(right), dtype=bool) if other is None else same
        expected, _ = brute_force_triplets(reference, pos, ~same, 0.3, strategy)
        np.testing.assert_allclose(as_float(loss), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", mining.STRATEGIES)
def test_compiled_mining_equals_eager(strategy):
    """TensorFlow traces with dynamic shapes (data-dependent widths in loops); JAX jit."""
    rng = np.random.default_rng(1)
    d = np.abs(rng.normal(size=(9, 9))).astype(np.float32)
    d = d + d.T
    np.fill_diagonal(d, 0.0)
    labels = rng.integers(0, 3, 9).astype(np.int32)

    def loss(distances, y):
        return mining.mine(distances, labels=y, margin=0.7, strategy=strategy).loss

    eager = as_float(loss(d, labels))
    fn = compiled(loss)
    for size in (9, 5):  # a second batch size: no retrace needed on TensorFlow
        got = as_float(fn(d[:size, :size], labels[:size]))
        expected = as_float(loss(d[:size, :size], labels[:size]))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(as_float(fn(d, labels)), eager, rtol=1e-6)


#: per strategy: the constant that chooses scans over sorting or searching, and the function
#: of the other path
SCAN_LIMITS = {
    "semi_hard": ("SEMI_HARD_SCAN", "_semi_hard_by_sorting"),
    "batch_all": ("BATCH_ALL_SCAN", "_batch_all_by_search"),
}


@SETTINGS
@given(
    problem=cross_problems(),
    average=st.sampled_from(mining.AVERAGES),
    margin=st.sampled_from(MARGINS),
    strategy=st.sampled_from(sorted(SCAN_LIMITS)),
)
def test_search_paths_equal_brute_force_where_scans_would_be_used(
    problem, average, margin, strategy
):
    """The sorting / searching paths (any number of positives) on the small problems the
    scans take."""
    d, positive, negative, weights = problem
    with mock.patch.object(mining, SCAN_LIMITS[strategy][0], -1):
        result = mining.mine(
            d,
            positive,
            negative,
            margin=margin,
            strategy=strategy,
            average=average,
            weights=weights,
        )
    expected, _ = brute_force_triplets(
        d.astype(np.float64), positive, negative, margin, strategy, average, weights
    )
    np.testing.assert_allclose(as_float(result.loss), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("strategy", sorted(SCAN_LIMITS))
@pytest.mark.parametrize("beyond_limit", [-6, 0, 1, 7])
def test_few_and_many_positives_equal_brute_force(strategy, beyond_limit):
    """Anchors with up to the scan limit of positives take the scans (PyTorch, eager
    TensorFlow; JAX always sorts / searches), with more the sorting / searching path;
    both give the loss and the active fraction of brute force."""
    limit_name, other_path = SCAN_LIMITS[strategy]
    positives = getattr(mining, limit_name) + beyond_limit
    per_class = positives + 1
    rng = np.random.default_rng(per_class)
    labels = np.repeat(np.arange(4), per_class).astype(np.int32)
    x = rng.normal(size=(len(labels), 3)).astype(np.float32)
    d = np_pairwise(x, None, "euclidean", numerics.L2_EPSILON).astype(np.float32)
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(labels), dtype=bool)
    searched = beyond_limit > 0 or keras.backend.backend() == "jax"
    for average in mining.AVERAGES:
        with mock.patch.object(mining, other_path, wraps=getattr(mining, other_path)) as path:
            result = mining.mine(d, positive, ~same, margin=0.4, strategy=strategy, average=average)
        assert path.called == searched
        expected, active_fraction = brute_force_triplets(
            d.astype(np.float64), positive, ~same, 0.4, strategy, average
        )
        np.testing.assert_allclose(as_float(result.loss), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(as_float(result.active_fraction), active_fraction, rtol=1e-6)


@SETTINGS
@given(
    rows=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 17)),
        elements=st.integers(0, 6).map(lambda v: v / 2),
    ),
    data=st.data(),
    side=st.sampled_from(["left", "right"]),
)
def test_row_wise_searchsorted_equals_numpy(rows, data, side):
    """Branchless binary search on rows of any length (padded to 2**k - 1), ties included."""
    rows = np.sort(rows, axis=1)
    values = data.draw(
        hnp.arrays(
            np.float32,
            (rows.shape[0], data.draw(st.integers(1, 6))),
            elements=st.integers(-1, 7).map(lambda v: v / 2),
        )
    )
    got = ops.convert_to_numpy(
        mining._searchsorted_rows(ops.convert_to_tensor(rows), ops.convert_to_tensor(values), side)
    )
    expected = np.stack(
        [np.searchsorted(r, v, side=side) for r, v in zip(rows, values, strict=True)]
    )
    np.testing.assert_array_equal(got, expected)


NO_TRIPLET_LABELS = {"one class": [3, 3, 3, 3], "all distinct": [0, 1, 2, 3], "one sample": [5]}


@pytest.mark.parametrize("labels", list(NO_TRIPLET_LABELS.values()), ids=list(NO_TRIPLET_LABELS))
@pytest.mark.parametrize("strategy", mining.STRATEGIES)
@pytest.mark.parametrize("average", mining.AVERAGES)
def test_no_valid_triplet_gives_exactly_zero_with_finite_gradients(labels, strategy, average):
    labels = np.asarray(labels, np.int32)
    for x in (np.zeros((len(labels), 3), np.float32), np.ones((len(labels), 3), np.float32)):

        def loss(t):
            d = pairs.pairwise_distances(t)
            return mining.mine(d, labels=labels, margin=0.5, strategy=strategy, average=average)

        value, grad = value_and_gradient(lambda t: loss(t).loss, x)
        assert float(value) == 0.0 and np.all(grad == 0.0)
        assert as_float(loss(x).active_fraction) == 0.0


@pytest.mark.parametrize("strategy", mining.STRATEGIES)
@pytest.mark.parametrize("metric", pairs.METRICS)
def test_coincident_points_give_finite_gradients(strategy, metric):
    x = np.ones((6, 3), np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])

    def loss(t):
        d = pairs.pairwise_distances(t, metric=metric)
        return mining.mine(d, labels=labels, margin=0.5, strategy=strategy).loss

    value, grad = value_and_gradient(loss, x)
    np.testing.assert_allclose(value, 0.5, rtol=1e-6)  # every hinge is exactly m
    assert np.all(np.isfinite(grad))


def test_batch_hard_recomputes_the_selected_distances():
    """Ranking on any increasing function of the distance; the loss from ``recompute``."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    positive, negative = pairs.label_masks(labels)
    squared = pairs.pairwise_distances(x, metric="squared_euclidean", exact_neighbours=0)
    calls = []

    def recompute(rows, cols):
        calls.append(tuple(rows.shape))
        return pairs.gathered_distances(x, x, rows, cols)

    got = mining.batch_hard(squared, positive, negative, margin=0.5, recompute=recompute)
    exact = np_pairwise(x, None, "euclidean", numerics.L2_EPSILON)
    same = labels[:, None] == labels[None, :]
    expected, _ = brute_force_triplets(
        exact, same & ~np.eye(12, dtype=bool), ~same, 0.5, "batch_hard"
    )
    np.testing.assert_allclose(as_float(got.loss), expected, rtol=1e-6)
    assert calls == [(12,), (12,)]  # 2B distances, not B^2


def test_bad_arguments_are_rejected():
    d = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="unknown mining strategy 'hardest'"):
        mining.mine(d, labels=np.array([0, 1]), margin=0.1, strategy="hardest")
    with pytest.raises(ValueError, match="unknown average 'all'"):
        mining.mine(d, labels=np.array([0, 1]), margin=0.1, strategy="batch_all", average="all")
    with pytest.raises(ValueError, match="applies to strategy='batch_hard' only"):
        mining.mine(
            d, labels=np.array([0, 1]), margin=0.1, strategy="semi_hard", recompute=lambda r, c: r
        )
    with pytest.raises(ValueError, match="not both"):
        mining.mine(d, d > 0, d > 0, labels=np.array([0, 1]), margin=0.1, strategy="batch_all")
    with pytest.raises(ValueError, match="needs the positive and negative masks"):
        mining.mine(d, margin=0.1, strategy="batch_all")

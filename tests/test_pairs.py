"""Tests of lossplug.pairs and numerics.l2_normalize against NumPy references.

Backend-neutral (keras.ops and the gradient helper of pair_helpers): they also
run with KERAS_BACKEND=jax.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug import numerics, pairs
from pair_helpers import np_masked_logsumexp, np_pairwise, value_and_gradient

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
EPS = numerics.L2_EPSILON
FLOATS = ("float16", "bfloat16", "float32", "float64")


def np32(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


@st.composite
def matrices(draw, rows=(1, 8), dim=(1, 5), scale=100.0, dtype=np.float32):
    """(n, d) arrays, often with coincident and zero rows (hypothesis shrinks to them)."""
    n = draw(st.integers(*rows))
    d = draw(st.integers(*dim))
    values = st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=32)
    return draw(hnp.arrays(dtype, (n, d), elements=values))


# ----------------------------------------------------------------------------- import cost
def test_importing_pairs_and_mining_imports_no_keras():
    code = (
        "import sys, lossplug.pairs, lossplug.mining\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- distances
@SETTINGS
@given(x=matrices(), metric=st.sampled_from(pairs.METRICS))
def test_pairwise_distances_of_small_batches_are_exact(x, metric):
    """B <= EXACT_NEIGHBOURS: every Euclidean entry comes from differences (float32 grade)."""
    got = np32(pairs.pairwise_distances(x, metric=metric))
    expected = np_pairwise(x, None, metric, EPS)
    scale = float(np.abs(x).max()) if x.size else 0.0
    atol = {"euclidean": 1e-6 * scale, "squared_euclidean": 1e-6 * scale**2, "cosine": 1e-6}
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=atol[metric] + 1e-30)
    assert np.all(np.diag(got) == 0.0)
    if metric != "cosine":  # every entry from differences: symmetric to the bit
        np.testing.assert_array_equal(got, got.T)


@SETTINGS
@given(x=matrices(rows=(1, 6)), y=matrices(rows=(1, 7)), metric=st.sampled_from(pairs.METRICS))
def test_distances_between_two_sets(x, y, metric):
    d = min(x.shape[1], y.shape[1])
    x, y = x[:, :d], y[:, :d]
    got = np32(pairs.pairwise_distances(x, y, metric=metric))
    expected = np_pairwise(x, y, metric, EPS)
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()))
    atol = {"euclidean": 1e-6 * scale, "squared_euclidean": 1e-6 * scale**2, "cosine": 1e-6}
    assert got.shape == (len(x), len(y))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=atol[metric] + 1e-30)


def test_large_batches_nearest_entries_exact_the_rest_within_the_gram_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)) * 5.0
    x[1::2] = x[0::2] + rng.normal(size=(32, 16)) * 1e-4  # close pairs
    x = x.astype(np.float32)
    got = np32(pairs.pairwise_distances(x))
    exact = np_pairwise(x, None, "euclidean", EPS)
    nearest = np.argsort(np.where(np.eye(64, dtype=bool), np.inf, exact), axis=1)[:, :1]
    rows = np.arange(64)[:, None]
    # the nearest neighbour of every row (its close partner) is exact ...
    np.testing.assert_allclose(got[rows, nearest], exact[rows, nearest], rtol=1e-6)
    # ... and every entry is within the Gram form's rounding error
    centred = x.astype(np.float64) - x.mean(axis=0)
    norms = (centred**2).sum(1)
    bound = 1e-6 * exact + np.sqrt(64 * 2.0**-23 * (norms[:, None] + norms[None, :]))
    assert np.all(np.abs(got - exact) <= bound)


def test_close_pairs_keep_float64_accuracy_where_the_float32_gram_form_fails():
    """The documented case: pairs 1e-3 apart at norm 10 in dimension 128."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 128))
    x = 10.0 * x / np.linalg.norm(x, axis=1, keepdims=True)
    x[1::2] = x[0::2] + rng.normal(size=(128, 128)) * 1e-3 / np.sqrt(128)
    x = x.astype(np.float32)
    exact = np_pairwise(x, None, "euclidean", EPS)
    first, second = np.arange(0, 256, 2), np.arange(1, 256, 2)
    got = np32(pairs.pairwise_distances(x))
    error = np.abs(got - exact)[first, second].max()
    squared = (x * x).sum(1)
    gram = np.sqrt(np.maximum(squared[:, None] - 2.0 * (x @ x.T) + squared[None, :], 0.0))
    naive = np.abs(gram.astype(np.float64) - exact)[first, second].max()
    assert error < 1e-9 and naive > 1e-4, (error, naive)
    fast = np32(pairs.pairwise_distances(x, exact_neighbours=0))  # for ranking only
    assert np.abs(fast - exact)[first, second].max() > 1e-5


@SETTINGS
@given(x=matrices(rows=(1, 6), dim=(1, 4)), metric=st.sampled_from(pairs.METRICS))
def test_paired_and_gathered_distances(x, metric):
    y = x[::-1].copy()
    expected = np.diag(np_pairwise(x, y, metric, EPS))
    scale = float(np.abs(x).max())
    atol = {"euclidean": 1e-6 * scale, "squared_euclidean": 1e-6 * scale**2, "cosine": 1e-6}
    got = np32(pairs.paired_distances(x, y, metric))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=atol[metric] + 1e-30)
    n = len(x)
    rows = np.array([i % n for i in range(2 * n)], np.int32)
    cols = np.array([(3 * i + 1) % n for i in range(2 * n)], np.int32)
    full = np_pairwise(x, x, metric, EPS)
    full_got = np32(pairs.gathered_distances(x, x, rows, cols, metric))
    np.testing.assert_allclose(full_got, full[rows, cols], rtol=2e-6, atol=atol[metric] + 1e-30)


@pytest.mark.parametrize("metric", pairs.METRICS)
def test_gradients_are_finite_at_coincident_points_and_zero_rows(metric):
    x = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [3.0, -1.0]], np.float32)
    for fn in (
        lambda t: pairs.pairwise_distances(t, metric=metric),
        lambda t: pairs.pairwise_distances(t, ops.flip(t, axis=0), metric=metric),
        lambda t: pairs.paired_distances(t, ops.flip(t, axis=0), metric),
        lambda t: pairs.gathered_distances(t, t, np.array([0, 2, 4]), np.array([1, 3, 4]), metric),
    ):
        value, grad = value_and_gradient(fn, x)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    # the derivative of a Euclidean distance computed from differences is a unit vector
    if metric == "euclidean":
        _, grad = value_and_gradient(lambda t: pairs.paired_distances(t[:1], t[4:], metric), x)
        np.testing.assert_allclose(np.linalg.norm(grad[0]), 1.0, rtol=1e-6)


@SETTINGS
@given(x=matrices(rows=(1, 6), dim=(1, 4), scale=10.0), kind=st.sampled_from(pairs.SIMILARITIES))
def test_similarities(x, kind):
    got = np32(pairs.pairwise_similarities(x, kind=kind))
    a = x.astype(np.float64)
    if kind == "dot":
        expected, atol = a @ a.T, 1e-5 * (1.0 + float(np.abs(a).max()) ** 2)
    else:
        u = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), EPS)
        expected, atol = np.clip(u @ u.T, -1.0, 1.0), 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=atol)


# ----------------------------------------------------------------------------- masks
@SETTINGS
@given(
    labels=hnp.arrays(np.int32, st.integers(1, 7), elements=st.integers(0, 3)),
    other=st.none() | hnp.arrays(np.int32, st.integers(1, 7), elements=st.integers(0, 3)),
)
def test_label_masks(labels, other):
    positive, negative = pairs.label_masks(labels, other)
    right = labels if other is None else other
    same = labels[:, None] == right[None, :]
    expected_pos = same & ~np.eye(len(labels), dtype=bool) if other is None else same
    np.testing.assert_array_equal(ops.convert_to_numpy(positive), expected_pos)
    np.testing.assert_array_equal(ops.convert_to_numpy(negative), ~same)
    if other is None:  # keeping self-pairs on request
        kept, _ = pairs.label_masks(labels, exclude_self=False)
        np.testing.assert_array_equal(ops.convert_to_numpy(kept), same)
    elif len(other) == len(labels):
        excluded, _ = pairs.label_masks(labels, other, exclude_self=True)
        np.testing.assert_array_equal(
            ops.convert_to_numpy(excluded), same & ~np.eye(len(labels), dtype=bool)
        )


def test_label_masks_reject_self_exclusion_between_sets_of_other_sizes():
    with pytest.raises(ValueError, match="as many labels"):
        pairs.label_masks(np.array([0, 1]), np.array([0, 1, 2]), exclude_self=True)


# ----------------------------------------------------------------------------- reductions
@st.composite
def masked_rows(draw, scale=1e4):
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    special = st.sampled_from([scale, -scale, 0.0])
    elements = st.one_of(special, st.floats(-scale, scale, allow_nan=False, width=32))
    values = draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    mask = draw(hnp.arrays(bool, (rows, cols)))
    if draw(st.booleans()):
        mask[0] = False  # a row without entries
    return values, mask


@SETTINGS
@given(problem=masked_rows(), include_zero=st.booleans())
def test_masked_logsumexp_is_exact_stable_and_defined_on_empty_rows(problem, include_zero):
    values, mask = problem
    value, has = pairs.masked_logsumexp(values, mask, include_zero=include_zero)
    expected = np_masked_logsumexp(values, mask, include_zero)
    np.testing.assert_allclose(np32(value), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(has), mask.any(axis=1))

    # gradient: the softmax over the row's entries (with the zero term), 0 elsewhere
    _, grad = value_and_gradient(
        lambda t: pairs.masked_logsumexp(t, mask, include_zero=include_zero)[0], values
    )
    assert np.all(np.isfinite(grad))
    wide = values.astype(np.float64)
    for r in range(len(values)):
        terms = np.where(mask[r], wide[r], -np.inf)
        top = max(terms.max(), 0.0) if include_zero else terms.max()
        if not np.isfinite(top):
            assert np.all(grad[r] == 0.0)
            continue
        weights = np.exp(terms - top)
        weights = weights / (weights.sum() + (np.exp(-top) if include_zero else 0.0))
        np.testing.assert_allclose(grad[r], weights, atol=1e-6)


def test_masked_logsumexp_ignores_huge_masked_out_entries():
    values = np.array([[1e30, 0.0, 1.0], [-1e30, 2.0, 2.0]], np.float32)
    mask = np.array([[False, True, True], [False, True, True]])
    value, grad = value_and_gradient(lambda t: pairs.masked_logsumexp(t, mask)[0], values)
    np.testing.assert_allclose(value, [np.logaddexp(0, 1), 2 + np.log(2)], rtol=1e-6)
    assert grad[0, 0] == 0.0 and grad[1, 0] == 0.0 and np.all(np.isfinite(grad))


@SETTINGS
@given(problem=masked_rows(scale=100.0))
def test_masked_max_min_argmax_sum_mean(problem):
    values, mask = problem
    wide = values.astype(np.float64)
    has = mask.any(axis=1)
    big = np.where(mask, wide, -np.inf).max(axis=1)
    small = np.where(mask, wide, np.inf).min(axis=1)
    np.testing.assert_array_equal(np32(pairs.masked_max(values, mask)), np.where(has, big, 0.0))
    np.testing.assert_array_equal(np32(pairs.masked_min(values, mask)), np.where(has, small, 0.0))
    np.testing.assert_array_equal(
        np32(pairs.masked_max(values, mask, empty=-7.0)), np.where(has, big, -7.0)
    )
    index, found = pairs.masked_argmax(values, mask)
    index = ops.convert_to_numpy(index)
    np.testing.assert_array_equal(ops.convert_to_numpy(found), has)
    assert np.all(np.where(has, wide[np.arange(len(wide)), index] == big, index == 0))
    index, _ = pairs.masked_argmin(values, mask)
    index = ops.convert_to_numpy(index)
    assert np.all(np.where(has, wide[np.arange(len(wide)), index] == small, index == 0))
    total = np.where(mask, wide, 0.0).sum(1)
    np.testing.assert_allclose(np32(pairs.masked_sum(values, mask)), total, rtol=1e-5, atol=1e-3)
    mean, count = pairs.masked_mean(values, mask)
    np.testing.assert_array_equal(np32(count), mask.sum(1))
    expected = np.where(has, total / np.maximum(mask.sum(1), 1), 0.0)
    np.testing.assert_allclose(np32(mean), expected, rtol=1e-5, atol=1e-4)
    _, grad = value_and_gradient(lambda t: pairs.masked_max(t, mask), values)
    assert np.all(np.isfinite(grad)) and np.all(grad[~has] == 0.0) and np.all(grad[~mask] == 0.0)


def test_safe_divide_and_sqrt_are_zero_with_finite_gradients_at_zero():
    x = np.array([0.0, 4.0, 1e-30], np.float32)
    value, grad = value_and_gradient(lambda t: pairs.safe_sqrt(t), x)
    np.testing.assert_allclose(value, [0.0, 2.0, 1e-15], rtol=1e-6)
    assert grad[0] == 0.0 and np.isfinite(grad).all()
    x = np.array([0.0, 4.0, 1e-3], np.float32)
    value, grad = value_and_gradient(lambda t: pairs.safe_divide(t, t * 2.0), x)
    np.testing.assert_allclose(value, [0.0, 0.5, 0.5], rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np32(pairs.safe_divide(np.float32(3.0), np.float32(0.0))), 0.0)


# ----------------------------------------------------------------------------- l2_normalize
@SETTINGS
@given(x=matrices(rows=(1, 5), dim=(1, 6), scale=10.0), axis=st.sampled_from([0, -1]))
def test_l2_normalize_values(x, axis):
    got = np32(numerics.l2_normalize(x, axis=axis))
    a = x.astype(np.float64)
    expected = a / np.maximum(np.linalg.norm(a, axis=axis, keepdims=True), EPS)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    norms = np.linalg.norm(a, axis=axis)
    np.testing.assert_allclose(np.linalg.norm(got, axis=axis)[norms >= 1e-3], 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_l2_normalize_gradient_is_bounded_by_one_over_epsilon_in_every_dtype(dtype):
    """Zero, near-zero, at-the-floor and ordinary rows; the Jacobian norm is <= 1 / eps."""
    import ml_dtypes  # bfloat16 for NumPy (a dependency of Keras)

    rows = np.array(
        [[0.0, 0.0, 0.0], [1e-7, 0.0, 0.0], [3e-4, -2e-4, 1e-4], [EPS, 0.0, 0.0], [3.0, 4.0, 0.0]]
    )
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x = rows.astype(dtype)
    rng = np.random.default_rng(0)
    for _ in range(4):
        upstream = rng.normal(size=rows.shape)
        upstream /= np.linalg.norm(upstream, axis=1, keepdims=True)
        upstream = upstream.astype("float32")

        def normalized(t, u=upstream):
            unit = numerics.l2_normalize(t)
            return unit * ops.cast(ops.convert_to_tensor(u), unit.dtype)

        value, grad = value_and_gradient(normalized, x)
        grad = grad.astype(np.float64)
        assert np.all(np.isfinite(grad))
        slack = 1.01 if dtype in ("float32", "float64") else 1.05  # rounding of the gradient
        assert np.all(np.linalg.norm(grad, axis=1) <= slack / EPS), np.linalg.norm(grad, axis=1)
    # float64 stays float64 (the gradient helper enables 64-bit types on JAX), else float32
    assert value.dtype == (np.float64 if x.dtype == np.float64 else np.float32)
    # a zero row gets exactly 1 / eps times the upstream gradient: finite in float16 for
    # upstream gradients below 63.96 (65504 * eps)
    zeros = np.zeros((2, 3), dtype)
    _, grad = value_and_gradient(lambda t: numerics.l2_normalize(t) * 63.0, zeros)
    np.testing.assert_allclose(grad.astype(np.float64), 63.0 / EPS, rtol=1e-3)


def test_l2_normalize_rejects_a_non_positive_epsilon():
    with pytest.raises(ValueError, match="epsilon > 0"):
        numerics.l2_normalize(np.ones((2, 2), np.float32), epsilon=0.0)


# ----------------------------------------------------------------------------- inputs
def test_embeddings_and_labels_checks_shapes_and_casts():
    import lossplug

    x, y, w = pairs.embeddings_and_labels(
        np.ones((3, 2), np.float16), np.array([[0], [1], [1]]), plugin="demo", weights=np.ones(3)
    )
    assert ops.convert_to_numpy(x).dtype == np.float32 and tuple(y.shape) == (3,)
    assert tuple(w.shape) == (3,)
    with pytest.raises(lossplug.InvalidTensorError, match=r"'demo' needs embeddings of shape"):
        pairs.embeddings_and_labels(np.ones((3, 2, 2)), np.arange(3), plugin="demo")
    with pytest.raises(lossplug.InvalidTensorError, match=r"'demo' needs integer labels.*one-hot"):
        pairs.embeddings_and_labels(np.ones((3, 2)), np.eye(3), plugin="demo")

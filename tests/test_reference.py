"""Tests of lossplug.reference, the NumPy helpers of the plugins' claims."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug import reference
from lossplug.properties import Example
from test_numerics_masks import layouts

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
unit = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32)


def test_import_reference_imports_neither_keras_nor_tensorflow():
    code = (
        "import sys, lossplug.reference\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras'})\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------- regular_simplex
@SETTINGS
@given(st.integers(1, 9), st.integers(0, 4))
def test_regular_simplex_has_unit_rows_with_equal_pairwise_cosines(count, extra):
    dim = max(count - 1, 1) + extra
    rows = reference.regular_simplex(count, dim)
    assert rows.shape == (count, dim)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-12)
    if count > 1:
        cosines = rows @ rows.T
        off_diagonal = cosines[~np.eye(count, dtype=bool)]
        np.testing.assert_allclose(off_diagonal, -1.0 / (count - 1), atol=1e-12)
        np.testing.assert_allclose(rows.sum(axis=0), 0.0, atol=1e-12)  # centred
    assert np.all(rows[:, max(count - 1, 1) :] == 0.0)  # padded with zero columns
    np.testing.assert_array_equal(rows, reference.regular_simplex(count, dim))


def test_regular_simplex_small_cases_and_errors():
    np.testing.assert_array_equal(reference.regular_simplex(1, 3), [[1.0, 0.0, 0.0]])
    two = reference.regular_simplex(2, 1)
    np.testing.assert_allclose(np.sort(two[:, 0]), [-1.0, 1.0])
    with pytest.raises(ValueError, match="4 vertices need count >= 1 and at least 3 dimensions"):
        reference.regular_simplex(4, 2)
    with pytest.raises(ValueError, match="count >= 1"):
        reference.regular_simplex(0, 2)


def test_regular_simplex_is_the_most_spread_arrangement():
    """No other set of unit vectors has a larger smallest pairwise distance (spot check)."""
    rng = np.random.default_rng(0)
    simplex = reference.regular_simplex(4, 3)
    best = min(np.linalg.norm(a - b) for a, b in itertools.combinations(simplex, 2))
    for _ in range(200):
        rows = rng.normal(size=(4, 3))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        spread = min(np.linalg.norm(a - b) for a, b in itertools.combinations(rows, 2))
        assert spread <= best + 1e-12


# ----------------------------------------------------------------- masks
@attrs.frozen
class _Config:
    smooth: float = 1.0


def _example(y_true, y_pred):
    return Example({"y_true": y_true}, {"y_pred": y_pred}, _Config())


@SETTINGS
@given(layouts())
def test_mask_channels_gives_the_canonical_masks_of_every_layout(case):
    """The same layouts and canonical (B, S, C) forms as numerics.segmentation_masks."""
    y_true, y_pred, t, p = case
    got_t, got_p = reference.mask_channels(y_true, y_pred)
    assert got_t.dtype == got_p.dtype == np.float64
    np.testing.assert_array_equal(got_t, t)
    np.testing.assert_array_equal(got_p, p)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [
        ((2, 16, 1), (2, 16)),
        ((2, 8), (2, 16)),
        ((2, 4, 2, 3), (2, 4, 4, 3)),
        ((2, 4, 2), (2, 4, 4, 3)),
        ((2, 4, 2), (2, 2, 4, 1)),  # as many pixels, another shape
        ((2, 4, 4, 2), (2, 4, 4, 3)),
        ((), ()),
    ],
)
def test_mask_channels_refuses_what_segmentation_masks_refuses(y_true, y_pred):
    with pytest.raises(ValueError, match="mask_channels|dense_targets"):
        reference.mask_channels(np.zeros(y_true), np.zeros(y_pred))


@SETTINGS
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)),
        elements=st.floats(-0.5, 1.5, width=32),
    ),
    st.sampled_from(["float16", "float32", "float64"]),
)
def test_perfect_mask_predicts_the_rounded_targets_in_their_dtypes(y_true, pred_dtype):
    y_pred = np.full(y_true.shape, 0.5, pred_dtype)
    perfect = reference.perfect_mask(_example(y_true, y_pred))
    mask = perfect.inputs["y_true"]
    assert mask.dtype == np.float32 and perfect.outputs["y_pred"].dtype == pred_dtype
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, np.round(np.clip(y_true, 0.0, 1.0)))
    np.testing.assert_array_equal(perfect.outputs["y_pred"], mask.astype(pred_dtype))
    logits = reference.perfect_mask(_example(y_true, y_pred), lambda m: 4.0 * m - 2.0)
    np.testing.assert_array_equal(logits.outputs["y_pred"], (4.0 * mask - 2.0).astype(pred_dtype))
    assert perfect.config == _example(y_true, y_pred).config


def test_perfect_mask_of_other_tensor_names():
    example = Example({"masks": np.array([[0.2, 0.9]])}, {"probs": np.zeros((1, 2))}, _Config())
    perfect = reference.perfect_mask(example, targets="masks", predictions="probs")
    np.testing.assert_array_equal(perfect.outputs["probs"], [[0.0, 1.0]])


@SETTINGS
@given(layouts("channels_last"), st.sampled_from([0.0, 1e-3, 1.0, 10.0]))
def test_dice_ratios_are_the_soft_dice_ratio_per_sample_and_class(case, smooth):
    _, _, t, p = case
    got = reference.dice_ratios(t, p, smooth)
    assert got.shape == (t.shape[0], t.shape[2])
    for b, c in itertools.product(range(t.shape[0]), range(t.shape[2])):
        total = p[b, :, c].sum() + t[b, :, c].sum() + smooth
        expected = 1.0 if total == 0 else (2 * np.dot(p[b, :, c], t[b, :, c]) + smooth) / total
        assert got[b, c] == pytest.approx(expected, rel=1e-12)
    assert np.all((got >= 0.0) & (got <= 1.0 + 1e-12))


def test_dice_ratio_of_empty_masks_is_one_at_smooth_zero():
    empty = np.zeros((1, 4, 2))
    np.testing.assert_array_equal(reference.dice_ratios(empty, empty, 0.0), [[1.0, 1.0]])


# ----------------------------------------------------------------- dense_targets
@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.booleans(), st.data())
def test_dense_targets_match_the_tensor_helpers(batch, classes, binary, data):
    """Compared with lossplug.numerics.one_hot_targets / binary_targets on the same inputs."""
    from keras import ops
    from lossplug import numerics

    form = data.draw(st.sampled_from(["ids", "ids_keepdim", "rows"]))
    shape = (batch, classes)
    if form == "rows" or (classes == 1 and form == "ids_keepdim"):
        y_true = data.draw(hnp.arrays(np.float32, shape, elements=unit))
    else:
        ids = st.integers(0, classes - 1)
        y_true = data.draw(hnp.arrays(np.int64, (batch,), elements=ids))
        if form == "ids_keepdim":
            y_true = y_true[:, None]
    tensor_helper = numerics.binary_targets if binary else numerics.one_hot_targets
    expected = ops.convert_to_numpy(tensor_helper(y_true, shape, plugin="demo", dtype="float64"))
    got = reference.dense_targets(y_true, shape, binary=binary)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def test_dense_targets_refuse_ids_of_another_shape_or_range():
    with pytest.raises(ValueError, match=r"class ids of shape \(3,\) for predictions \(2, 4\)"):
        reference.dense_targets(np.zeros(3, np.int64), (2, 4))
    with pytest.raises(IndexError, match=r"outside \[0, 4\)"):
        reference.dense_targets(np.array([0, 4]), (2, 4))

"""Tests of lossplug.numerics.segmentation_masks and binary_targets (Hypothesis vs NumPy).

Each layout is drawn from its canonical form, (B, S, C) float64 NumPy masks: the test
builds the tensor a user would give (class ids, a mask without its channel axis, a
flattened mask, ...) from it, so the expected result of the helper is known exactly.
Backend-neutral: keras.ops, NumPy and lossplug.testing.compiled (each of the backend's
compilers); float64 stays float64 on JAX (64-bit mode where the tests need it). Only the
test of axes of unknown size is TensorFlow's (no other backend traces with them).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug import backend, numerics
from lossplug.testing import compiled, compiler_modes

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
LAYOUTS = ("channels_last", "class_ids", "class_ids_keepdim", "no_channel", "flat", "pixel")
unit = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32)
#: float64 tensors exist inside this context on every backend (JAX: 64-bit mode)
float64_available = backend.current().kit_scope


@st.composite
def layouts(draw, layout=None, max_spatial_rank=3, classes=None):
    """(y_true, y_pred, expected t, expected p): the inputs and their (B, S, C) forms."""
    layout = draw(st.sampled_from(LAYOUTS)) if layout is None else layout
    batch = draw(st.integers(1, 3))
    if layout in ("flat", "pixel"):
        spatial = (draw(st.integers(1, 6)),) if layout == "flat" else ()
    else:
        rank = draw(st.integers(1, max_spatial_rank))
        spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    if classes is not None:
        pass
    elif layout in ("class_ids", "class_ids_keepdim"):
        classes = draw(st.integers(2, 4))
    elif layout == "channels_last":
        classes = draw(st.integers(1, 4))
    else:
        classes = 1
    size = int(np.prod(spatial, dtype=np.int64))
    pred_dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    p = draw(hnp.arrays(np.float32, (batch, size, classes), elements=unit))
    y_pred = p.reshape((batch, *spatial) if layout in ("flat", "pixel") else (batch, *spatial, -1))
    if layout.startswith("class_ids"):
        ids = draw(hnp.arrays(np.int64, (batch, size), elements=st.integers(0, classes - 1)))
        t = np.eye(classes)[ids]
        id_dtype = draw(st.sampled_from(["int32", "int64", "float32"]))
        y_true = ids.reshape(batch, *spatial).astype(id_dtype)
        if layout == "class_ids_keepdim":
            y_true = y_true[..., None]
    else:
        t = draw(hnp.arrays(np.float32, (batch, size, classes), elements=unit)).astype(np.float64)
        y_true = t.reshape(y_pred.shape).astype(np.float32)
        if layout == "no_channel":
            y_true = y_true[..., 0]
    y_pred = y_pred.astype(pred_dtype)
    return y_true, y_pred, t, y_pred.astype(np.float64).reshape(p.shape)


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


# ----------------------------------------------------------------- segmentation_masks
@SETTINGS
@given(layouts())
def test_every_layout_gives_the_canonical_masks(case):
    y_true, y_pred, t, p = case
    with float64_available():
        got_t, got_p = numerics.segmentation_masks(y_true, y_pred, plugin="demo")
        expected_dtype = "float64" if y_pred.dtype == np.float64 else "float32"
        for got, want in ((got_t, t), (got_p, p)):
            assert keras.backend.standardize_dtype(got.dtype) == expected_dtype
            assert tuple(got.shape) == want.shape
            np.testing.assert_array_equal(_numpy(got), want.astype(expected_dtype))


def _masks(y_true, y_pred):
    return numerics.segmentation_masks(y_true, y_pred, plugin="demo")


_COMPILED: dict[tuple[str, str, int], object] = {}


def _compiled_masks(mode: str, layout: str, classes: int):
    """One compiled function per compiler, layout and channel count, shared by the
    examples (TensorFlow: traced with the batch size unknown, a trace per spatial shape)."""
    if (mode, layout, classes) not in _COMPILED:
        _COMPILED[mode, layout, classes] = compiled(_masks, mode)
    return _COMPILED[mode, layout, classes]


@SETTINGS
@given(st.sampled_from(("channels_last", "class_ids", "no_channel")), st.integers(1, 3), st.data())
def test_compiled_masks_are_the_canonical_ones(layout, classes, data):
    """Compiled by each of the backend's compilers, the masks are the canonical ones."""
    if layout == "no_channel":
        classes = 1
    elif layout == "class_ids":
        classes += 1
    y_true, y_pred, t, p = data.draw(layouts(layout, max_spatial_rank=1, classes=classes))
    for mode in compiler_modes():
        got_t, got_p = _compiled_masks(mode, layout, classes)(y_true, y_pred.astype("float32"))
        np.testing.assert_array_equal(_numpy(got_t), t, err_msg=mode)
        np.testing.assert_array_equal(_numpy(got_p), p.astype("float32"), err_msg=mode)


_RELAXED: dict[tuple[str, int], object] = {}


@pytest.mark.backends("tensorflow")  # only TensorFlow traces with axes of unknown size
@SETTINGS
@given(st.sampled_from(("channels_last", "class_ids", "no_channel")), st.integers(1, 3), st.data())
def test_compiled_with_dynamic_spatial_sizes(layout, classes, data):
    """Traced with batch and spatial axes of unknown size, the masks are the canonical ones:
    one tf.function per layout and channel count, shared by the examples, so that it
    generalises the batch and spatial sizes to None after two traces (as Keras' fit)."""
    import tensorflow as tf

    if layout == "no_channel":
        classes = 1
    elif layout == "class_ids":
        classes += 1
    y_true, y_pred, t, p = data.draw(layouts(layout, max_spatial_rank=1, classes=classes))
    if (layout, classes) not in _RELAXED:
        _RELAXED[layout, classes] = tf.function(_masks, reduce_retracing=True)
    got_t, got_p = _RELAXED[layout, classes](y_true, y_pred.astype("float32"))
    np.testing.assert_array_equal(_numpy(got_t), t)
    np.testing.assert_array_equal(_numpy(got_p), p.astype("float32"))


def test_symbolic_masks_of_unknown_spatial_size_keep_their_channels():
    y = keras.KerasTensor((None, None, None, 3))
    t, p = numerics.segmentation_masks(y, y, plugin="demo")
    assert tuple(t.shape) == tuple(p.shape) == (None, None, 3)
    t, p = numerics.segmentation_masks(keras.KerasTensor((None, None, 5)), y[..., :1], plugin="x")
    assert tuple(t.shape) == tuple(p.shape) == (None, None, 1)


def test_ones_of_a_binary_mask_stay_ones_and_are_not_read_as_class_ids():
    """(B, H, W) targets for one sigmoid channel are the mask itself, soft values included."""
    y_true = np.array([[[0.0, 1.0], [0.25, 1.0]]], np.float32)
    t, _ = numerics.segmentation_masks(y_true, np.zeros((1, 2, 2, 1), np.float32), plugin="x")
    np.testing.assert_array_equal(_numpy(t)[0, :, 0], [0.0, 1.0, 0.25, 1.0])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "words"),
    [
        ((2, 16, 1), (2, 16), ["'demo'", "(2, 16) is a flattened binary mask", "got (2, 16, 1)"]),
        ((2, 8), (2, 16), ["'demo'", "(2, 8) does not match", "(2, 16)"]),
        ((2,), (3,), ["'demo'", "same batch and spatial shape"]),
        ((2, 4, 2, 3), (2, 4, 4, 3), ["'demo'", r"channels-last masks (B, ..., C)"]),
        ((2, 4, 2), (2, 4, 4, 3), ["'demo'", "(2, 4, 2) does not match"]),
        ((2, 4, 2), (2, 4, 4, 1), ["'demo'", "(2, 4, 2) does not match"]),
        ((3, 4, 4, 1), (2, 4, 4, 1), ["'demo'", "same batch and spatial shape"]),
        ((2, 4, 4, 2), (2, 4, 4, 3), ["'demo'", "class ids of shape (2, 4, 4)", "masks of shape"]),
        ((2, 4, 4, 2), (2, 4, 4, 1), ["'demo'", "masks of shape (2, 4, 4, 1)"]),
        ((2, 4), (2, 4, 4, 3), ["'demo'", "class ids of shape (2, 4, 4)"]),
        ((), (), ["'demo'", "y_pred is a scalar"]),
    ],
)
def test_wrong_layouts_are_refused_naming_the_plugin_and_the_shapes(y_true, y_pred, words):
    with pytest.raises(lossplug.InvalidTensorError) as info:
        numerics.segmentation_masks(
            np.zeros(y_true, "float32"), np.zeros(y_pred, "float32"), plugin="demo"
        )
    for word in words:
        assert word in str(info.value)


def test_a_channel_axis_of_unknown_size_is_refused():
    y = keras.KerasTensor((None, 4, 4, None))
    with pytest.raises(lossplug.InvalidTensorError, match="'demo'.*needs a static channel"):
        numerics.segmentation_masks(y, y, plugin="demo")


def test_class_ids_out_of_range_are_refused():
    with pytest.raises(Exception, match=r"'demo'.*class ids outside \[0, 3\)"):
        numerics.segmentation_masks(
            np.full((1, 2, 2), 3), np.full((1, 2, 2, 3), 1 / 3, np.float32), plugin="demo"
        )


# ----------------------------------------------------------------- binary_targets
@st.composite
def binary_cases(draw):
    """(y_true, y_pred, expected): single-unit (B,) targets, class ids, or rows."""
    batch = draw(st.integers(1, 5))
    form = draw(st.sampled_from(["single_unit", "class_ids", "rows"]))
    if form == "single_unit":
        targets = draw(hnp.arrays(np.float32, (batch,), elements=unit))
        return targets, np.zeros((batch, 1), np.float32), targets.astype(np.float64)[:, None]
    classes = draw(st.integers(2, 5))
    if form == "class_ids":
        ids = draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, classes - 1)))
        return ids, np.zeros((batch, classes), np.float32), np.eye(classes)[ids]
    rows = draw(hnp.arrays(np.float32, (batch, classes), elements=unit))
    return rows, np.zeros((batch, classes), np.float32), rows.astype(np.float64)


@SETTINGS
@given(binary_cases(), st.sampled_from(["float32", "float64"]))
def test_binary_targets_match_numpy(case, dtype):
    y_true, y_pred, expected = case
    with float64_available():
        got = numerics.binary_targets(y_true, y_pred, plugin="demo", dtype=dtype)
        assert keras.backend.standardize_dtype(got.dtype) == dtype
        np.testing.assert_array_equal(_numpy(got), expected.astype(dtype))
        # the predictions' shape works as well as the predictions
        shaped = numerics.binary_targets(y_true, y_pred.shape, plugin="demo", dtype=dtype)
        np.testing.assert_array_equal(_numpy(shaped), _numpy(got))


def test_binary_targets_of_one_unit_with_a_trailing_axis_are_rows():
    got = numerics.binary_targets(np.array([[1.0], [0.0]]), (2, 1), plugin="demo")
    np.testing.assert_array_equal(_numpy(got), [[1.0], [0.0]])


def test_binary_targets_refuse_rows_of_another_width():
    with pytest.raises(lossplug.InvalidTensorError, match="'demo'.*probabilities of shape"):
        numerics.binary_targets(np.zeros((2, 3)), (2, 4), plugin="demo", targets="probabilities")

"""The ``jaccard`` plugin: soft IoU mathematics, mask shapes, errors and two segmentations."""

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
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import harness_for
from lossplug_jaccard import claims

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

test_conformance = conformance_tests("jaccard")  # the kit: every check and claim


def call(y_true, y_pred, **config):
    """The installed plugin's per-sample loss (float32 NumPy), called as the core calls it."""
    loss, _ = call_plugin("jaccard", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == (np.shape(y_pred)[0],)
    return loss


def gradient(y_true, y_pred, **config):
    """d sum(loss) / d y_pred, through the kit's harness (no TensorFlow import here)."""
    spec = lossplug.registry.spec("jaccard")
    example = Example({"y_true": y_true}, {"y_pred": y_pred}, spec.make_config(config))
    outcome, grads, _ = harness_for("jaccard").gradients(example, ["y_pred"])
    return outcome.loss, grads["y_pred"]


def numpy_jaccard(y_true, y_pred, smooth):
    """1 - mean_c (I_c + s) / (P_c + T_c - I_c + s), a 0/0 ratio being 1."""
    t, p = np.float64(y_true), np.float64(y_pred)
    spatial = tuple(range(1, t.ndim - 1))
    intersection = np.sum(p * t, axis=spatial)
    union = np.sum(p, axis=spatial) + np.sum(t, axis=spatial) - intersection + smooth
    ratio = np.where(union > 0, (intersection + smooth) / np.where(union > 0, union, 1.0), 1.0)
    return 1.0 - ratio.mean(axis=-1)


unit = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def mask_pairs(draw, binary_target=True):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    shape = (*shape, draw(st.integers(1, 4)))
    elements = st.sampled_from([0.0, 1.0]) if binary_target else unit
    y_true = draw(hnp.arrays(np.float32, shape, elements=elements))
    y_pred = draw(hnp.arrays(np.float32, shape, elements=unit))
    return y_true, y_pred


smooths = st.sampled_from([0.0, 1e-3, 1.0, 10.0])


# --------------------------------------------------------------------- mathematics
@SETTINGS
@given(mask_pairs(binary_target=False), smooths)
def test_matches_the_soft_iou_formula(pair, smooth):
    y_true, y_pred = pair
    np.testing.assert_allclose(
        call(y_true, y_pred, smooth=smooth),
        numpy_jaccard(y_true, y_pred, smooth),
        rtol=2e-5,
        atol=2e-6,
    )


@SETTINGS
@given(mask_pairs(binary_target=False), smooths)
def test_is_within_zero_and_one_and_exactly_symmetric(pair, smooth):
    y_true, y_pred = pair
    value = call(y_true, y_pred, smooth=smooth)
    assert np.all(value >= 0.0) and np.all(value <= 1.0)
    np.testing.assert_array_equal(value, call(y_pred, y_true, smooth=smooth))


@SETTINGS
@given(mask_pairs(binary_target=False))
def test_unsmoothed_iou_is_dice_over_two_minus_dice_per_class(pair):
    y_true, y_pred = pair
    spec = lossplug.registry.spec("jaccard")
    example = Example({"y_true": y_true}, {"y_pred": y_pred}, spec.make_config({"smooth": 0.0}))
    np.testing.assert_allclose(
        claims.from_dice(example), numpy_jaccard(y_true, y_pred, 0.0), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        call(y_true, y_pred, smooth=0.0), claims.from_dice(example), rtol=2e-5, atol=2e-6
    )


def test_hard_masks_give_one_minus_the_iou():
    y_true = np.zeros((1, 4, 4, 1), np.float32)
    y_true[0, :2, :3] = 1.0  # 6 pixels
    y_pred = np.zeros_like(y_true)
    y_pred[0, 1:3, :3] = 1.0  # 6 pixels, 3 shared: IoU 3 / 9
    assert call(y_true, y_pred, smooth=0.0)[0] == pytest.approx(1 - 3 / 9, rel=1e-6)
    assert call(y_true, y_pred, smooth=1.0)[0] == pytest.approx(1 - 4 / 10, rel=1e-6)


def test_each_class_counts_equally():
    y_true = np.zeros((1, 4, 4, 2), np.float32)
    y_true[..., 0] = 1.0
    y_true[0, 0, 0] = [0.0, 1.0]  # class 1: one pixel
    y_pred = np.zeros_like(y_true)
    y_pred[..., 0] = 1.0  # class 1 missed
    assert call(y_true, y_pred, smooth=0.0)[0] == pytest.approx(1 - 0.5 * (15 / 16 + 0.0))


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_perfect_and_empty_masks_give_zero_with_finite_gradients(smooth):
    y_true = np.zeros((2, 3, 3, 2), np.float32)
    y_true[0, :2, :2, 0] = 1.0
    loss, grad = gradient(y_true, y_true.copy(), smooth=smooth)
    np.testing.assert_array_equal(loss, 0.0)
    assert np.all(np.isfinite(grad))


def test_gradient_is_the_analytic_one():
    """d(1 - J)/dp_i = -(t_i (U + s) - (I + s)(1 - t_i)) / (U + s)^2 for one class."""
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, size=(1, 3, 3, 1)).astype("float32")
    y_pred = rng.uniform(size=(1, 3, 3, 1)).astype("float32")
    t, p = np.float64(y_true), np.float64(y_pred)
    i, u = np.sum(p * t), np.sum(p) + np.sum(t) - np.sum(p * t)
    expected = -(t * (u + 1.0) - (i + 1.0) * (1.0 - t)) / (u + 1.0) ** 2
    _, grad = gradient(y_true, y_pred, smooth=1.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------- shapes and numerics
def test_class_id_masks_and_channel_free_binary_masks_are_accepted():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, size=(2, 4, 5))
    one_hot = np.eye(3, dtype="float32")[ids]
    y_pred = rng.uniform(size=(2, 4, 5, 3)).astype("float32")
    np.testing.assert_allclose(call(ids, y_pred), call(one_hot, y_pred), rtol=1e-6)
    np.testing.assert_allclose(call(ids[..., None], y_pred), call(one_hot, y_pred), rtol=1e-6)
    binary, probabilities = (ids == 1).astype("float32"), y_pred[..., 1:2]
    np.testing.assert_allclose(call(binary, probabilities), call(binary[..., None], probabilities))
    np.testing.assert_allclose(
        call(binary.reshape(2, -1), probabilities.reshape(2, -1)),
        call(binary[..., None], probabilities),
        rtol=1e-6,
    )


def test_mismatched_masks_and_bad_ids_are_refused():
    y_pred = np.full((2, 4, 4, 3), 1 / 3, np.float32)
    with pytest.raises(lossplug.InvalidTensorError, match=r"channels-last masks \(B, \.\.\., C\)"):
        call(np.zeros((2, 4, 2, 3), np.float32), y_pred)
    with pytest.raises(lossplug.InvalidTensorError, match="'jaccard'.*class ids of shape"):
        call(np.zeros((2, 4, 4, 2), np.float32), y_pred)
    with pytest.raises(Exception, match=r"'jaccard'.*class ids outside \[0, 3\)"):
        call(np.full((2, 4, 4), 3), y_pred)


def test_half_precision_masks_give_the_float32_loss():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(2, 64, 64, 1)).astype("float16")
    y_pred = rng.uniform(size=(2, 64, 64, 1)).astype("float16")
    loss = call(y_true, y_pred)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss, numpy_jaccard(y_true, y_pred, 1.0), rtol=1e-4)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"smooth": -1.0}, ["'jaccard'", "smooth=-1.0", "in [0.0, inf]"]),
        ({"smooth": float("nan")}, ["'jaccard'", "smooth=nan"]),
        ({"smooth": "1"}, ["'jaccard'", "smooth='1'", "int or float"]),
        ({"eps": 1e-7}, ["'jaccard'", "no parameter 'eps'", "smooth"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("jaccard", **config)
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------- end to end
def make_blobs(n, size=16, seed=0):
    """Noisy images with one or two small discs (about 8% foreground): an imbalanced task."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(2, size - 2, 2)
            radius = rng.uniform(1.2, 2.8)
            masks[i] = np.maximum(masks[i], (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2)
    images = masks * 0.8 + rng.normal(0.0, 0.5, masks.shape)
    return images[..., None].astype("float32"), masks[..., None]


def make_shapes(n, size=16, seed=0):
    """Class ids: a bright rectangle (1) and a dark 3x3 square (2) on noise (0)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        h, w = rng.integers(3, 7, 2)
        labels[i, r : r + h, c : c + w] = 1
        r, c = rng.integers(0, size - 3, 2)
        labels[i, r : r + 3, c : c + 3] = 2
    images = rng.normal(0.0, 0.6, size=(n, size, size, 1)).astype("float32")
    images[..., 0] += np.array([0.0, 1.0, -1.0], np.float32)[labels]
    return images, labels


def iou(truth, predicted):
    union = np.sum(truth | predicted)
    return float(np.sum(truth & predicted) / union) if union else 1.0


def segmenter(classes, loss):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    activation = "sigmoid" if classes == 1 else "softmax"
    masks = keras.layers.Conv2D(classes, 1, activation=activation, name="masks")(h)
    model = lossplug.LossModel(inputs, masks)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    return model


@pytest.mark.slow
def test_jaccard_segments_small_blobs_where_bce_gives_up():
    x, y = make_blobs(128, seed=0)
    x_test, y_test = make_blobs(128, seed=1)
    truth = y_test > 0.5
    results = {}
    for name in ("binary_crossentropy", "jaccard"):
        model = segmenter(1, name)
        if name == "jaccard":
            results["untrained"] = iou(truth, model.predict(x_test, verbose=0) > 0.5)
        history = model.fit(x, y, epochs=10, batch_size=16, verbose=0).history
        results[name] = iou(truth, model.predict(x_test, verbose=0) > 0.5)
    print("\nbinary blobs, held-out IoU:", {k: round(v, 3) for k, v in results.items()})
    assert set(history) == {"loss", "jaccard"}
    assert history["jaccard"][-1] < 0.6 * history["jaccard"][0]
    assert results["jaccard"] > results["untrained"] + 0.4
    assert results["jaccard"] > results["binary_crossentropy"] + 0.3


@pytest.mark.slow
def test_jaccard_next_to_cross_entropy_on_three_classes_with_class_id_masks():
    x, ids = make_shapes(128, seed=0)
    x_test, ids_test = make_shapes(128, seed=1)
    results = {}
    for loss in (
        ["sparse_categorical_crossentropy"],
        ["sparse_categorical_crossentropy", "jaccard"],
    ):
        model = segmenter(3, loss)
        model.fit(x, ids, epochs=10, batch_size=16, verbose=0)
        predicted = model.predict(x_test, verbose=0).argmax(-1)
        per_class = [iou(ids_test == c, predicted == c) for c in range(3)]
        results[" + ".join(loss)] = float(np.mean(per_class))
    print("\nthree classes, held-out mean IoU:", {k: round(v, 3) for k, v in results.items()})
    ce, both = results.values()
    assert both > 0.7 and both >= ce - 0.02

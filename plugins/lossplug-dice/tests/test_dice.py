"""The ``dice`` plugin: soft Dice mathematics, its errors, and a small segmentation."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attrs
import keras
import lossplug
import lossplug_dice
import numpy as np
import pytest
import segmentation_helpers as helpers
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.properties import Bounded, Example, Symmetric
from lossplug.testing import check_plugin, conformance_tests, value_and_gradients

SETTINGS = settings(max_examples=30, deadline=None)

test_conformance = conformance_tests("dice")  # the kit: every check and claim


#: The installed plugin's per-sample loss (float32 NumPy), called as the core calls it.
call = functools.partial(helpers.plugin_loss, "dice")
#: (loss, d sum(loss) / d y_pred), through the kit's harness.
gradient = functools.partial(helpers.loss_and_gradient, "dice")


# No subnormals: TensorFlow flushes them to zero on CPU, so a mask of 1e-45 is empty to the
# plugin but not to the NumPy references (which then disagree at smooth=0 for no real reason).
unit = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def mask_pairs(draw, binary_target=False, min_classes=1):
    shape = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 5)),
        draw(st.integers(min_classes, 4)),
    )
    target_elements = st.sampled_from([0.0, 1.0]) if binary_target else unit
    y_true = draw(hnp.arrays(np.float32, shape, elements=target_elements))
    y_pred = draw(hnp.arrays(np.float32, shape, elements=unit))
    return y_true, y_pred


smooths = st.sampled_from([0.0, 1e-3, 1.0, 10.0])


def numpy_dice(y_true, y_pred, smooth):
    """1 - mean over classes of (2 sum(p t) + s) / (sum(p) + sum(t) + s), per sample."""
    t, p = np.float64(y_true), np.float64(y_pred)
    spatial = tuple(range(1, t.ndim - 1))
    num = 2.0 * np.sum(p * t, axis=spatial) + smooth
    den = np.sum(p, axis=spatial) + np.sum(t, axis=spatial) + smooth
    ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return 1.0 - ratio.mean(axis=-1)


# --------------------------------------------------------------------- mathematics
@SETTINGS
@given(mask_pairs(), smooths)
def test_dice_equals_the_per_class_mean_of_soft_dice(pair, smooth):
    y_true, y_pred = pair
    np.testing.assert_allclose(
        call(y_true, y_pred, smooth=smooth),
        numpy_dice(y_true, y_pred, smooth),
        rtol=1e-5,
        atol=1e-6,
    )


@SETTINGS
@given(mask_pairs(), smooths)
def test_dice_is_within_zero_and_one(pair, smooth):
    value = call(*pair, smooth=smooth)
    assert np.all(value >= -1e-6) and np.all(value <= 1.0 + 1e-6)


@SETTINGS
@given(mask_pairs(), smooths)
def test_dice_is_symmetric_in_prediction_and_target(pair, smooth):
    y_true, y_pred = pair
    np.testing.assert_array_equal(
        call(y_true, y_pred, smooth=smooth), call(y_pred, y_true, smooth=smooth)
    )


@SETTINGS
@given(mask_pairs(binary_target=True), smooths)
def test_dice_is_zero_at_a_perfect_mask(pair, smooth):
    y_true, _ = pair
    np.testing.assert_array_equal(call(y_true, y_true, smooth=smooth), 0.0)
    np.testing.assert_array_equal(call(y_true, y_true, smooth=smooth, bce_weight=2.0), 0.0)


@SETTINGS
@given(mask_pairs(binary_target=True))
def test_with_smooth_zero_and_a_binary_mask_it_equals_keras_dice_per_sample(pair):
    """Keras' dice pools classes: with one class and no smoothing the two agree."""
    y_true, y_pred = pair
    y_true, y_pred = y_true[..., :1], y_pred[..., :1]
    keras_value = ops.convert_to_numpy(keras.losses.dice(y_true, y_pred, axis=(1, 2, 3)))
    ours = call(y_true, y_pred, smooth=0.0)
    both_empty = (y_true.sum(axis=(1, 2, 3)) + y_pred.sum(axis=(1, 2, 3))) == 0
    np.testing.assert_allclose(ours[~both_empty], keras_value[~both_empty], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours[both_empty], 0.0)  # Keras says 1 for an empty pair


def test_each_class_counts_equally_whatever_its_size():
    y_true = np.zeros((1, 4, 4, 2), np.float32)
    y_true[..., 0] = 1.0
    y_true[0, 0, 0] = [0.0, 1.0]  # class 1 is a single pixel
    y_pred = np.zeros_like(y_true)
    y_pred[..., 0] = 1.0  # class 0 right everywhere but one pixel, class 1 missed
    value = call(y_true, y_pred, smooth=0.0)[0]
    assert value == pytest.approx(1.0 - 0.5 * (2 * 15 / (16 + 15) + 0.0), rel=1e-6)
    pooled = float(ops.convert_to_numpy(keras.losses.dice(y_true, y_pred, axis=(1, 2, 3)))[0])
    assert pooled == pytest.approx(1.0 - 2 * 15 / 32, rel=1e-6)  # pooled: the miss barely counts
    assert value > 0.5


def test_empty_masks_are_perfect_and_stay_finite_with_smooth_zero():
    empty = np.zeros((2, 3, 3, 1), np.float32)
    value, grads = value_and_gradients(
        lambda empty: lossplug_dice.dice_loss(empty, empty, smooth=0.0), {"empty": empty}
    )
    np.testing.assert_array_equal(value, 0.0)
    assert np.all(np.isfinite(grads["empty"]))


@pytest.mark.parametrize("smooth", [1e-7, 1e-3, 1.0])
def test_empty_target_gradient_is_the_analytic_one_for_any_smooth(smooth):
    """loss = 1 - mean_c s / (P_c + s) for empty targets: d loss / d p = 1 / (C s) at p = 0.

    With a tiny ``smooth`` the loss jumps from 0 to ~1 within p ~ smooth: autodiff
    gives that steep (correct) slope, which finite differences with a coarse step miss.
    """
    y_true = np.zeros((1, 1, 1, 2), np.float32)
    y_pred = np.zeros((1, 1, 1, 2), np.float32)
    value, grads = value_and_gradients(
        lambda y_true, y_pred: lossplug_dice.dice_loss(y_true, y_pred, smooth=smooth),
        {"y_true": y_true, "y_pred": y_pred},
        wrt=["y_pred"],
    )
    grad = grads["y_pred"]
    assert value[0] == 0.0
    np.testing.assert_allclose(
        grad, np.full((1, 1, 1, 2), 1.0 / (2 * np.float32(smooth))), rtol=1e-5
    )
    step = 1e-3 * smooth  # a step well inside the curvature scale agrees with autodiff
    nudged = ops.convert_to_numpy(
        lossplug_dice.dice_loss(y_true, y_pred + np.float32([[[[step, 0.0]]]]), smooth=smooth)
    )[0]
    assert nudged / step == pytest.approx(grad[0, 0, 0, 0], rel=1e-2)


def test_empty_masks_with_a_tiny_smooth_have_finite_gradients():
    """The slope 1 / (C smooth) above, finite down to smooth = 2**-126 on every backend."""
    helpers.check_empty_masks_with_a_tiny_smooth(gradient)


def test_flattened_and_one_pixel_masks_are_binary_masks():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(3, 10)).astype("float32")
    y_pred = rng.uniform(size=(3, 10)).astype("float32")
    np.testing.assert_allclose(
        call(y_true, y_pred), call(y_true[..., None], y_pred[..., None]), rtol=1e-6
    )
    np.testing.assert_allclose(
        call(y_true[:, 0], y_pred[:, 0]), call(y_true[:, :1], y_pred[:, :1]), rtol=1e-6
    )


@SETTINGS
@given(mask_pairs(), st.floats(0.0, 5.0, allow_nan=False))
def test_bce_term_adds_weighted_mean_binary_crossentropy(pair, weight):
    y_true, y_pred = pair
    y_pred = np.clip(y_pred, 0.01, 0.99)  # where Keras' clipping and ours agree
    bce = ops.convert_to_numpy(
        ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    )
    np.testing.assert_allclose(
        call(y_true, y_pred, bce_weight=weight) - call(y_true, y_pred),
        weight * bce,
        rtol=1e-4,
        atol=1e-5,
    )


def test_bce_term_is_finite_with_finite_gradients_at_saturated_predictions():
    y_true = np.array([[[[1.0], [0.0]]]], np.float32)
    y_pred = np.array([[[[0.0], [1.0]]]], np.float32)  # confidently wrong everywhere
    value, grads = value_and_gradients(
        lambda y_true, y_pred: lossplug_dice.dice_loss(y_true, y_pred, bce_weight=1.0),
        {"y_true": y_true, "y_pred": y_pred},
        wrt=["y_pred"],
    )
    assert np.all(np.isfinite(value)) and value[0] > 10.0
    assert np.all(np.isfinite(grads["y_pred"]))


def test_half_precision_masks_give_a_float32_loss():
    helpers.check_half_precision_gives_the_float32_loss(
        call, lambda y_true, y_pred: numpy_dice(y_true, y_pred, 1.0)
    )


# --------------------------------------------------------------------- spec, config, errors
def test_spec_claims_bounds_and_symmetry_without_bce_and_zero_at_perfect():
    spec = lossplug.registry.spec("dice")
    claims = {p.key: p for p in spec.properties}
    assert set(claims) == {"bounded", "symmetric", "zero_at_perfect"}
    assert isinstance(claims["bounded"], Bounded)
    assert (claims["bounded"].low, claims["bounded"].high) == (0.0, 1.0)
    assert isinstance(claims["symmetric"], Symmetric)
    assert {claims["symmetric"].first, claims["symmetric"].second} == {"y_true", "y_pred"}
    # bounds and symmetry are claimed at bce_weight=0 only; zero at perfect for every config
    assert claims["bounded"].at == claims["symmetric"].at == {"bce_weight": 0.0}
    assert claims["zero_at_perfect"].at == {}
    assert claims["bounded"].describe() == "0.0 <= loss <= 1.0 at bce_weight=0.0"
    # ... because with the BCE term the bound does not hold, nor the symmetry:
    saturated_true, saturated_pred = (
        np.ones((1, 2, 2, 1), "float32"),
        np.zeros((1, 2, 2, 1), "float32"),
    )
    assert call(saturated_true, saturated_pred, bce_weight=1.0)[0] > 1.0
    assert call(saturated_true, saturated_pred)[0] <= 1.0
    rng = np.random.default_rng(0)
    soft = rng.uniform(size=(2, 3, 3, 2)).astype("float32")
    other = soft[::-1].copy()
    assert not np.allclose(call(soft, other, bce_weight=1.0), call(other, soft, bce_weight=1.0))
    np.testing.assert_allclose(call(soft, other), call(other, soft), rtol=1e-6)
    config = spec.make_config({"bce_weight": 1.0})
    perfect = claims["zero_at_perfect"].perfect(
        Example({"y_true": soft}, {"y_pred": other}, config)
    )
    assert set(np.unique(perfect.inputs["y_true"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(
        call(perfect.inputs["y_true"], perfect.outputs["y_pred"], bce_weight=1.0), 0.0
    )


class _UnrestrictedDice:
    """dice with its bounds and symmetry claimed at every config (no at=): false claims."""

    def __init__(self, spec):
        properties = (Bounded(0.0, 1.0), Symmetric("y_true", "y_pred", rtol=1e-5))
        self.spec = attrs.evolve(spec, name="dice_unrestricted", properties=properties)

    @lossplug.hookimpl
    def lossplug_spec(self):
        return self.spec

    @lossplug.hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        return lossplug_dice.build_loss_graph(inputs, outputs, extras)


def test_the_claims_need_their_at():
    lossplug.register(_UnrestrictedDice(lossplug.registry.spec("dice")))
    try:
        report = check_plugin("dice_unrestricted", only=["bounded", "symmetric"])
    finally:
        lossplug.unregister("dice_unrestricted")
    assert [r.status for r in report.results] == ["failed", "failed"], str(report)
    assert all(r.example.config.bce_weight > 0.0 for r in report.results)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"smooth": -1.0}, ["'dice'", "smooth=-1.0", "in [0.0, inf]"]),
        ({"bce_weight": -0.5}, ["'dice'", "bce_weight=-0.5", "in [0.0, inf]"]),
        ({"bce_weight": "a lot"}, ["'dice'", "bce_weight='a lot'", "int or float"]),
        ({"smooth": float("nan")}, ["'dice'", "smooth=nan"]),
        ({"from_logits": True}, ["'dice'", "no parameter 'from_logits'", "smooth", "bce_weight"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("dice", **config)
    for word in words:
        assert word in str(info.value)


def test_class_id_masks_and_channel_free_binary_masks_are_accepted():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, size=(2, 4, 5))
    y_pred = rng.uniform(size=(2, 4, 5, 3)).astype("float32")
    expected = call(np.eye(3, dtype="float32")[ids], y_pred, bce_weight=0.5)
    np.testing.assert_allclose(call(ids, y_pred, bce_weight=0.5), expected, rtol=1e-6)
    np.testing.assert_allclose(call(ids[..., None], y_pred, bce_weight=0.5), expected, rtol=1e-6)
    binary = (ids == 1).astype("float32")
    np.testing.assert_allclose(
        call(binary, y_pred[..., 1:2]), call(binary[..., None], y_pred[..., 1:2]), rtol=1e-6
    )


def test_mismatched_masks_are_refused_with_the_convention():
    helpers.check_mismatched_masks_are_refused("dice", call)


def test_dice_name_means_the_plugin_in_a_loss_model():
    term = lossplug.terms.as_term("dice")
    assert term.plugin == "dice" and term.keras_loss is None


# --------------------------------------------------------------------- end to end
def make_segmentation_data(n=96, seed=0):
    """Images with a rectangle (class 1, bright) and a square (class 2, grey), little noise;
    one-hot masks."""
    images, ids = helpers.make_shapes(n, seed=seed, noise=0.1, values=(0.0, 1.0, 0.5))
    return images, np.eye(3, dtype="float32")[ids]


@pytest.mark.slow
def test_small_segmentation_learns_and_logs_the_dice_term():
    keras.utils.set_random_seed(0)
    x, y = make_segmentation_data()
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    masks = keras.layers.Conv2D(3, 1, activation="softmax", name="masks")(h)
    model = lossplug.LossModel(inputs, masks)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=lossplug.use("dice", bce_weight=0.5))
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0).history
    assert set(history) == {"loss", "dice"}
    assert history["dice"][-1] < 0.5 * history["dice"][0]
    # evaluate's value is the plugin's math on predict's masks
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    bce = -np.mean(
        y * np.log(np.maximum(pred, 1e-7)) + (1 - y) * np.log(np.maximum(1 - pred, 1e-7)),
        axis=(1, 2, 3),
    )
    expected = np.mean(numpy_dice(y, pred, 1.0) + 0.5 * bce)
    assert result["dice"] == pytest.approx(expected, rel=1e-4)
    hard = np.eye(3)[pred.argmax(-1)]
    assert np.mean(numpy_dice(y, hard, 1.0)) < 0.35  # the masks found are mostly right


def test_lossplug_get_gives_a_keras_loss_for_plain_keras_models():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 6, 6, 1)).astype("float32")
    y = (x > 0.5).astype("float32")
    inputs = keras.Input((6, 6, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(loss=lossplug.get("dice", smooth=0.5))
    value = model.evaluate(x, y, batch_size=5, verbose=0)
    expected = np.mean(numpy_dice(y, model.predict(x, verbose=0), 0.5))
    assert value == pytest.approx(expected, rel=1e-5)

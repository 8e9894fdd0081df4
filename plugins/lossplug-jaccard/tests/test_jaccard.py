"""The ``jaccard`` plugin: soft IoU mathematics, mask shapes, errors and two segmentations."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import lossplug
import numpy as np
import pytest
import segmentation_helpers as helpers
from hypothesis import given, settings
from lossplug.properties import Example
from lossplug.testing import conformance_tests
from lossplug_jaccard import claims

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

test_conformance = conformance_tests("jaccard")  # the kit: every check and claim


#: The installed plugin's per-sample loss (float32 NumPy), called as the core calls it.
call = functools.partial(helpers.plugin_loss, "jaccard")
#: (loss, d sum(loss) / d y_pred), through the kit's harness (no TensorFlow import here).
gradient = functools.partial(helpers.loss_and_gradient, "jaccard")


def numpy_jaccard(y_true, y_pred, smooth):
    """1 - mean_c (I_c + s) / (P_c + T_c - I_c + s), a 0/0 ratio being 1."""
    t, p = np.float64(y_true), np.float64(y_pred)
    spatial = tuple(range(1, t.ndim - 1))
    intersection = np.sum(p * t, axis=spatial)
    union = np.sum(p, axis=spatial) + np.sum(t, axis=spatial) - intersection + smooth
    ratio = np.where(union > 0, (intersection + smooth) / np.where(union > 0, union, 1.0), 1.0)
    return 1.0 - ratio.mean(axis=-1)


# --------------------------------------------------------------------- mathematics
@SETTINGS
@given(helpers.mask_pairs(binary_target=False), helpers.smooths)
def test_matches_the_soft_iou_formula(pair, smooth):
    y_true, y_pred = pair
    np.testing.assert_allclose(
        call(y_true, y_pred, smooth=smooth),
        numpy_jaccard(y_true, y_pred, smooth),
        rtol=2e-5,
        atol=2e-6,
    )


@SETTINGS
@given(helpers.mask_pairs(binary_target=False), helpers.smooths)
def test_is_within_zero_and_one_and_exactly_symmetric(pair, smooth):
    y_true, y_pred = pair
    value = call(y_true, y_pred, smooth=smooth)
    assert np.all(value >= 0.0) and np.all(value <= 1.0)
    np.testing.assert_array_equal(value, call(y_pred, y_true, smooth=smooth))


@SETTINGS
@given(helpers.mask_pairs(binary_target=False))
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
    helpers.check_perfect_and_empty_masks_give_zero(gradient, smooth=smooth)


def test_empty_masks_with_a_tiny_smooth_have_finite_gradients():
    """d loss / d p = 1 / (C smooth) at empty masks, finite down to smooth = 2**-126 on every
    backend (the kit's finite_extremes failed on JAX at smooth = 3.2e-33 with NaN)."""
    helpers.check_empty_masks_with_a_tiny_smooth(gradient)


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
    helpers.check_mask_layouts_are_accepted(call)


def test_mismatched_masks_and_bad_ids_are_refused():
    helpers.check_mismatched_masks_are_refused("jaccard", call)
    helpers.check_bad_class_ids_are_refused("jaccard", call, bad_id=3)


def test_half_precision_masks_give_the_float32_loss():
    helpers.check_half_precision_gives_the_float32_loss(
        call, lambda y_true, y_pred: numpy_jaccard(y_true, y_pred, 1.0)
    )


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
@pytest.mark.slow
def test_jaccard_segments_small_blobs_at_least_as_well_as_bce():
    """Small blobs (8 % foreground): the Jaccard loss reaches a held-out IoU of 0.68 to 0.71
    whatever the initial weights (the seeds 0..5 on the three backends; untrained 0.01 to
    0.11), and a held-out Jaccard distance, the quantity it minimises, of 0.30 to 0.34.

    Binary cross-entropy is a matter of luck here: it gives up on the blobs (IoU 0, the
    empty mask) from some initial weights and reaches an IoU of 0.34 to 0.69 from others,
    on every backend (the same initial weights and batches give the same IoU on all
    three), with a held-out Jaccard distance of 0.42 to 0.71. So the Jaccard loss is
    compared with it as no worse, not by a fixed margin.
    """
    x, y = helpers.make_blobs(128, seed=0)
    x_test, y_test = helpers.make_blobs(128, seed=1)
    truth = y_test > 0.5
    results, distance = {}, {}
    for name in ("binary_crossentropy", "jaccard"):
        model = helpers.segmenter(1, name)
        if name == "jaccard":
            results["untrained"] = helpers.iou(truth, model.predict(x_test, verbose=0) > 0.5)
        history = model.fit(x, y, epochs=10, batch_size=16, verbose=0).history
        predicted = model.predict(x_test, verbose=0)
        results[name] = helpers.iou(truth, predicted > 0.5)
        distance[name] = float(call(y_test, predicted).mean())
    print(
        "\nbinary blobs, held-out IoU:",
        {k: round(v, 3) for k, v in results.items()},
        "held-out Jaccard distance:",
        {k: round(v, 3) for k, v in distance.items()},
    )
    assert set(history) == {"loss", "jaccard"}
    assert history["jaccard"][-1] < 0.6 * history["jaccard"][0]
    assert results["jaccard"] > results["untrained"] + 0.4
    # on unseen masks: a lower Jaccard distance than cross-entropy's (the loss's own
    # objective), and hard masks at least as good
    assert distance["jaccard"] < distance["binary_crossentropy"]
    assert results["jaccard"] >= results["binary_crossentropy"] - 0.02


@pytest.mark.slow
def test_jaccard_next_to_cross_entropy_on_three_classes_with_class_id_masks():
    x, ids = helpers.make_shapes(128, seed=0)
    x_test, ids_test = helpers.make_shapes(128, seed=1)
    results = {}
    for loss in (
        ["sparse_categorical_crossentropy"],
        ["sparse_categorical_crossentropy", "jaccard"],
    ):
        model = helpers.segmenter(3, loss)
        model.fit(x, ids, epochs=10, batch_size=16, verbose=0)
        predicted = model.predict(x_test, verbose=0).argmax(-1)
        results[" + ".join(loss)] = float(helpers.per_class_iou(ids_test, predicted).mean())
    print("\nthree classes, held-out mean IoU:", {k: round(v, 3) for k, v in results.items()})
    ce, both = results.values()
    assert both > 0.7 and both >= ce - 0.02

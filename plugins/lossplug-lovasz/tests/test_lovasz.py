"""The ``lovasz`` plugin: Algorithm 1 of the paper, its special cases, errors and two segmentations."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
import pytest
import segmentation_helpers as helpers
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.properties import Example
from lossplug.testing import conformance_tests
from lossplug_lovasz import CLASSES, claims
from lossplug_lovasz.loss import lovasz_extension

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

test_conformance = conformance_tests("lovasz")  # the kit: every check and claim


#: The installed plugin's per-image loss (float32 NumPy), called as the core calls it.
call = functools.partial(helpers.plugin_loss, "lovasz")
#: (loss, d sum(loss) / d y_pred), through the kit's harness (no TensorFlow import here).
gradient = functools.partial(helpers.loss_and_gradient, "lovasz")


def example(y_true, y_pred, **config):
    spec = lossplug.registry.spec("lovasz")
    return Example({"y_true": y_true}, {"y_pred": y_pred}, spec.make_config(config))


logit = st.floats(-6.0, 6.0, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def batches(draw, mode):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    shape = (*shape, draw(st.integers(1, 4)))
    y_true = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 1.0])))
    elements = logit if mode == "binary" else helpers.unit
    # few distinct values, so that ties in the sort are common
    y_pred = draw(hnp.arrays(np.float32, shape, elements=st.one_of(elements, st.just(0.5))))
    return y_true, y_pred


# --------------------------------------------------------------------- mathematics
@SETTINGS
@given(st.data(), st.sampled_from(["softmax", "binary"]), st.sampled_from(CLASSES))
def test_matches_the_papers_algorithm_one_image_and_class_at_a_time(data, mode, classes):
    y_true, y_pred = data.draw(batches(mode))
    config = {"mode": mode, "classes": classes}
    np.testing.assert_allclose(
        call(y_true, y_pred, **config),
        claims.reference(example(y_true, y_pred, **config)),
        rtol=1e-5,
        atol=1e-6,
    )


@SETTINGS
@given(batches("softmax"), st.sampled_from(CLASSES))
def test_hard_probabilities_give_one_minus_iou(pair, classes):
    y_true, y_pred = pair
    ex = example(y_true, np.round(y_pred), classes=classes)

    def loss_fn(e):
        return call(e.inputs["y_true"], e.outputs["y_pred"], classes=classes)

    claims.check_hard_predictions_give_one_minus_iou(ex, loss_fn)


def test_hinge_with_unit_logits_is_twice_one_minus_iou():
    """Logits +-1 for a 0/1 prediction q: errors 0 where q = t and 2 where q != t."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(3, 5, 5, 1)).astype("float32")
    q = rng.integers(0, 2, size=(3, 5, 5, 1)).astype("float32")
    t, q_ = y_true > 0.5, q > 0.5
    iou = np.sum(t & q_, axis=(1, 2, 3)) / np.sum(t | q_, axis=(1, 2, 3))
    np.testing.assert_allclose(call(y_true, 2 * q - 1, mode="binary"), 2 * (1 - iou), rtol=1e-6)


def test_ties_and_pixel_order_do_not_matter():
    y_true = np.zeros((1, 4, 4, 1), np.float32)
    y_true[0, 1:3, 1:3] = 1.0
    flat = np.full((1, 4, 4, 1), 0.5, np.float32)  # every error 0.5: loss 0.5 * J_S = 0.5
    assert call(y_true, flat)[0] == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    y_pred = rng.uniform(size=(1, 4, 4, 1)).astype("float32")
    perm = rng.permutation(16)
    shuffled_true = y_true.reshape(1, 16, 1)[:, perm]
    shuffled_pred = y_pred.reshape(1, 16, 1)[:, perm]
    np.testing.assert_allclose(call(shuffled_true, shuffled_pred), call(y_true, y_pred), rtol=1e-6)


def test_the_extension_is_positively_homogeneous_and_convex_in_the_errors():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, size=(4, 30)).astype("float32")
    a, b = rng.uniform(size=(2, 4, 30)).astype("float32")

    def f(errors):
        return ops.convert_to_numpy(lovasz_extension(ops.convert_to_tensor(errors), targets))

    np.testing.assert_allclose(f(3.0 * a), 3.0 * f(a), rtol=1e-5)
    assert np.all(f(0.5 * (a + b)) <= 0.5 * (f(a) + f(b)) + 1e-6)


@SETTINGS
@given(batches("softmax"), st.sampled_from(CLASSES))
def test_lovasz_softmax_of_probabilities_is_at_most_one(pair, classes):
    y_true, y_pred = pair
    assert np.all(call(y_true, y_pred, classes=classes) <= 1.0 + 1e-6)


def test_pixels_zeroed_in_both_masks_are_ignored_in_softmax_mode():
    """Zero error: such a pixel ranks last (with the other exact pixels) and adds nothing."""
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 3, size=(2, 20))
    y_true = np.eye(3, dtype="float32")[ids]
    y_pred = rng.dirichlet(np.ones(3), size=(2, 20)).astype("float32")
    kept = call(y_true[:, :14], y_pred[:, :14])
    y_true[:, 14:], y_pred[:, 14:] = 0.0, 0.0  # the ignored pixels
    np.testing.assert_allclose(call(y_true, y_pred), kept, rtol=1e-6)


def test_softmax_gradient_is_the_sorted_jaccard_gradient():
    """d loss / d p_i = sign(p_i - t_i) g_(rank of pixel i), for one present class."""
    y_true = np.array([[1.0, 0.0, 1.0, 0.0, 0.0]], np.float32)[..., None]
    y_pred = np.array([[0.9, 0.8, 0.1, 0.3, 0.05]], np.float32)[..., None]
    errors = np.abs(y_true - y_pred)[0, :, 0]  # 0.1, 0.8, 0.9, 0.3, 0.05
    order = np.argsort(-errors)
    g = claims.lovasz_grad(y_true[0, order, 0].astype(np.float64))
    expected = np.zeros(5)
    expected[order] = g * np.sign(y_pred - y_true)[0, order, 0]
    loss, grad = gradient(y_true, y_pred)
    assert loss[0] == pytest.approx(float(np.dot(errors[order], g)), rel=1e-6)
    np.testing.assert_allclose(grad[0, :, 0], expected, rtol=1e-5)


def test_present_skips_absent_classes_and_all_charges_their_largest_probability():
    y_true = np.zeros((1, 2, 2, 3), np.float32)
    y_true[..., 0] = 1.0  # only class 0 in the target
    y_pred = np.zeros_like(y_true)
    y_pred[..., 0] = 1.0
    y_pred[0, 0, 0] = [0.6, 0.4, 0.0]  # class 1 predicted with 0.4 on one pixel
    present = call(y_true, y_pred, classes="present")[0]
    everything = call(y_true, y_pred, classes="all")[0]
    assert present == pytest.approx(0.4 * 0.25)  # class 0: one error of 0.4, g_1 = 1/4
    assert everything == pytest.approx((0.4 * 0.25 + 0.4 + 0.0) / 3)  # absent: max p
    assert call(y_true, y_pred)[0] == present  # auto = present in softmax mode


def test_binary_auto_counts_empty_images_as_the_paper_does():
    """An empty mask: J_k = 1 for every k, so the loss is the largest hinge error."""
    empty = np.zeros((2, 3, 3, 1), np.float32)
    logits = np.full_like(empty, -2.0)
    logits[1, 1, 1] = 0.5  # one spurious positive: hinge error 1.5
    np.testing.assert_allclose(call(empty, logits, mode="binary"), [0.0, 1.5])
    np.testing.assert_array_equal(call(empty, logits, mode="binary", classes="present"), 0.0)


def test_extreme_logits_and_half_precision_stay_finite_and_float32():
    y_true = np.zeros((2, 3, 3, 1), np.float32)
    y_true[0, :2] = 1.0
    logits = np.where(y_true > 0, -1e4, 1e4).astype("float32")  # confidently wrong
    loss, grad = gradient(y_true, logits, mode="binary")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)) and loss[0] > 1e3
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, size=(2, 32, 32))
    y_pred = rng.dirichlet(np.ones(3), size=(2, 32, 32)).astype("float16")
    loss = call(ids, y_pred)
    assert loss.dtype == np.float32
    reference = claims.reference(example(np.eye(3)[ids], y_pred.astype(np.float64)))
    np.testing.assert_allclose(loss, reference, rtol=1e-4)


# --------------------------------------------------------------------- shapes and config
def test_class_id_masks_and_flattened_binary_masks_are_accepted():
    """Softmax probabilities over three classes; logits (the hinge) for the binary mask."""
    helpers.check_mask_layouts_are_accepted(
        call,
        y_pred=lambda rng: rng.dirichlet(np.ones(3), size=(2, 4, 5)).astype("float32"),
        binary_pred=lambda rng: rng.normal(size=(2, 4, 5, 1)).astype("float32"),
        mode="binary",
    )


def test_mismatched_masks_and_bad_ids_are_refused():
    helpers.check_mismatched_masks_are_refused("lovasz", call)
    helpers.check_bad_class_ids_are_refused("lovasz", call, bad_id=7)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"mode": "hinge"}, ["'lovasz'", "mode='hinge'", "'softmax'", "'binary'"]),
        ({"classes": [1, 2]}, ["'lovasz'", "classes=[1, 2]", "'present'", "'all'"]),
        ({"per_image": False}, ["'lovasz'", "no parameter 'per_image'", "mode", "classes"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("lovasz", **config)
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_lovasz_hinge_on_logits_matches_binary_cross_entropy():
    x, y = helpers.make_blobs(128, seed=0, radius=(3.0, 5.0))  # about 26% foreground
    x_test, y_test = helpers.make_blobs(128, seed=1, radius=(3.0, 5.0))
    truth = y_test > 0.5
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    results = {}
    for name, loss in (("bce", bce), ("lovasz hinge", lossplug.use("lovasz", mode="binary"))):
        model = helpers.segmenter(1, loss, logits=True)
        if name == "bce":
            results["untrained"] = helpers.iou(truth, model.predict(x_test, verbose=0) > 0.0)
        history = model.fit(x, y, epochs=10, batch_size=16, verbose=0).history
        results[name] = helpers.iou(truth, model.predict(x_test, verbose=0) > 0.0)
    print("\nbinary discs, held-out IoU:", {k: round(v, 3) for k, v in results.items()})
    assert history["lovasz"][-1] < 0.5 * history["lovasz"][0]
    assert results["lovasz hinge"] > results["untrained"] + 0.4
    assert results["lovasz hinge"] >= results["bce"] - 0.01


@pytest.mark.slow
def test_lovasz_softmax_on_three_classes_matches_cross_entropy():
    x, ids = helpers.make_shapes(128, seed=0)
    x_test, ids_test = helpers.make_shapes(128, seed=1)
    results = {}
    for loss in ("sparse_categorical_crossentropy", "lovasz"):
        model = helpers.segmenter(3, loss)
        model.fit(x, ids, epochs=10, batch_size=16, verbose=0)
        predicted = model.predict(x_test, verbose=0).argmax(-1)
        results[loss] = helpers.per_class_iou(ids_test, predicted)
    print(
        "\nthree classes, held-out IoU per class and mean:",
        {k: (np.round(v, 3).tolist(), round(float(v.mean()), 3)) for k, v in results.items()},
    )
    ours, ce = results["lovasz"], results["sparse_categorical_crossentropy"]
    assert ours.mean() >= ce.mean() - 0.01 and ours.min() > 0.5

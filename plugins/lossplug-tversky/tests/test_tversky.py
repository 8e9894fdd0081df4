"""The ``tversky`` plugin (Tversky and focal Tversky): the paper's formulas, conventions, errors and a segmentation."""

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
from keras import ops
from lossplug.properties import Example
from lossplug.testing import conformance_tests
from lossplug_tversky import claims

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

test_conformance = conformance_tests("tversky")  # the kit: every check and claim


#: The installed plugin's per-sample loss (float32 NumPy), called as the core calls it.
call = functools.partial(helpers.plugin_loss, "tversky")
#: (loss, d sum(loss) / d y_pred), through the kit's harness (no TensorFlow import here).
gradient = functools.partial(helpers.loss_and_gradient, "tversky")


def numpy_tversky(y_true, y_pred, alpha, beta, gamma, smooth):
    """mean_c (1 - TI_c)^(1/gamma), TI_c = (TP + s) / (TP + alpha FP + beta FN + s) (Abraham & Khan)."""
    t, p = np.float64(y_true), np.float64(y_pred)
    spatial = tuple(range(1, t.ndim - 1))
    tp = np.sum(p * t, axis=spatial)
    fp = np.sum(p * (1 - t), axis=spatial)
    fn = np.sum((1 - p) * t, axis=spatial)
    den = tp + alpha * fp + beta * fn + smooth
    index = np.where(den > 0, (tp + smooth) / np.where(den > 0, den, 1.0), 1.0)
    return np.mean(np.maximum(1.0 - index, 0.0) ** (1.0 / gamma), axis=-1)


weights = st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0, 2.0])
gammas = st.sampled_from([0.5, 1.0, 4.0 / 3.0, 2.0, 3.0])


# --------------------------------------------------------------------- mathematics
@SETTINGS
@given(helpers.mask_pairs(binary_target=False), weights, weights, gammas, helpers.smooths)
def test_matches_the_papers_formula(pair, alpha, beta, gamma, smooth):
    if alpha + beta == 0:
        alpha = 0.5
    y_true, y_pred = pair
    np.testing.assert_allclose(
        call(y_true, y_pred, alpha=alpha, beta=beta, gamma=gamma, smooth=smooth),
        numpy_tversky(y_true, y_pred, alpha, beta, gamma, smooth),
        rtol=2e-5,
        atol=2e-6,
    )


def test_a_hand_computed_value_in_abraham_and_khans_convention():
    """One 2x2 binary mask: TP = 0.9, FP = 0.2, FN = 1.1 (the default alpha, beta, gamma)."""
    y_true = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]]], np.float32)
    y_pred = np.array([[[[0.9], [0.0]], [[0.2], [0.0]]]], np.float32)
    index = (0.9 + 1.0) / (0.9 + 0.3 * 0.2 + 0.7 * 1.1 + 1.0)
    assert call(y_true, y_pred)[0] == pytest.approx((1 - index) ** 0.75, rel=1e-6)
    assert call(y_true, y_pred, gamma=1.0)[0] == pytest.approx(1 - index, rel=1e-6)


@SETTINGS
@given(helpers.mask_pairs(), helpers.smooths)
def test_at_half_half_and_gamma_one_it_is_dice_with_twice_the_smoothing(pair, smooth):
    y_true, y_pred = pair
    config = {"alpha": 0.5, "beta": 0.5, "gamma": 1.0, "smooth": smooth}
    spec = lossplug.registry.spec("tversky")
    example = Example({"y_true": y_true}, {"y_pred": y_pred}, spec.make_config(config))
    t, p = np.float64(y_true), np.float64(y_pred)
    num, den = 2 * (p * t).sum((1, 2)) + 2 * smooth, (p + t).sum((1, 2)) + 2 * smooth
    dice = 1 - np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), 1), -1)  # 0/0: 1
    np.testing.assert_allclose(claims.dice_reference(example), dice, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(call(y_true, y_pred, **config), dice, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(helpers.mask_pairs(binary_target=False), helpers.smooths, st.sampled_from([0.0, 0.2, 0.5]))
def test_more_weight_on_an_error_never_lowers_the_loss(pair, smooth, base):
    y_true, y_pred = pair
    values = [call(y_true, y_pred, alpha=a, beta=0.5, smooth=smooth) for a in (base, 0.7, 1.5)]
    assert np.all(np.diff(values, axis=0) >= -1e-6)
    values = [call(y_true, y_pred, alpha=0.5, beta=b, smooth=smooth) for b in (base, 0.7, 1.5)]
    assert np.all(np.diff(values, axis=0) >= -1e-6)


def test_beta_above_alpha_punishes_a_missed_pixel_more_than_a_spurious_one():
    y_true = np.zeros((2, 4, 4, 1), np.float32)
    y_true[:, :2, :2] = 1.0
    missed, spurious = y_true.copy(), y_true.copy()
    missed[0, 0, 0] = 0.0  # one false negative
    spurious[0, 3, 3] = 1.0  # one false positive
    loss_missed = call(y_true[:1], missed[:1], smooth=0.0)[0]
    loss_spurious = call(y_true[:1], spurious[:1], smooth=0.0)[0]
    assert loss_missed > loss_spurious > 0.0


def test_keras_tversky_weighs_false_negatives_with_alpha():
    """keras.losses.tversky(alpha=a, beta=b) is this loss with alpha=b, beta=a (gamma=1, smooth=0)."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(3, 5, 5, 1)).astype("float32")
    y_pred = rng.uniform(size=(3, 5, 5, 1)).astype("float32")
    theirs = ops.convert_to_numpy(
        keras.losses.tversky(y_true, y_pred, alpha=0.2, beta=0.8, axis=(1, 2, 3))
    )
    ours = call(y_true, y_pred, alpha=0.8, beta=0.2, gamma=1.0, smooth=0.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    swapped_back = call(y_true, y_pred, alpha=0.2, beta=0.8, gamma=1.0, smooth=0.0)
    assert not np.allclose(swapped_back, theirs, rtol=1e-3)


def test_multi_class_averages_the_classes():
    y_true = np.zeros((1, 4, 4, 2), np.float32)
    y_true[..., 0] = 1.0
    y_true[0, 0, 0] = [0.0, 1.0]
    y_pred = np.zeros_like(y_true)
    y_pred[..., 0] = 1.0  # class 1 (one pixel) missed
    per_class = [
        call(y_true[..., c : c + 1], y_pred[..., c : c + 1], smooth=0.0)[0] for c in (0, 1)
    ]
    assert call(y_true, y_pred, smooth=0.0)[0] == pytest.approx(np.mean(per_class), rel=1e-6)
    assert per_class[1] == pytest.approx(1.0)  # nothing of class 1 found


# --------------------------------------------------------------------- shapes and numerics
def test_class_id_masks_and_channel_free_binary_masks_are_accepted():
    helpers.check_mask_layouts_are_accepted(call)


def test_mismatched_masks_are_refused_with_the_convention():
    helpers.check_mismatched_masks_are_refused("tversky", call)


def test_class_ids_out_of_range_are_refused():
    helpers.check_bad_class_ids_are_refused("tversky", call, bad_id=3)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 4.0 / 3.0, 3.0])
def test_perfect_and_empty_masks_give_zero_with_finite_gradients(gamma):
    for smooth in (0.0, 1.0):
        helpers.check_perfect_and_empty_masks_give_zero(gradient, gamma=gamma, smooth=smooth)


@pytest.mark.parametrize(("gamma", "slope"), [(1.0, 0.3), (4.0 / 3.0, 0.0)])
def test_empty_masks_with_a_tiny_smooth_have_finite_gradients(gamma, slope):
    """d loss / d p = alpha / (C smooth) at empty masks for gamma = 1, 0 for the focal power
    (its slope at a distance of 0); finite down to smooth = 2**-126 on every backend."""
    helpers.check_empty_masks_with_a_tiny_smooth(gradient, slope, alpha=0.3, gamma=gamma)


def test_near_perfect_focal_gradient_is_the_analytic_one():
    """(1 - TI)^0.75 is steep near TI = 1: its gradient is 0.75 d^(-1/4) times Tversky's.

    All 16 target pixels are 1 and S = sum(p) = 16 - 1e-4, so FP = 0, FN = 16 - S and
    d = 1 - TI = 0.7 (16 - S) / (0.3 S + 11.2), dd/dp_i = dd/dS = -11.2 / (0.3 S + 11.2)^2.
    """
    y_true = np.ones((1, 4, 4, 1), np.float32)
    y_pred = y_true.copy()
    y_pred[0, 0, 0, 0] = 1.0 - 1e-4
    s = float(np.sum(y_pred.astype(np.float64)))
    d = 0.7 * (16 - s) / (0.3 * s + 11.2)
    slope = -11.2 / (0.3 * s + 11.2) ** 2
    loss, grad = gradient(y_true, y_pred, smooth=0.0)
    assert loss[0] == pytest.approx(d**0.75, rel=1e-3)
    np.testing.assert_allclose(grad, 0.75 * d**-0.25 * slope, rtol=1e-3)
    _, plain = gradient(y_true, y_pred, smooth=0.0, gamma=1.0)
    np.testing.assert_allclose(plain, slope, rtol=1e-3)
    assert np.all(np.abs(grad) > 15 * np.abs(plain))  # the focal exponent amplifies it


def test_half_precision_masks_give_the_float32_loss():
    helpers.check_half_precision_gives_the_float32_loss(
        call, lambda y_true, y_pred: numpy_tversky(y_true, y_pred, 0.3, 0.7, 4 / 3, 1.0)
    )


# --------------------------------------------------------------------- config and names
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"alpha": -0.1}, ["'tversky'", "alpha=-0.1", "in [0.0, inf]"]),
        ({"beta": float("nan")}, ["'tversky'", "beta=nan"]),
        ({"gamma": 0.0}, ["'tversky'", "gamma=0.0", "in [0.1, 10.0]"]),
        ({"gamma": 12.0}, ["'tversky'", "gamma=12.0", "in [0.1, 10.0]"]),
        ({"smooth": -1.0}, ["'tversky'", "smooth=-1.0", "in [0.0, inf]"]),
        ({"gamma": "4/3"}, ["'tversky'", "gamma='4/3'", "int or float"]),
        ({"alpha": 0.0, "beta": 0.0}, ["'tversky'", "at least one must be positive"]),
        ({"beta": 1e-300}, ["'tversky'", "beta=1e-300", "0 or at least 1e-06"]),
        ({"delta": 0.6}, ["'tversky'", "no parameter 'delta'", "alpha", "gamma"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("tversky", **config)
    for word in words:
        assert word in str(info.value)


def test_defaults_are_abraham_and_khans():
    config = lossplug.use("tversky").config
    assert (config.alpha, config.beta, config.gamma, config.smooth) == (0.3, 0.7, 4 / 3, 1.0)


def test_tversky_names_the_plugin_and_not_keras_loss():
    """The core lets this plugin shadow Keras' "tversky" (as dice); other names stay Keras'."""
    assert "tversky" in lossplug.specs.SHADOWABLE_KERAS_NAMES
    assert "tversky" in lossplug.specs.KERAS_LOSS_NAMES
    term = lossplug.terms.as_term("tversky")
    assert term.plugin == "tversky" and term.keras_loss is None
    assert lossplug.registry.spec("tversky").name == "tversky"
    assert isinstance(lossplug.get("tversky"), lossplug.PluginLoss)
    assert lossplug.terms.as_term("mse").keras_loss is not None


def test_keras_tversky_stays_available_as_an_object():
    """keras.losses.Tversky() (pooled over the batch) is still Keras' loss, in any compile."""
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, size=(3, 4, 4, 1)).astype("float32")
    y_pred = rng.uniform(size=(3, 4, 4, 1)).astype("float32")
    pooled = float(ops.convert_to_numpy(keras.losses.Tversky(alpha=0.3, beta=0.7)(y_true, y_pred)))
    t, p = y_true.astype(np.float64), y_pred.astype(np.float64)
    tp, fn, fp = (p * t).sum(), ((1 - p) * t).sum(), (p * (1 - t)).sum()
    assert pooled == pytest.approx(1 - tp / (tp + 0.3 * fn + 0.7 * fp), rel=1e-5)


# --------------------------------------------------------------------- end to end
def scores(y, probabilities):
    """(IoU, recall, precision, mean Tversky loss with the default weights) of predicted
    masks."""
    hard, truth = probabilities > 0.5, y > 0.5
    hits = np.sum(hard & truth)
    precision = float(hits / np.sum(hard)) if np.any(hard) else 1.0
    tversky = float(call(y, probabilities).mean())
    return helpers.iou(truth, hard), float(hits / np.sum(truth)), precision, tversky


def train(loss, x, y, x_test, y_test):
    """:func:`scores` on the test masks before and after 10 epochs, and the history."""
    model = helpers.segmenter(1, loss)
    before = scores(y_test, model.predict(x_test, verbose=0))
    history = model.fit(x, y, epochs=10, batch_size=16, verbose=0).history
    return before, scores(y_test, model.predict(x_test, verbose=0)), history


@pytest.mark.slow
def test_tversky_segments_small_blobs_and_its_weights_trade_precision_for_recall():
    """Small blobs (8 % foreground), with the seeds 0..5 on the three backends: the default
    loss (alpha = 0.3, beta = 0.7, gamma = 4/3) reaches a held-out IoU of 0.59 to 0.72
    (untrained 0.01 to 0.11) and a held-out Tversky loss of 0.25 to 0.29, against 0.37 to
    0.66 for binary cross-entropy, which gives up on the blobs (IoU 0) from some initial
    weights and not from others, on every backend, so it is no fixed-margin baseline.

    The weights are the claim: beta > alpha charges a missed pixel more than a false alarm.
    Swapped (alpha = 0.7, beta = 0.3, the same gamma) they give recall 0.69 to 0.86 and
    precision 0.76 to 0.91, the defaults recall 0.85 to 0.96 and precision 0.60 to 0.82;
    in every run the defaults found more of the blobs and paid for it in precision (by at
    least 0.05 each).
    """
    x, y = helpers.make_blobs(128, seed=0)
    x_test, y_test = helpers.make_blobs(128, seed=1)
    before, after, history = train("tversky", x, y, x_test, y_test)
    _, bce, _ = train("binary_crossentropy", x, y, x_test, y_test)
    _, swapped, _ = train(lossplug.use("tversky", alpha=0.7, beta=0.3), x, y, x_test, y_test)

    def row(values):
        return "IoU {:.3f}, recall {:.3f}, precision {:.3f}, Tversky loss {:.3f}".format(*values)

    print(
        f"\nheld-out masks: untrained {row(before)}\n  BCE {row(bce)}\n  swapped weights "
        f"(alpha=0.7, beta=0.3) {row(swapped)}\n  tversky defaults {row(after)}"
    )
    assert set(history) == {"loss", "tversky"}
    assert history["tversky"][-1] < 0.6 * history["tversky"][0]
    assert after[0] > before[0] + 0.4
    assert after[3] < bce[3]  # on unseen masks, the loss it minimises is lower than BCE's
    # beta > alpha: fewer missed pixels than with the weights swapped, more false alarms
    assert after[1] > swapped[1] and after[2] < swapped[2]

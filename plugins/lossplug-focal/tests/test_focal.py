"""Tests of the focal plugin: the mathematics, the config, and training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_focal as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.testing import (
    call_plugin,
    compiled,
    compiler_modes,
    conformance_tests,
    value_and_gradients,
)
from lossplug_focal import claims
from lossplug_focal.loss import focal_loss

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def run(y_true, y_pred, **config):
    """The installed plugin's per-sample loss (one value per row of y_pred) as float64 NumPy."""
    loss, _ = call_plugin("focal", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == np.shape(y_pred)[:-1]
    return loss.astype(np.float64)


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def categorical_reference(ids, logits, gamma, alpha):
    log_p = _log_softmax(logits)
    log_pt = np.take_along_axis(log_p, ids[:, None], -1)[:, 0]
    return (1.0 if alpha is None else alpha) * -((1 - np.exp(log_pt)) ** gamma) * log_pt


def binary_reference(t, z, gamma, alpha):
    z = np.asarray(z, np.float64)
    p = 0.5 * (1 + np.tanh(z / 2))
    bce = t * np.logaddexp(0, -z) + (1 - t) * np.logaddexp(0, z)
    pt = t * p + (1 - t) * (1 - p)
    w = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return (w * (1 - pt) ** gamma * bce).mean(-1)


@st.composite
def categorical(draw, scale=15.0):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(2, 8))
    logits = draw(hnp.arrays(np.float32, (b, c), elements=st.floats(-scale, scale, width=32)))
    ids = draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, c - 1)))
    return ids, logits


@st.composite
def binary(draw, scale=15.0):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(1, 5))
    logits = draw(hnp.arrays(np.float32, (b, c), elements=st.floats(-scale, scale, width=32)))
    t = draw(hnp.arrays(np.float32, (b, c), elements=st.sampled_from([0.0, 1.0])))
    return t, logits


gammas = st.floats(0.0, 5.0)
alphas = st.one_of(st.none(), st.floats(0.0, 1.0))


# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("focal")


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(categorical(), gammas, alphas)
def test_categorical_matches_reference(batch, gamma, alpha):
    ids, logits = batch
    np.testing.assert_allclose(
        run(ids, logits, gamma=gamma, alpha=alpha),
        categorical_reference(ids, logits, gamma, alpha),
        rtol=1e-4,
        atol=1e-6,
    )


@SETTINGS
@given(binary(), gammas, alphas)
def test_binary_matches_reference(batch, gamma, alpha):
    t, logits = batch
    np.testing.assert_allclose(
        run(t, logits, mode="binary", gamma=gamma, alpha=alpha),
        binary_reference(t, logits, gamma, alpha),
        rtol=1e-4,
        atol=1e-6,
    )


@SETTINGS
@given(categorical(), st.booleans())
def test_gamma_zero_without_alpha_is_keras_categorical_crossentropy(batch, from_logits):
    ids, logits = batch
    y_pred = logits if from_logits else keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[ids]
    expected = keras.ops.convert_to_numpy(
        keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=from_logits)
    )
    for y_true in (ids, one_hot):
        got = run(y_true, y_pred, gamma=0.0, alpha=None, from_logits=from_logits)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(binary(), st.booleans())
def test_gamma_zero_without_alpha_is_keras_binary_crossentropy(batch, from_logits):
    t, logits = batch
    y_pred = logits if from_logits else keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))
    expected = keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(t, y_pred, from_logits=from_logits)
    )
    got = run(t, y_pred, mode="binary", gamma=0.0, alpha=None, from_logits=from_logits)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(binary(scale=8.0), gammas, st.floats(0.0, 1.0))
def test_binary_matches_keras_binary_focal(batch, gamma, alpha):
    """Keras' BinaryFocalCrossentropy(apply_class_balancing=True) has the same definition."""
    t, logits = batch
    expected = keras.ops.convert_to_numpy(
        keras.losses.binary_focal_crossentropy(
            t, logits, apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=True
        )
    )
    got = run(t, logits, mode="binary", gamma=gamma, alpha=alpha)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(categorical(scale=8.0), gammas, st.floats(0.0, 1.0))
def test_categorical_matches_keras_categorical_focal(batch, gamma, alpha):
    ids, logits = batch
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[ids]
    expected = keras.ops.convert_to_numpy(
        keras.losses.categorical_focal_crossentropy(
            one_hot, logits, alpha=alpha, gamma=gamma, from_logits=True
        )
    )
    got = run(ids, logits, gamma=gamma, alpha=alpha)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(st.one_of(categorical(), binary()), st.sampled_from(["categorical", "binary"]), alphas)
def test_non_increasing_in_gamma_and_non_negative(batch, mode, alpha):
    y_true, logits = batch
    losses = [run(y_true, logits, mode=mode, gamma=g, alpha=alpha) for g in (0, 0.5, 1, 2, 5)]
    for smaller_gamma, larger_gamma in zip(losses, losses[1:], strict=False):
        assert np.all(larger_gamma <= smaller_gamma + 1e-6)
    assert np.all(losses[-1] >= 0)


@SETTINGS
@given(categorical(), st.floats(0.5, 5.0))
def test_down_weights_well_classified_examples(batch, gamma):
    """focal / CE = (1 - p_t)^gamma, smaller the better an example is classified."""
    ids, logits = batch
    ce = run(ids, logits, gamma=0.0, alpha=None)
    focal = run(ids, logits, gamma=gamma, alpha=None)
    p_t = np.exp(np.take_along_axis(_log_softmax(logits), ids[:, None], -1)[:, 0])
    np.testing.assert_allclose(focal, (1 - p_t) ** gamma * ce, rtol=1e-3, atol=1e-6)
    easy = p_t > 0.5
    assert np.all(focal[easy] <= 0.5**gamma * ce[easy] + 1e-6)


def test_easy_example_is_down_weighted_more_than_a_hard_one():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]], np.float32)  # easy, then hard
    ids = np.array([0, 0])
    ratio = run(ids, logits, gamma=2.0, alpha=None) / run(ids, logits, gamma=0.0, alpha=None)
    assert ratio[0] < 0.002 < 0.9 < ratio[1]


@pytest.mark.parametrize("mode", ["categorical", "binary"])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_gradients_finite_at_saturated_predictions(mode, gamma):
    z = np.array([[80.0, -80.0], [-80.0, 80.0]], np.float32)
    y = np.array([0, 0])
    loss, grads = value_and_gradients(
        lambda y, z: focal_loss(y, z, mode=mode, gamma=gamma, alpha=0.25), {"y": y, "z": z}
    )
    grad = grads["z"]
    assert np.all(np.isfinite(loss.sum())) and np.all(np.isfinite(grad))
    assert np.abs(grad[1]).max() > 0.01  # the misclassified example still gets a gradient


def test_binary_sparse_targets_are_one_vs_rest():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([0, 2, 1, 2])
    np.testing.assert_allclose(
        run(ids, logits, mode="binary"),
        run(np.eye(3, dtype=np.float32)[ids], logits, mode="binary"),
        rtol=1e-6,
    )
    single = logits[:, :1]
    t = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    np.testing.assert_allclose(
        run(t, single, mode="binary"), run(t[:, None], single, mode="binary"), rtol=1e-6
    )


def test_probabilities_at_zero_and_one_are_finite():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    for mode in ("categorical", "binary"):
        loss = run(np.array([1, 1]), probs, mode=mode, from_logits=False)
        assert np.all(np.isfinite(loss)) and loss[0] > loss[1] >= 0


def test_claim_helpers_hold_on_examples():
    rng = np.random.default_rng(3)
    for mode, y_true in (
        ("categorical", rng.integers(0, 4, size=(5,))),
        ("binary", rng.integers(0, 2, size=(5, 4)).astype(np.float32)),
    ):
        for from_logits in (True, False):
            z = rng.normal(size=(5, 4)).astype(np.float32) * 3
            y_pred = (
                z
                if from_logits
                else keras.ops.convert_to_numpy(
                    keras.ops.softmax(z) if mode == "categorical" else keras.ops.sigmoid(z)
                )
            )
            example = Example(
                inputs={"y_true": y_true},
                outputs={"y_pred": y_pred},
                config=plugin.SPEC.make_config({"mode": mode, "from_logits": from_logits}),
            )

            def loss_fn(ex):
                c = ex.config
                return run(
                    ex.inputs["y_true"],
                    ex.outputs["y_pred"],
                    mode=c.mode,
                    gamma=c.gamma,
                    alpha=c.alpha,
                    from_logits=c.from_logits,
                )

            claims.check_down_weighting(example, loss_fn)
            ce = example.replace(
                config=plugin.SPEC.make_config(
                    {"mode": mode, "from_logits": from_logits, "gamma": 0.0, "alpha": None}
                )
            )
            np.testing.assert_allclose(
                loss_fn(ce), claims.cross_entropy_reference(ce), rtol=1e-4, atol=1e-5
            )


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"gamma": -1.0}, "gamma=-1.0 is invalid: must be in [0.0, inf]"),
        ({"alpha": 1.5}, "alpha=1.5 is invalid: must be None or a number in [0.0, 1.0]"),
        ({"alpha": "x"}, "alpha='x' is invalid: must be None or a number in [0.0, 1.0], got str"),
        ({"alpha": True}, "got bool"),
        (
            {"mode": "multiclass"},
            "mode='multiclass' is invalid: must be one of 'categorical', 'binary'",
        ),
        ({"from_logits": "yes"}, "from_logits='yes' is invalid: must be bool"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("focal", **values)
    assert "'focal'" in str(info.value)
    assert fragment in str(info.value)


def test_alpha_none_is_accepted_and_saved():
    term = lossplug.use("focal", alpha=None, gamma=1.0)
    assert term.config.alpha is None
    again = lossplug.Term.from_config(term.get_config())
    assert again.config == term.config


def test_out_of_range_class_ids_fail_loudly():
    for mode in ("categorical", "binary"):
        with pytest.raises(lossplug.InvalidTensorError, match=r"class ids outside \[0, 3\)"):
            run(np.array([0, 3]), np.zeros((2, 3), np.float32), mode=mode)
    # each of the backend's compilers (XLA too, where the check cannot fire) gives the value
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    for mode in compiler_modes():
        got = keras.ops.convert_to_numpy(compiled(focal_loss, mode)(np.array([2]), logits))
        np.testing.assert_allclose(got, run(np.array([2]), logits), rtol=1e-6, err_msg=mode)


def test_mismatched_target_shape_is_explained():
    with pytest.raises(lossplug.InvalidTensorError, match=r"focal.*y_true has shape \(2, 3\)"):
        run(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


# ----------------------------------------------------------------- training
def _imbalanced_digits():
    """Digits as "is it a 0?": about 10% positives, a binary task focal loss is made for."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), (y == 0).astype("float32")[:, None], y


@pytest.mark.slow
def test_training_binary_and_categorical_on_digits():
    x, t, y = _imbalanced_digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = lossplug.LossModel(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=lossplug.use("focal", mode="binary", gamma=2.0, alpha=0.75),
    )
    history = model.fit(x, t, epochs=3, batch_size=64, verbose=0).history["focal"]
    assert history[-1] < 0.2 * history[0]
    predicted = model.predict(x, verbose=0)[:, 0] > 0
    recall = (predicted & (t[:, 0] == 1)).sum() / t.sum()
    assert recall > 0.9

    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    model = lossplug.LossModel(inputs, keras.layers.Dense(10)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="focal", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0).history
    assert history["focal"][-1] < 0.5 * history["focal"][0]
    assert history["accuracy"][-1] > 0.85
    # Focal loss ignores the easy examples: after training most of the loss comes from the
    # few examples the model still gets wrong or is unsure about.
    logits = model.predict(x, verbose=0)
    per_sample = run(y, logits)
    p_t = np.exp(np.take_along_axis(_log_softmax(logits), y[:, None], -1)[:, 0])
    hard = p_t < 0.5
    assert per_sample[hard].sum() > 0.5 * per_sample.sum()
    assert hard.mean() < 0.2

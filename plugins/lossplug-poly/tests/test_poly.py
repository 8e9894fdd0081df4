"""Tests of the poly plugin: the mathematics against NumPy and Keras, the config, training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attrs
import keras
import lossplug
import lossplug_poly as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import harness_for
from lossplug_poly import claims

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("poly")


def run(y_true, y_pred, **config):
    """The installed plugin's per-sample loss (one value per row of y_pred) as float64 NumPy."""
    loss, _ = call_plugin("poly", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == np.shape(y_pred)[:-1]
    return loss.astype(np.float64)


def gradient(y_true, y_pred, **config):
    """d sum(loss) / d y_pred through the kit's harness (no TensorFlow import here)."""
    example = Example({"y_true": y_true}, {"y_pred": y_pred}, plugin.SPEC.make_config(config))
    _, grads, _ = harness_for("poly").gradients(example, ["y_pred"])
    return grads["y_pred"]


# ------------------------------------------------------ independent NumPy reference
def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def categorical_reference(ids, logits, eps, alpha=0.0):
    """Leng et al. eq. (3) with the paper code's label smoothing, written out directly."""
    c = logits.shape[-1]
    q = (1 - alpha) * np.eye(c)[ids] + alpha / c
    log_p = _log_softmax(logits)
    ce = -(q * log_p).sum(-1)
    one_minus_pt = (q * (1 - np.exp(log_p))).sum(-1)
    return ce + eps * one_minus_pt


def binary_reference(t, z, eps, alpha=0.0):
    z = np.asarray(z, np.float64)
    t = (1 - alpha) * t + alpha / 2
    p = 0.5 * (1 + np.tanh(z / 2))
    bce = t * np.logaddexp(0, -z) + (1 - t) * np.logaddexp(0, z)
    return (bce + eps * (t * (1 - p) + (1 - t) * p)).mean(-1)


@st.composite
def categorical(draw, scale=20.0):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(2, 8))
    logits = draw(hnp.arrays(np.float32, (b, c), elements=st.floats(-scale, scale, width=32)))
    ids = draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, c - 1)))
    return ids, logits


@st.composite
def binary(draw, scale=20.0):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(1, 5))
    logits = draw(hnp.arrays(np.float32, (b, c), elements=st.floats(-scale, scale, width=32)))
    t = draw(hnp.arrays(np.float32, (b, c), elements=st.sampled_from([0.0, 1.0])))
    return t, logits


epsilons = st.floats(-1.0, 5.0)
alphas = st.floats(0.0, 1.0)


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(categorical(), epsilons, alphas)
def test_categorical_matches_the_paper(batch, eps, alpha):
    ids, logits = batch
    np.testing.assert_allclose(
        run(ids, logits, epsilon=eps, label_smoothing=alpha),
        categorical_reference(ids, logits, eps, alpha),
        rtol=1e-5,
        atol=1e-5,
    )


@SETTINGS
@given(binary(), epsilons, alphas)
def test_binary_matches_the_paper(batch, eps, alpha):
    t, logits = batch
    np.testing.assert_allclose(
        run(t, logits, mode="binary", epsilon=eps, label_smoothing=alpha),
        binary_reference(t, logits, eps, alpha),
        rtol=1e-5,
        atol=1e-5,
    )


@SETTINGS
@given(categorical(), st.floats(0.0, 0.99), st.booleans())
def test_epsilon_zero_is_keras_categorical_crossentropy(batch, alpha, from_logits):
    ids, logits = batch
    y_pred = logits if from_logits else keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[ids]
    expected = keras.ops.convert_to_numpy(
        keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=from_logits, label_smoothing=alpha
        )
    )
    for y_true in (ids, one_hot):
        got = run(y_true, y_pred, epsilon=0.0, label_smoothing=alpha, from_logits=from_logits)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(binary(scale=8.0), st.floats(0.0, 0.99), st.booleans())
def test_epsilon_zero_is_keras_binary_crossentropy(batch, alpha, from_logits):
    """(Saturated probabilities differ: Keras takes 1 - clip(p), this plugin clip(1 - p).)"""
    t, logits = batch
    y_pred = logits if from_logits else keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))
    expected = keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(t, y_pred, from_logits=from_logits, label_smoothing=alpha)
    )
    got = run(t, y_pred, mode="binary", epsilon=0.0, label_smoothing=alpha, from_logits=from_logits)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5)


@SETTINGS
@given(
    st.one_of(categorical(scale=60.0), binary(scale=60.0)),
    st.sampled_from(["categorical", "binary"]),
)
def test_non_negative_down_to_epsilon_minus_one_and_monotone(batch, mode):
    y_true, logits = batch
    losses = [run(y_true, logits * 100, mode=mode, epsilon=e) for e in (-1.0, -0.3, 0.0, 1.0, 4.0)]
    assert np.all(np.isfinite(losses))
    assert np.all(losses[0] >= 0)
    for smaller, larger in zip(losses, losses[1:], strict=False):
        assert np.all(larger >= smaller - 1e-6)


def test_epsilon_below_minus_one_would_go_negative_so_it_is_rejected():
    """-log p + eps (1 - p) < 0 just below p = 1 when eps < -1: the range stops at -1."""
    logits = np.array([[3.0, 0.0]])
    assert categorical_reference(np.array([0]), logits, -1.5)[0] < 0
    assert run(np.array([0]), logits.astype(np.float32), epsilon=-1.0)[0] >= 0
    with pytest.raises(lossplug.PluginConfigError, match=r"epsilon=-1.5 is invalid: must be in"):
        lossplug.use("poly", epsilon=-1.5)


@SETTINGS
@given(categorical(scale=6.0), epsilons)
def test_probabilities_agree_with_logits(batch, eps):
    ids, logits = batch
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(
        run(ids, probs, epsilon=eps, from_logits=False),
        run(ids, logits, epsilon=eps),
        rtol=1e-4,
        atol=1e-5,
    )
    sig = keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))
    np.testing.assert_allclose(
        run(ids, sig, mode="binary", epsilon=eps, from_logits=False),
        run(ids, logits, mode="binary", epsilon=eps),
        rtol=1e-4,
        atol=1e-5,
    )


def test_gradient_is_the_papers():
    """d/dz_j of CE + eps (1 - p_t) = p_j - t_j - eps p_t (t_j - p_j) (softmax Jacobian)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32) * 3
    ids = np.array([0, 3, 4, 1])
    for eps in (-1.0, 0.0, 1.0, 3.0):
        p = np.exp(_log_softmax(logits))
        t = np.eye(5)[ids]
        p_t = (t * p).sum(-1, keepdims=True)
        expected = p - t - eps * p_t * (t - p)
        np.testing.assert_allclose(gradient(ids, logits, epsilon=eps), expected, atol=1e-5)


def test_gradients_finite_at_saturated_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)
    ids = np.array([0, 0])
    for mode in ("categorical", "binary"):
        for eps in (-1.0, 1.0):
            grad = gradient(ids, logits, mode=mode, epsilon=eps)
            assert np.all(np.isfinite(grad))
            # the confident mistake still gets the full gradient (1, or 1 / C in binary mode)
            assert np.abs(grad[1]).max() > 0.3


def test_sparse_one_hot_and_single_unit_targets():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array([0, 2, 1, 2])
    one_hot = np.eye(3, dtype=np.float32)[ids]
    for mode in ("categorical", "binary"):
        a = run(ids, logits, mode=mode)
        np.testing.assert_allclose(run(ids[:, None], logits, mode=mode), a, rtol=1e-6)
        np.testing.assert_allclose(run(one_hot, logits, mode=mode), a, rtol=1e-6)
    single = logits[:, :1]
    t = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    np.testing.assert_allclose(
        run(t, single, mode="binary"), run(t[:, None], single, mode="binary"), rtol=1e-6
    )


def test_probabilities_at_zero_and_one_are_finite():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    for mode in ("categorical", "binary"):
        loss = run(np.array([1, 1]), probs, mode=mode, from_logits=False)
        assert np.all(np.isfinite(loss)) and loss[0] > 10 and 0 <= loss[1] < 1e-5


def test_claim_helpers_hold_on_examples():
    rng = np.random.default_rng(3)
    for mode in ("categorical", "binary"):
        for from_logits in (True, False):
            z = rng.normal(size=(5, 4)).astype(np.float32) * 3
            y_pred = z if from_logits else keras.ops.convert_to_numpy(keras.ops.softmax(z))
            config = plugin.SPEC.make_config(
                {"mode": mode, "from_logits": from_logits, "epsilon": 2.0, "label_smoothing": 0.1}
            )
            example = Example({"y_true": rng.integers(0, 4, size=(5,))}, {"y_pred": y_pred}, config)

            def loss_fn(ex):
                return run(ex.inputs["y_true"], ex.outputs["y_pred"], **attrs.asdict(ex.config))

            np.testing.assert_allclose(
                loss_fn(example), claims.poly1_reference(example), rtol=1e-4, atol=1e-5
            )
            claims.check_first_coefficient(example, loss_fn)
            perfect = claims.perfect(example)
            zero = perfect.replace(config=attrs.evolve(config, label_smoothing=0.0))
            np.testing.assert_allclose(loss_fn(zero), 0.0, atol=1e-5)


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"epsilon": -2.0}, "epsilon=-2.0 is invalid: must be in [-1.0, inf]"),
        ({"epsilon": float("nan")}, "epsilon=nan is invalid"),
        ({"epsilon": "1"}, "epsilon='1' is invalid: must be int or float, got str"),
        ({"label_smoothing": 1.5}, "label_smoothing=1.5 is invalid: must be in [0.0, 1.0]"),
        ({"mode": "sigmoid"}, "mode='sigmoid' is invalid: must be one of 'categorical', 'binary'"),
        ({"from_logits": "no"}, "from_logits='no' is invalid: must be bool"),
        ({"gamma": 2.0}, "has no parameter 'gamma'; its parameters are: epsilon"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("poly", **values)
    assert "'poly'" in str(info.value)
    assert fragment in str(info.value)


def test_out_of_range_class_ids_fail_loudly():
    for mode in ("categorical", "binary"):
        with pytest.raises(Exception, match=r"loss plugin 'poly'.*class ids outside \[0, 3\)"):
            run(np.array([0, 3]), np.zeros((2, 3), np.float32), mode=mode)


def test_mismatched_target_shape_is_explained():
    with pytest.raises(lossplug.InvalidTensorError, match=r"poly.*y_true has shape \(2, 3\)"):
        run(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


def test_registered_by_entry_point():
    assert "poly" in lossplug.available()
    assert lossplug.registry.spec("poly") is plugin.SPEC


# ----------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(
        (x / 16.0).astype("float32"), y, test_size=0.3, random_state=0, stratify=y
    )


def _train(x, y, loss, epochs=5):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    model = lossplug.LossModel(inputs, keras.layers.Dense(10)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0).history
    return model, history


@pytest.mark.slow
def test_training_on_digits_matches_cross_entropy():
    """Poly-1 (epsilon = 1, by name) trains as well as cross-entropy; epsilon = 0 *is* CE.

    Binary mode (one sigmoid per class) is held to Keras' binary cross-entropy of the
    one-hot targets, trained from the same initial weights, not to a fixed accuracy: after
    5 epochs it reaches 0.88 to 0.94 with the seeds 0..9 on the three backends (each
    backend draws its own initial weights; from the same weights and batches they train
    alike), 0.004 above to 0.031 below binary cross-entropy.
    """
    x_train, x_test, y_train, y_test = _digits()
    one_hot = np.eye(10, dtype="float32")[y_train]
    results, histories = {}, {}
    for label, loss, targets in (
        ("poly", "poly", y_train),
        ("poly epsilon=0", lossplug.use("poly", epsilon=0.0), y_train),
        (
            "keras cross-entropy",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            y_train,
        ),
        ("poly binary", lossplug.use("poly", mode="binary"), y_train),
        ("keras binary cross-entropy", keras.losses.BinaryCrossentropy(from_logits=True), one_hot),
    ):
        model, histories[label] = _train(x_train, targets, loss)
        results[label] = float((model.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    print(
        "\ndigits, held-out accuracy after 5 epochs:", {k: round(v, 4) for k, v in results.items()}
    )
    poly = histories["poly"]["poly"]
    assert poly[-1] < 0.2 * poly[0]
    assert results["poly"] > 0.9
    assert abs(results["poly"] - results["keras cross-entropy"]) < 0.03
    assert results["poly binary"] > results["keras binary cross-entropy"] - 0.05
    # the same initial weights and batches: epsilon = 0 follows cross-entropy's trajectory
    np.testing.assert_allclose(
        histories["poly epsilon=0"]["loss"], histories["keras cross-entropy"]["loss"], rtol=1e-4
    )
    assert results["poly epsilon=0"] == pytest.approx(results["keras cross-entropy"], abs=0.006)

"""Tests of the label_smoothing plugin: the mathematics, the config, and training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_label_smoothing as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug import backend
from lossplug.properties import Example
from lossplug.testing import (
    call_plugin,
    compiled,
    compiler_modes,
    conformance_tests,
    value_and_gradients,
)
from lossplug_label_smoothing import claims
from lossplug_label_smoothing.loss import label_smoothing_crossentropy, smoothed_targets

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
#: Eager JAX compiles every op for each new shape (seconds each, gradients included): there
#: the gradient test draws its batches with a few shapes, so the compilations are reused.
FEW_SHAPES = backend.name() == "jax"


def run(y_true, y_pred, **config):
    """The installed plugin's per-sample loss (one value per row of y_pred) as float64 NumPy."""
    loss, _ = call_plugin("label_smoothing", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == np.shape(y_pred)[:-1]
    return loss.astype(np.float64)


def reference(ids, logits, eps):
    """Independent float64 implementation: -sum_c q_c log softmax(z)_c."""
    z = np.asarray(logits, dtype=np.float64)
    c = z.shape[-1]
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    q = (1 - eps) * np.eye(c)[ids] + eps / c
    return -(q * log_p).sum(-1)


@st.composite
def batches(draw, max_classes=8, scale=20.0, few_shapes=False):
    """(class ids, logits); with ``few_shapes`` the sizes are the extremes of the ranges."""
    b = draw(st.sampled_from([1, 6]) if few_shapes else st.integers(1, 6))
    c = draw(st.sampled_from([2, max_classes]) if few_shapes else st.integers(2, max_classes))
    logits = draw(hnp.arrays(np.float32, (b, c), elements=st.floats(-scale, scale, width=32)))
    ids = draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, c - 1)))
    return ids, logits


epsilons = st.floats(0.0, 1.0)


# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("label_smoothing")


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(batches(), epsilons)
def test_matches_independent_reference(batch, eps):
    ids, logits = batch
    np.testing.assert_allclose(
        run(ids, logits, epsilon=eps), reference(ids, logits, eps), rtol=1e-5, atol=1e-5
    )


@SETTINGS
@given(batches(), st.booleans())
def test_epsilon_zero_is_keras_crossentropy(batch, from_logits):
    ids, logits = batch
    y_pred = logits if from_logits else keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[ids]
    expected = keras.ops.convert_to_numpy(
        keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=from_logits)
    )
    got_sparse = run(ids, y_pred, epsilon=0.0, from_logits=from_logits)
    got_dense = run(one_hot, y_pred, epsilon=0.0, from_logits=from_logits)
    np.testing.assert_allclose(got_sparse, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_dense, expected, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(batches(), st.floats(0.0, 0.99))
def test_matches_keras_label_smoothing_for_one_hot(batch, eps):
    """Keras' categorical_crossentropy(label_smoothing=eps) uses the same definition."""
    ids, logits = batch
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[ids]
    expected = keras.ops.convert_to_numpy(
        keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=eps
        )
    )
    np.testing.assert_allclose(run(ids, logits, epsilon=eps), expected, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(batches(scale=60.0), epsilons)
def test_non_negative_and_finite_for_extreme_logits(batch, eps):
    ids, logits = batch
    loss = run(ids, logits * 1e3, epsilon=eps)
    assert np.all(np.isfinite(loss))
    assert np.all(loss >= 0)


@SETTINGS
@given(batches(few_shapes=FEW_SHAPES), st.floats(0.01, 0.9))
def test_minimum_is_the_smoothed_target(batch, eps):
    """At logits log q: gradient softmax(z) - q is 0, and the loss equals H(q) < any other."""
    ids, logits = batch
    c = logits.shape[-1]
    q = (1 - eps) * np.eye(c)[ids] + eps / c
    best = np.log(q).astype(np.float32)
    entropy = -(q * np.log(q)).sum(-1)
    np.testing.assert_allclose(run(ids, best, epsilon=eps), entropy, rtol=1e-5, atol=1e-5)
    assert np.all(run(ids, logits, epsilon=eps) >= entropy - 1e-5)
    _, grads = value_and_gradients(
        lambda ids, z: label_smoothing_crossentropy(ids, z, epsilon=eps), {"ids": ids, "z": best}
    )
    np.testing.assert_allclose(grads["z"], 0.0, atol=1e-5)


@SETTINGS
@given(batches(), epsilons)
def test_sparse_forms_agree(batch, eps):
    """(B,), (B, 1) ids and one-hot rows give the same loss."""
    ids, logits = batch
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[ids]
    a = run(ids, logits, epsilon=eps)
    np.testing.assert_allclose(run(ids[:, None], logits, epsilon=eps), a, rtol=1e-6)
    np.testing.assert_allclose(run(one_hot, logits, epsilon=eps), a, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(batches(scale=5.0), epsilons)
def test_probabilities_agree_with_logits(batch, eps):
    ids, logits = batch
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(
        run(ids, probs, epsilon=eps, from_logits=False),
        run(ids, logits, epsilon=eps),
        rtol=1e-4,
        atol=1e-5,
    )


def test_soft_targets_and_sequence_shapes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)  # (batch, time, classes)
    soft = rng.dirichlet(np.ones(4), size=(3, 5)).astype(np.float32)
    loss = run(soft, logits, epsilon=0.2)
    assert loss.shape == (3, 5)
    q = 0.8 * soft + 0.05
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -(q * log_p).sum(-1), rtol=1e-5)
    ids = rng.integers(0, 4, size=(3, 5))
    assert run(ids, logits, epsilon=0.2).shape == (3, 5)


def test_zero_probability_is_finite():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    loss = run(np.array([1, 2]), probs, epsilon=0.1, from_logits=False)
    assert np.all(np.isfinite(loss))
    assert loss[0] > loss[1] > 0


def test_claims_hold_on_an_example():
    """The spec's own claim helpers (what the conformance kit runs) hold here."""
    rng = np.random.default_rng(1)
    config = plugin.SPEC.make_config({"epsilon": 0.2})
    example = Example(
        inputs={"y_true": rng.integers(0, 5, size=(4,))},
        outputs={"y_pred": rng.normal(size=(4, 5)).astype(np.float32)},
        config=config,
    )

    def loss_fn(ex):
        return run(
            ex.inputs["y_true"],
            ex.outputs["y_pred"],
            epsilon=ex.config.epsilon,
            from_logits=ex.config.from_logits,
        )

    claims.check_gibbs(example, loss_fn)
    claims.check_sparse_matches_one_hot(example, loss_fn)
    zero = example.replace(config=plugin.SPEC.make_config({"epsilon": 0.0}))
    np.testing.assert_allclose(loss_fn(zero), claims.keras_crossentropy(zero), rtol=1e-5)
    best = loss_fn(claims.perfect(example))
    assert np.all(best <= loss_fn(example) + 1e-6)


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"epsilon": -0.1}, "epsilon=-0.1 is invalid: must be in [0.0, 1.0]"),
        ({"epsilon": 1.5}, "epsilon=1.5 is invalid"),
        ({"epsilon": float("nan")}, "epsilon=nan is invalid"),
        ({"epsilon": "0.1"}, "must be int or float, got str"),
        ({"from_logits": 1}, "from_logits=1 is invalid: must be bool"),
        ({"smoothing": 0.1}, "has no parameter 'smoothing'; its parameters are: epsilon"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("label_smoothing", **values)
    assert "'label_smoothing'" in str(info.value)
    assert fragment in str(info.value)


def test_out_of_range_class_ids_fail_loudly():
    for ids in ([0, 3], [-1, 0]):
        with pytest.raises(lossplug.InvalidTensorError, match=r"class ids outside \[0, 3\)"):
            run(np.array(ids), np.zeros((2, 3), np.float32))
    # the check compiles with each of the backend's compilers (XLA too, where it cannot
    # fire) and does not change the value
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    for mode in compiler_modes():
        function = compiled(label_smoothing_crossentropy, mode)
        got = keras.ops.convert_to_numpy(function(np.array([2]), logits))
        np.testing.assert_allclose(got, run(np.array([2]), logits), err_msg=mode)


def test_mismatched_target_shape_is_explained():
    with pytest.raises(
        lossplug.InvalidTensorError, match=r"y_true has shape \(2, 3\) but y_pred has shape"
    ):
        run(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


def test_an_unknown_class_axis_is_explained():
    with pytest.raises(
        lossplug.InvalidTensorError, match=r"label_smoothing.*static size.*\(None, None\)"
    ):
        smoothed_targets(np.array([0, 1]), (None, None), 0.1)


def test_registered_by_entry_point():
    assert "label_smoothing" in lossplug.available()
    assert lossplug.registry.spec("label_smoothing") is plugin.SPEC


# ----------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def _train(x, y, loss, epochs=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    logits = keras.layers.Dense(10, name="logits")(hidden)
    model = lossplug.LossModel(inputs, logits)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model, history.history


def _softmax(logits):
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits))


@pytest.mark.slow
def test_training_on_digits_lowers_confidence():
    """The loss falls, the model learns, and smoothing keeps it less confident than plain CE."""
    x, y = _digits()
    model, history = _train(x, y, lossplug.use("label_smoothing", epsilon=0.2))
    losses = history["label_smoothing"]
    assert losses[-1] < losses[0] - 0.5
    assert history["accuracy"][-1] > 0.85
    plain, _ = _train(x, y, lossplug.use("label_smoothing", epsilon=0.0))
    smoothed_conf = _softmax(model.predict(x, verbose=0)).max(-1).mean()
    plain_conf = _softmax(plain.predict(x, verbose=0)).max(-1).mean()
    # With eps = 0.2 the best attainable confidence is 0.8 + 0.02 = 0.82.
    assert smoothed_conf < 0.82 + 0.01
    assert smoothed_conf < plain_conf - 0.05

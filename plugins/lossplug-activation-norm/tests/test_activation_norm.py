"""The ``activation_norm`` metric plugin: its mathematics and its value in History."""

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
from lossplug.terms import call_plugin
from lossplug.testing import conformance_tests

test_conformance = conformance_tests("activation_norm")  # the kit: every check and claim


def call(activations):
    """Call the installed plugin through the core's validation, as a LossModel does."""
    spec = lossplug.registry.spec("activation_norm")
    extras = lossplug.Extras(
        config=spec.make_config({}),
        epoch=ops.zeros((), "int64"),
        step=ops.zeros((), "int64"),
        training=True,
        state=lossplug.StateStore(plugin="activation_norm"),
    )
    return call_plugin(
        spec,
        lossplug.registry.hook_caller("activation_norm"),
        {},
        {"activations": activations},
        extras,
        term="activation_norm",
    )


def logged_key(logs, term="activation_norm"):
    """History key of the term's metric: a metric named like its plugin goes by the term name."""
    assert term in logs, f"expected the metric of {term!r} in {sorted(logs)}"
    assert not any(key.startswith(f"{term}_") for key in logs), sorted(logs)
    return term


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
        elements=st.floats(-100.0, 100.0, allow_nan=False, width=32),
    )
)
def test_metric_is_the_mean_squared_l2_norm_and_no_loss(activations):
    out = call(activations)
    assert out.loss is None
    ((name, (value, aggregation)),) = out.metrics.items()
    assert name == "activation_norm" and aggregation == "mean"
    flat = np.float64(activations).reshape(activations.shape[0], -1)
    expected = np.mean(np.sum(flat**2, axis=1))
    np.testing.assert_allclose(ops.convert_to_numpy(value), expected, rtol=1e-5, atol=1e-6)


def test_large_and_half_precision_activations_stay_finite_in_float32():
    value, _ = call(np.full((2, 1000), 1e4, np.float32)).metrics["activation_norm"]
    np.testing.assert_allclose(ops.convert_to_numpy(value), 1000 * 1e8, rtol=1e-6)
    value, _ = call(np.full((2, 3), 300.0, np.float16)).metrics["activation_norm"]
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(value), 3 * 9e4, rtol=1e-6)


def test_spec_declares_a_metric_only_plugin_without_parameters():
    spec = lossplug.registry.spec("activation_norm")
    assert spec.returns == "metrics" and spec.properties == ()
    with pytest.raises(lossplug.PluginConfigError, match="no parameter 'scale'.*(none)"):
        lossplug.use("activation_norm", scale=2.0)


@pytest.mark.slow
def test_activation_norm_of_an_exposed_layer_is_shown_while_training():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(2, name="logits")(hidden)
    model = lossplug.LossModel(inputs, logits, expose=["hidden"])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=[
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            lossplug.use("activation_norm", bind={"activations": "hidden"}),
        ],
    )
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_split=0.25).history
    key = logged_key(history)
    assert f"val_{key}" in history and len(history[key]) == 3
    assert all(value > 0.0 for value in history[key])
    # a metric: the total loss is the cross-entropy alone
    np.testing.assert_allclose(
        history["loss"], history["sparse_categorical_crossentropy"], rtol=1e-6
    )
    result = model.evaluate(x, y, batch_size=20, verbose=0, return_dict=True)
    activations = keras.Model(inputs, hidden).predict(x, verbose=0)
    expected = np.mean(np.sum(np.float64(activations) ** 2, axis=1))
    assert result[logged_key(result)] == pytest.approx(expected, rel=1e-5)

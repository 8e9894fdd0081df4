"""Tests of the regularized_mse plugin: the mathematics, the config, and training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_regularized_mse as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests, value_and_gradients
from lossplug_regularized_mse import claims
from lossplug_regularized_mse.loss import regularized_mse

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def run(y_true, y_pred, **config):
    """The installed plugin's per-sample loss (one value per row of y_pred) as float64 NumPy."""
    loss, _ = call_plugin("regularized_mse", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == np.shape(y_pred)[:-1]
    return loss.astype(np.float64)


@st.composite
def pairs(draw):
    b = draw(st.integers(1, 6))
    n = draw(st.integers(1, 6))
    values = st.floats(-10, 10, width=32)
    return (
        draw(hnp.arrays(np.float32, (b, n), elements=values)),
        draw(hnp.arrays(np.float32, (b, n), elements=values)),
    )


factors = st.floats(0.0, 100.0)


# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("regularized_mse")


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(pairs(), factors)
def test_matches_definition_and_is_non_negative(pair, factor):
    y, p = (a.astype(np.float64) for a in pair)
    expected = ((y - p) ** 2).mean(-1) + factor * ((0.5 - p) ** 2).mean(-1)
    loss = run(*pair, factor=factor)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
    assert np.all(loss >= 0)


@SETTINGS
@given(pairs())
def test_factor_zero_is_keras_mean_squared_error(pair):
    expected = keras.ops.convert_to_numpy(keras.losses.mean_squared_error(*pair))
    np.testing.assert_allclose(run(*pair, factor=0.0), expected, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(pairs(), st.lists(factors, min_size=2, max_size=4))
def test_non_decreasing_in_factor(pair, values):
    losses = [run(*pair, factor=f) for f in sorted(values)]
    for low, high in zip(losses, losses[1:], strict=False):
        assert np.all(high >= low - 1e-5 * (1 + np.abs(low)))


@SETTINGS
@given(pairs(), factors)
def test_minimum_is_pulled_towards_one_half(pair, factor):
    """The gradient vanishes at (y + factor / 2) / (1 + factor), and nothing is lower there."""
    y, p = pair
    best = ((y.astype(np.float64) + 0.5 * factor) / (1 + factor)).astype(np.float32)
    assert np.all(run(y, best, factor=factor) <= run(y, p, factor=factor) + 1e-5)
    _, grads = value_and_gradients(lambda z: regularized_mse(y, z, factor), {"z": best})
    scale = 1 + factor
    np.testing.assert_allclose(grads["z"] / scale, 0.0, atol=1e-5)


def test_sparse_targets_for_a_single_output():
    y = np.array([0.0, 1.0, 0.25], np.float32)
    p = np.array([[0.5], [0.5], [0.0]], np.float32)
    np.testing.assert_allclose(run(y, p, factor=1.0), [0.25, 0.25, 0.0625 + 0.25])


def test_claim_helpers_hold_on_an_example():
    rng = np.random.default_rng(0)
    example = Example(
        inputs={"y_true": rng.normal(size=(4, 3)).astype(np.float32)},
        outputs={"y_pred": rng.normal(size=(4, 3)).astype(np.float32)},
        config=plugin.SPEC.make_config({"factor": 0.0}),
    )

    def loss_fn(ex):
        return run(ex.inputs["y_true"], ex.outputs["y_pred"], factor=ex.config.factor)

    np.testing.assert_allclose(loss_fn(example), claims.keras_mse(example), rtol=1e-6)
    strong = example.replace(config=plugin.SPEC.make_config({"factor": 3.0}))
    assert np.all(loss_fn(claims.minimiser(strong)) < loss_fn(strong))


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"factor": -0.1}, "factor=-0.1 is invalid: must be in [0.0, inf]"),
        ({"factor": float("nan")}, "factor=nan is invalid"),
        ({"factor": "big"}, "must be int or float, got str"),
        ({"weight_decay": 1.0}, "has no parameter 'weight_decay'; its parameters are: factor"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("regularized_mse", **values)
    assert "'regularized_mse'" in str(info.value)
    assert fragment in str(info.value)


def test_shape_mismatch_is_explained():
    with pytest.raises(
        lossplug.InvalidTensorError, match="regularized_mse.*pass targets of y_pred's shape"
    ):
        run(np.zeros((2,), np.float32), np.zeros((2, 3, 4), np.float32))


# ----------------------------------------------------------------- training
@pytest.mark.slow
def test_training_fits_and_keeps_predictions_nearer_one_half():
    """Regression of bit-valued targets: the penalty shrinks predictions towards 0.5."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype("float32")
    target = (x[:, 27:28] > 0.5).astype("float32")  # a central pixel, predicted from all
    x = np.delete(x, 27, axis=1)

    def train(factor):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((63,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        model = lossplug.LossModel(inputs, keras.layers.Dense(1)(hidden))
        model.compile(
            keras.optimizers.Adam(0.01), loss=lossplug.use("regularized_mse", factor=factor)
        )
        history = model.fit(x, target, epochs=6, batch_size=64, verbose=0).history
        return model.predict(x, verbose=0)[:, 0], history["regularized_mse"]

    def excess(loss, factor):
        """How far ``loss`` is above the best possible, relative to the best constant.

        With bit targets the best prediction (y + factor / 2) / (1 + factor) loses
        factor / (4 (1 + factor)) per sample; the best constant c* = (p + factor / 2) /
        (1 + factor) loses mean((y - c*)^2) + factor (0.5 - c*)^2. 1 = no better than
        the constant, 0 = perfect.
        """
        best = factor / (4 * (1 + factor))
        c = (target.mean() + factor / 2) / (1 + factor)
        constant = float(np.mean((target - c) ** 2) + factor * (0.5 - c) ** 2)
        return (loss - best) / (constant - best)

    plain, plain_history = train(0.0)
    pulled, history = train(1.0)
    learned = {"plain": excess(plain_history[-1], 0.0), "factor 1": excess(history[-1], 1.0)}
    print(f"\nexcess loss of the last epoch over the best (1 = constant prediction): {learned}")
    # the network learns from the other pixels what no constant prediction can, with or
    # without the penalty
    assert learned["plain"] < 0.75
    assert learned["factor 1"] < 0.75
    spread_plain = np.abs(plain - 0.5).mean()
    spread_pulled = np.abs(pulled - 0.5).mean()
    assert 0.3 * spread_plain < spread_pulled < 0.65 * spread_plain

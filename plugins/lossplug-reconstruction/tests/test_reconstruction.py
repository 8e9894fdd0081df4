"""Tests of the reconstruction plugin: the mathematics, the config, and an autoencoder."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_reconstruction as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests, value_and_gradients
from lossplug_reconstruction import claims
from lossplug_reconstruction.loss import reconstruction_loss

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
KINDS = ("mse", "mae", "bce")


def run(x, y_pred, **config):
    """The installed plugin's per-sample loss (one value per sample) as float64 NumPy."""
    loss, _ = call_plugin("reconstruction", {"x": x}, {"y_pred": y_pred}, config=config)
    assert loss.shape == np.shape(y_pred)[:1]
    return loss.astype(np.float64)


@st.composite
def pairs(draw):
    """An input in [0, 1] and a reconstruction in [0, 1], shape (B, N) or (B, H, W, C)."""
    b = draw(st.integers(1, 5))
    rest = draw(st.sampled_from([(7,), (3, 2, 2)]))
    unit = st.floats(0.0, 1.0, width=32)
    x = draw(hnp.arrays(np.float32, (b, *rest), elements=unit))
    r = draw(hnp.arrays(np.float32, (b, *rest), elements=unit))
    return x, r


def numpy_reference(x, r, kind):
    x, r = x.astype(np.float64), r.astype(np.float64)
    axes = tuple(range(1, x.ndim))
    if kind == "mse":
        return ((r - x) ** 2).mean(axes)
    if kind == "mae":
        return np.abs(r - x).mean(axes)
    p = np.clip(r.astype(np.float32), np.float32(1e-7), np.float32(1 - 1e-7)).astype(np.float64)
    return (-(x * np.log(p) + (1 - x) * np.log(1 - p))).mean(axes)


# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("reconstruction")


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(pairs(), st.sampled_from(KINDS))
def test_matches_reference_and_is_non_negative(pair, kind):
    x, r = pair
    loss = run(x, r, kind=kind)
    assert loss.shape == (x.shape[0],)
    np.testing.assert_allclose(loss, numpy_reference(x, r, kind), rtol=1e-4, atol=1e-5)
    assert np.all(loss >= 0)


@SETTINGS
@given(pairs(), st.sampled_from(["mse", "mae"]))
def test_zero_exactly_when_output_equals_input(pair, kind):
    x, r = pair
    np.testing.assert_array_equal(run(x, x, kind=kind), 0.0)
    # rows differing by more than float32's underflow (a squared difference of 1e-38 is 0)
    gap = np.max(np.abs(x.astype(np.float64) - r), axis=tuple(range(1, x.ndim)))
    differs = gap > 1e-15
    assert np.all(run(x, r, kind=kind)[differs] > 0)


@SETTINGS
@given(pairs())
def test_bce_is_zero_at_binary_inputs_and_minimal_at_the_input(pair):
    x, r = pair
    binary = np.round(x)
    np.testing.assert_allclose(run(binary, binary, kind="bce"), 0.0, atol=2e-7)
    at_input = run(x, x, kind="bce")
    assert np.all(at_input <= run(x, r, kind="bce") + 1e-6)
    # the value at the input is the binary entropy of x
    np.testing.assert_allclose(at_input, numpy_reference(x, x, "bce"), rtol=1e-4, atol=1e-6)


@SETTINGS
@given(pairs(), st.sampled_from(["mse", "mae"]))
def test_mse_and_mae_are_symmetric(pair, kind):
    x, r = pair
    np.testing.assert_allclose(run(x, r, kind=kind), run(r, x, kind=kind), rtol=1e-6)


def test_mse_matches_keras_on_flat_inputs():
    rng = np.random.default_rng(0)
    x, r = rng.random((4, 9), np.float32), rng.random((4, 9), np.float32)
    np.testing.assert_allclose(
        run(x, r, kind="mse"),
        keras.ops.convert_to_numpy(keras.losses.mean_squared_error(x, r)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        run(x, r, kind="bce"),
        keras.ops.convert_to_numpy(keras.losses.binary_crossentropy(x, r)),
        rtol=1e-5,
    )


def test_bce_is_finite_at_saturated_outputs():
    x = np.array([[1.0, 0.0]], np.float32)
    r = np.array([[0.0, 1.0]], np.float32)
    loss, grads = value_and_gradients(lambda r: reconstruction_loss(x, r, "bce"), {"r": r})
    loss = loss.sum()
    assert np.isfinite(loss) and loss > 10
    assert np.all(np.isfinite(grads["r"]))


def test_claim_helpers_hold_on_examples():
    rng = np.random.default_rng(2)
    for kind in KINDS:
        example = Example(
            inputs={"x": rng.random((3, 6), np.float32)},
            outputs={"y_pred": rng.random((3, 6), np.float32)},
            config=plugin.SPEC.make_config({"kind": kind}),
        )

        def loss_fn(ex):
            return run(ex.inputs["x"], ex.outputs["y_pred"], kind=ex.config.kind)

        np.testing.assert_allclose(loss_fn(claims.perfect(example)), 0.0, atol=2e-7)
        claims.check_minimal_at_input(example, loss_fn)


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"kind": "l2"}, "kind='l2' is invalid: must be one of 'mse', 'mae', 'bce'"),
        ({"kind": None}, "kind=None is invalid"),
        ({"reduction": "sum"}, "has no parameter 'reduction'; its parameters are: kind"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("reconstruction", **values)
    assert "'reconstruction'" in str(info.value)
    assert fragment in str(info.value)


def test_shape_mismatch_is_explained():
    with pytest.raises(
        lossplug.InvalidTensorError, match=r"input x has shape \(2, 4\) but the reconstruction"
    ):
        run(np.zeros((2, 4), np.float32), np.zeros((2, 5), np.float32))


# ----------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32")


def _autoencoder(kind):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="pixels")
    code = keras.layers.Dense(16, activation="tanh", name="code")(inputs)
    activation = "sigmoid" if kind == "bce" else None
    outputs = keras.layers.Dense(64, activation=activation, name="decoded")(code)
    model = lossplug.LossModel(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss=lossplug.use("reconstruction", kind=kind)
    )
    return model


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_autoencoder_trains_with_fit_x_only(kind):
    x = _digits()
    model = _autoencoder(kind)
    history = model.fit(x, epochs=3, batch_size=64, verbose=0).history["reconstruction"]
    # the smallest reachable loss is its value at y_pred == x (0, or the entropy of x for bce)
    floor = run(x, x, kind=kind).mean()
    assert floor < history[-1] < floor + 0.6 * (history[0] - floor)
    decoded = model.predict(x, verbose=0)
    # the reconstructions are much closer to their own input than the mean image is
    err = np.square(decoded - x).mean()
    baseline = np.square(x.mean(0) - x).mean()
    assert err < 0.6 * baseline

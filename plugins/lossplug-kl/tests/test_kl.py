"""The ``kl`` plugin: the mathematics of both kinds, its errors, and VAE training with a warm-up."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_kl
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.properties import Example, NonNegative, ZeroAtPerfect
from lossplug.terms import reduce_per_sample
from lossplug.testing import call_plugin, conformance_tests, value_and_gradients

K1, K2, K3 = 0.63576, 1.87320, 1.48695
SETTINGS = settings(max_examples=30, deadline=None)

test_conformance = conformance_tests("kl")  # the kit: every check and claim


def call(outputs, **config):
    """The installed plugin's loss (float32 NumPy), called as the core calls it."""
    loss, _ = call_plugin("kl", {}, outputs, config=config)
    return loss


def floats(low, high):
    """float32 values in [low, high] (bounds rounded to float32)."""
    low, high = float(np.float32(low)), float(np.float32(high))
    return st.floats(
        low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32
    )


@st.composite
def gaussian_pairs(draw, low=-10.0, high=10.0, mean_range=30.0):
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 6)))
    mean = draw(hnp.arrays(np.float32, shape, elements=floats(-mean_range, mean_range)))
    log_var = draw(hnp.arrays(np.float32, shape, elements=floats(low, high)))
    return mean, log_var


def numpy_gaussian_kl(mean, log_var):
    mean, log_var = np.float64(mean), np.float64(log_var)
    return -0.5 * np.sum(1.0 + log_var - mean**2 - np.exp(log_var), axis=-1)


def numpy_vd_kl(log_alpha):
    la = np.float64(log_alpha)
    sigmoid = 1.0 / (1.0 + np.exp(-(K2 + K3 * la)))
    softplus = np.logaddexp(0.0, -la)
    neg_kl = K1 * sigmoid - 0.5 * softplus - K1
    return -np.sum(neg_kl)


# --------------------------------------------------------------------- gaussian
@SETTINGS
@given(gaussian_pairs())
def test_gaussian_equals_the_closed_form_per_sample(pair):
    mean, log_var = pair
    out = call({"mean": mean, "log_var": log_var})
    assert out.shape == (mean.shape[0],)
    np.testing.assert_allclose(out, numpy_gaussian_kl(mean, log_var), rtol=2e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(floats(-3.0, 3.0), floats(-2.0, 2.0))
def test_gaussian_equals_the_integral_of_q_log_q_over_p(mu, log_var):
    """An independent check: KL(q || p) = integral of q(x) log(q(x) / p(x)) dx, numerically."""
    sigma = np.exp(0.5 * np.float64(log_var))
    x = np.linspace(mu - 14 * sigma, mu + 14 * sigma, 40001)
    log_q = -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    log_p = -0.5 * x**2 - 0.5 * np.log(2 * np.pi)
    integral = np.trapezoid(np.exp(log_q) * (log_q - log_p), x)
    value = lossplug_kl.gaussian_kl(np.float32([[mu]]), np.float32([[log_var]]))
    np.testing.assert_allclose(ops.convert_to_numpy(value)[0], integral, rtol=1e-4, atol=1e-6)


@SETTINGS
@given(gaussian_pairs(low=-1e4, high=1e4, mean_range=1e4))
def test_gaussian_is_finite_and_non_negative_with_finite_gradients_at_extremes(pair):
    mean, log_var = pair
    value, grads = value_and_gradients(lossplug_kl.gaussian_kl, {"mean": mean, "log_var": log_var})
    assert np.all(np.isfinite(value)) and np.all(value >= 0.0)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


@SETTINGS
@given(gaussian_pairs(low=-1e-3, high=1e-3, mean_range=1e-3))
def test_gaussian_is_never_negative_near_the_prior(pair):
    """exp(lv) - 1 - lv loses everything to cancellation near 0; expm1 keeps it >= 0."""
    value = ops.convert_to_numpy(lossplug_kl.gaussian_kl(*pair))
    assert np.all(value >= 0.0)


def test_gaussian_is_zero_exactly_at_the_prior_and_positive_elsewhere():
    zeros = np.zeros((3, 4), np.float32)
    np.testing.assert_array_equal(call({"mean": zeros, "log_var": zeros}), 0.0)
    moved = zeros.copy()
    moved[1, 2] = 0.01
    out = call({"mean": moved, "log_var": zeros})
    np.testing.assert_array_equal(out[[0, 2]], 0.0)
    assert out[1] == pytest.approx(0.5 * 0.01**2, rel=1e-4)
    out = call({"mean": zeros, "log_var": moved})
    assert out[1] > 0.0


@SETTINGS
@given(gaussian_pairs())
def test_gaussian_sample_values_do_not_depend_on_the_rest_of_the_batch(pair):
    mean, log_var = pair
    together = ops.convert_to_numpy(lossplug_kl.gaussian_kl(mean, log_var))
    for i in range(mean.shape[0]):
        alone = ops.convert_to_numpy(lossplug_kl.gaussian_kl(mean[i : i + 1], log_var[i : i + 1]))
        # float32: each of the D terms is O(1) and they cancel to near 0, so the
        # summation order (which depends on the batch) moves the result by a few ulps of 1.
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=4e-6)


@SETTINGS
@given(gaussian_pairs())
def test_gaussian_mean_reduction_is_the_sum_over_the_latent_size(pair):
    mean, log_var = pair
    total = call({"mean": mean, "log_var": log_var})
    average = call({"mean": mean, "log_var": log_var}, reduction="mean")
    np.testing.assert_allclose(average, total / mean.shape[1], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(gaussian_pairs())
def test_gaussian_gradients_are_mu_and_half_of_expm1_log_var(pair):
    mean, log_var = pair
    _, grads = value_and_gradients(lossplug_kl.gaussian_kl, {"mean": mean, "log_var": log_var})
    np.testing.assert_allclose(grads["mean"], pair[0], rtol=1e-6)
    np.testing.assert_allclose(
        grads["log_var"], 0.5 * np.expm1(np.float64(pair[1])), rtol=1e-4, atol=1e-6
    )


def test_gaussian_clips_log_var_and_works_for_higher_rank_latents():
    mean = np.zeros((2, 3), np.float32)
    at_bound = ops.convert_to_numpy(
        lossplug_kl.gaussian_kl(mean, np.full((2, 3), 20.0, np.float32))
    )
    beyond = ops.convert_to_numpy(lossplug_kl.gaussian_kl(mean, np.full((2, 3), 500.0, np.float32)))
    np.testing.assert_array_equal(beyond, at_bound)
    below = ops.convert_to_numpy(lossplug_kl.gaussian_kl(mean, np.full((2, 3), -500.0, np.float32)))
    np.testing.assert_allclose(below, 3 * 0.5 * (np.exp(-30.0) - 1.0 + 30.0), rtol=1e-6)
    rng = np.random.default_rng(0)
    mu, lv = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
    np.testing.assert_allclose(
        ops.convert_to_numpy(lossplug_kl.gaussian_kl(mu, lv)),
        numpy_gaussian_kl(mu.reshape(2, -1), lv.reshape(2, -1)),
        rtol=1e-5,
    )


def test_gaussian_half_precision_inputs_give_a_float32_loss():
    mean = np.full((2, 3), 200.0, np.float16)  # mean^2 = 4e4: sum over 3 dims overflows float16
    out = call({"mean": mean, "log_var": np.zeros((2, 3), np.float16)})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 3 * 0.5 * 200.0**2, rtol=1e-4)


# --------------------------------------------------------------------- variational dropout
@SETTINGS
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=floats(-20.0, 20.0),
    ),
    st.integers(1, 4),
)
def test_variational_dropout_gives_every_sample_the_molchanov_kl(log_alpha, batch):
    y_pred = np.zeros((batch, 3), np.float32)
    out = call({"log_alpha": log_alpha, "y_pred": y_pred}, kind="variational_dropout")
    assert out.shape == (batch,)
    expected = np.full(batch, numpy_vd_kl(log_alpha))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # the core's mean over the batch adds the KL once, whatever the batch size
    reduced = ops.convert_to_numpy(reduce_per_sample(out))
    np.testing.assert_allclose(reduced, numpy_vd_kl(log_alpha), rtol=1e-5, atol=1e-6)
    mean = call(
        {"log_alpha": log_alpha, "y_pred": y_pred}, kind="variational_dropout", reduction="mean"
    )
    np.testing.assert_allclose(mean, expected / log_alpha.size, rtol=1e-5, atol=1e-7)


@SETTINGS
@given(floats(-30.0, 30.0), floats(1e-3, 10.0))
def test_variational_dropout_is_positive_and_decreasing_in_log_alpha(log_alpha, step):
    low = ops.convert_to_numpy(lossplug_kl.variational_dropout_kl(np.float32([log_alpha])))
    high = ops.convert_to_numpy(lossplug_kl.variational_dropout_kl(np.float32([log_alpha + step])))
    assert low > 0.0 and high > 0.0
    assert high <= low


def test_variational_dropout_limits():
    def kl(value):
        return float(ops.convert_to_numpy(lossplug_kl.variational_dropout_kl(np.float32([value]))))

    assert kl(40.0) < 1e-15  # alpha -> inf: the weight is dropped, no cost
    assert kl(-20.0) == pytest.approx(K1 + 0.5 * 20.0, rel=1e-6)  # ~ k1 - 0.5 * log_alpha
    assert kl(0.0) == pytest.approx(K1 * (1 - 1 / (1 + np.exp(-K2))) + 0.5 * np.log(2.0), rel=1e-6)


def test_variational_dropout_is_finite_with_finite_gradients_at_extremes():
    log_alpha = np.array([-1e4, -1e2, 0.0, 1e2, 1e4], np.float32)
    value, grads = value_and_gradients(lossplug_kl.variational_dropout_kl, {"log_alpha": log_alpha})
    grad = grads["log_alpha"]
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert np.all(grad <= 0.0)  # raising alpha always lowers the KL


# --------------------------------------------------------------------- spec, config, errors
def test_spec_claims_non_negative_and_zero_at_the_prior():
    spec = lossplug.registry.spec("kl")
    assert spec.returns == "per_sample"
    claims = {type(p): p for p in spec.properties}
    assert NonNegative in claims
    rng = np.random.default_rng(1)
    example = Example(
        inputs={},
        outputs={
            "mean": rng.normal(size=(3, 2)).astype("float32"),
            "log_var": rng.normal(size=(3, 2)).astype("float32"),
        },
        config=spec.make_config({}),
    )
    perfect = claims[ZeroAtPerfect].perfect(example)
    np.testing.assert_array_equal(call(dict(perfect.outputs)), 0.0)
    dropout = Example(
        inputs={},
        outputs={
            "log_alpha": rng.normal(size=(4, 5)).astype("float32"),
            "y_pred": np.zeros((3, 1), np.float32),
        },
        config=spec.make_config({"kind": "variational_dropout"}),
    )
    perfect = claims[ZeroAtPerfect].perfect(dropout)
    value = call(dict(perfect.outputs), kind="variational_dropout")
    assert value.shape == (3,) and np.all(value < 1e-12)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"kind": "laplace"}, ["'kl'", "kind='laplace'", "'gaussian'", "'variational_dropout'"]),
        ({"reduction": "max"}, ["'kl'", "reduction='max'", "'sum'", "'mean'"]),
        ({"kind": 3}, ["'kl'", "kind=3", "str"]),
        ({"beta": 1.0}, ["'kl'", "no parameter 'beta'", "kind", "reduction"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("kl", **config)
    for word in words:
        assert word in str(info.value)


def test_missing_tensors_of_the_chosen_kind_are_named_with_how_to_bind_them():
    with pytest.raises(lossplug.MissingTensorError) as info:
        call({"mean": np.zeros((2, 3), np.float32)})
    assert "'log_var'" in str(info.value) and "bind=" in str(info.value)
    with pytest.raises(lossplug.MissingTensorError) as info:
        call({"y_pred": np.zeros((2, 3), np.float32)}, kind="variational_dropout")
    assert "'log_alpha'" in str(info.value) and "kind='variational_dropout'" in str(info.value)
    with pytest.raises(lossplug.MissingTensorError) as info:
        call({"log_alpha": np.zeros((2, 3), np.float32)}, kind="variational_dropout")
    assert "batch size from 'y_pred'" in str(info.value) and "compile(loss={" in str(info.value)


def test_mean_and_log_var_of_different_shapes_are_refused():
    with pytest.raises(lossplug.PluginConfigError, match="same shape"):
        call({"mean": np.zeros((2, 3), np.float32), "log_var": np.zeros((2, 4), np.float32)})


# --------------------------------------------------------------------- end to end
@keras.saving.register_keras_serializable(package="test_kl")
class Sampling(keras.layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, 1)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(7)

    def call(self, mean, log_var):
        eps = keras.random.normal(ops.shape(mean), seed=self.seed)
        return mean + ops.exp(0.5 * log_var) * eps


def digits():
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype("float32")


def make_vae(latent=2):
    x_in = keras.Input((64,))
    h = keras.layers.Dense(32, activation="relu")(x_in)
    z_mean = keras.layers.Dense(latent, name="z_mean")(h)
    z_log_var = keras.layers.Dense(latent, name="z_log_var")(h)
    z = Sampling()(z_mean, z_log_var)
    h = keras.layers.Dense(32, activation="relu")(z)
    x_out = keras.layers.Dense(64, activation="sigmoid", name="recon")(h)
    return lossplug.LossModel(x_in, x_out, expose=["z_mean", "z_log_var"])


@pytest.mark.slow
def test_vae_on_digits_logs_a_kl_term_that_follows_the_warm_up():
    keras.utils.set_random_seed(0)
    x = digits()
    ramp = lossplug.schedules.LinearRamp(0.0, 1.0, begin=0, stop=4)
    probe_weight = 1e-6  # an almost weightless copy of the term: the unweighted KL, scaled
    bind = {"mean": "z_mean", "log_var": "z_log_var"}
    model = make_vae()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=[
            "binary_crossentropy",
            lossplug.use("kl", weight=ramp, bind=bind),
            lossplug.use("kl", weight=probe_weight, bind=bind, display_name="kl_probe"),
        ],
    )
    epochs = 6
    history = model.fit(x, x, epochs=epochs, batch_size=128, verbose=0).history
    assert {"loss", "binary_crossentropy", "kl", "kl_probe"} <= set(history)
    raw = np.asarray(history["kl_probe"]) / probe_weight  # mean unweighted KL of each epoch
    assert np.all(raw > 0.0)
    logged = np.asarray(history["kl"])
    assert logged[0] == 0.0  # the warm-up starts at weight 0
    expected = np.array([ramp.value_at(e) for e in range(epochs)]) * raw
    np.testing.assert_allclose(logged, expected, rtol=1e-3)
    assert raw[-1] < raw[0]  # once weighted, the KL is pulled down
    total = np.asarray(history["binary_crossentropy"]) + logged + np.asarray(history["kl_probe"])
    np.testing.assert_allclose(history["loss"], total, rtol=1e-4)
    assert history["binary_crossentropy"][-1] < history["binary_crossentropy"][0]


@keras.saving.register_keras_serializable(package="test_kl")
class VariationalDense(keras.layers.Layer):
    """Dense layer with sparse variational dropout (local reparameterisation in training).

    Returns its output and its log_alpha weights, so that a LossModel can expose them.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.seed = keras.random.SeedGenerator(3)

    def build(self, input_shape):
        shape = (input_shape[-1], self.units)
        self.theta = self.add_weight(shape=shape, initializer="glorot_uniform")
        self.log_alpha = self.add_weight(
            shape=shape, initializer=keras.initializers.RandomUniform(-4.0, 0.0)
        )

    def call(self, x, training=None):
        mean = ops.matmul(x, self.theta)
        log_alpha = ops.convert_to_tensor(self.log_alpha)
        if not training:
            return mean, log_alpha
        variance = ops.matmul(ops.square(x), ops.exp(log_alpha) * ops.square(self.theta))
        noise = keras.random.normal(ops.shape(mean), seed=self.seed)
        return mean + ops.sqrt(variance + 1e-8) * noise, log_alpha

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units), (input_shape[-1], self.units)


@pytest.mark.slow
def test_variational_dropout_term_adds_the_kl_once_per_step_and_pushes_alpha_up():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype("float32")
    y = x @ rng.normal(size=(4, 3)).astype("float32")
    inputs = keras.Input((4,))
    dense = VariationalDense(3, name="vd_dense")
    outputs, log_alpha = dense(inputs)
    model = lossplug.LossModel(inputs, outputs, expose={"log_alpha": log_alpha})
    weight = 0.05
    model.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss=["mse", lossplug.use("kl", kind="variational_dropout", weight=weight)],
    )
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0).history  # batches 8, 8, 4
    assert {"loss", "mse", "kl"} <= set(history)
    assert history["kl"][-1] < history["kl"][0]  # the KL raises alpha
    # evaluate: the term is the weighted KL of the layer's current log_alpha, added once
    # per step whatever the batch size (batches of 7, 7 and 6 here)
    result = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True)
    expected = weight * numpy_vd_kl(ops.convert_to_numpy(dense.log_alpha))
    assert result["kl"] == pytest.approx(expected, rel=1e-5)

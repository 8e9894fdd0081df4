"""The ``bind`` plugin: Keras losses per sample on bound tensors, its errors, a two-term model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_bind
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.properties import Example, NonNegative, ReducesTo
from lossplug.terms import reduce_per_sample
from lossplug.testing import call_plugin, conformance_tests

SETTINGS = settings(max_examples=25, deadline=None)

test_conformance = conformance_tests("bind")  # the kit: every check and claim


def call(y_true, y_pred, **config):
    """The installed plugin's per-sample loss (float32 NumPy), called as the core calls it."""
    loss, _ = call_plugin("bind", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape[0] == np.shape(y_pred)[0]
    return loss


def floats(low, high):
    """float32 values in [low, high] (bounds rounded to float32)."""
    low, high = float(np.float32(low)), float(np.float32(high))
    return st.floats(low, high, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def pairs(draw, low=-10.0, high=10.0, true_low=None, true_high=None, rank=2):
    shape = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    y_pred = draw(hnp.arrays(np.float32, shape, elements=floats(low, high)))
    t_low = low if true_low is None else true_low
    t_high = high if true_high is None else true_high
    y_true = draw(hnp.arrays(np.float32, shape, elements=floats(t_low, t_high)))
    return y_true, y_pred


# Each name with the Keras Loss class that computes it, and the value ranges it expects.
CASES = {
    "mse": (keras.losses.MeanSquaredError, {}),
    "mae": (keras.losses.MeanAbsoluteError, {}),
    "huber": (keras.losses.Huber, {}),
    "log_cosh": (keras.losses.LogCosh, {}),
    "binary_crossentropy": (
        keras.losses.BinaryCrossentropy,
        dict(low=0.01, high=0.99, true_low=0.0, true_high=1.0),
    ),
    "squared_hinge": (keras.losses.SquaredHinge, dict(true_low=-1.0, true_high=1.0)),
}


# --------------------------------------------------------------------- mathematics
@pytest.mark.parametrize("name", sorted(CASES))
def test_per_sample_values_equal_the_keras_loss_class_without_reduction(name):
    cls, ranges = CASES[name]

    @SETTINGS
    @given(pairs(**ranges))
    def check(pair):
        y_true, y_pred = pair
        expected = ops.convert_to_numpy(cls(reduction=None)(y_true, y_pred))
        np.testing.assert_allclose(call(y_true, y_pred, loss=name), expected, rtol=1e-5, atol=1e-6)

    check()


@SETTINGS
@given(pairs(rank=2), st.sampled_from(["mse", "MeanSquaredError", "mean_squared_error", "MSE"]))
def test_reduced_by_the_core_it_equals_what_keras_compile_would_compute(pair, name):
    y_true, y_pred = pair
    weights = np.linspace(0.0, 2.0, y_true.shape[0]).astype("float32")
    ours = reduce_per_sample(call(y_true, y_pred, loss=name), weights)
    expected = keras.losses.MeanSquaredError()(y_true, y_pred, sample_weight=weights)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours), ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-6
    )


@SETTINGS
@given(pairs(rank=1))
def test_batch_vectors_give_one_value_per_sample(pair):
    """Keras' functions reduce the last axis; a (B,) pair must not collapse to one number."""
    y_true, y_pred = pair
    value = call(y_true, y_pred, loss="mse")
    np.testing.assert_allclose(value, (np.float64(y_true) - y_pred) ** 2, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(pairs(low=0.0, high=1.0, rank=4))
def test_dice_and_tversky_are_computed_per_sample(pair):
    y_true, y_pred = pair
    axes = tuple(range(1, y_pred.ndim))
    for name, fn in (("dice", keras.losses.dice), ("tversky", keras.losses.tversky)):
        np.testing.assert_allclose(
            call(y_true, y_pred, loss=name),
            ops.convert_to_numpy(fn(y_true, y_pred, axis=axes)),
            rtol=1e-5,
            atol=1e-6,
        )


@SETTINGS
@given(pairs(low=-15.0, high=15.0, true_low=0.0, true_high=1.0))
def test_from_logits_equals_the_loss_on_probabilities(pair):
    y_true, logits = pair
    probabilities = ops.convert_to_numpy(ops.sigmoid(logits))
    from_logits = call(y_true, logits, loss="binary_crossentropy", from_logits=True)
    expected = keras.losses.binary_crossentropy(y_true, logits, from_logits=True)
    np.testing.assert_allclose(from_logits, ops.convert_to_numpy(expected), rtol=1e-5)
    clipped = np.abs(logits).max(axis=-1) < 8  # away from Keras' probability clipping
    on_probs = call(y_true, probabilities, loss="binary_crossentropy")
    np.testing.assert_allclose(from_logits[clipped], on_probs[clipped], rtol=1e-3, atol=1e-4)


def test_sparse_labels_with_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(6,))
    logits = rng.normal(size=(6, 5)).astype("float32")
    value = call(labels, logits, loss="sparse_categorical_crossentropy", from_logits=True)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(value, -log_softmax[np.arange(6), labels], rtol=1e-5)


@SETTINGS
@given(pairs(low=-1e4, high=1e4))
def test_default_loss_is_non_negative_and_zero_at_equality(pair):
    y_true, y_pred = pair
    assert np.all(call(y_true, y_pred) >= 0.0)
    np.testing.assert_array_equal(call(y_pred, y_pred), 0.0)


def test_half_precision_tensors_give_a_float32_loss():
    y_true = np.full((2, 4), 300.0, np.float16)
    y_pred = np.zeros((2, 4), np.float16)  # 300^2 = 9e4 overflows float16
    value = call(y_true, y_pred, loss="mse")
    assert value.dtype == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(value), 9e4, rtol=1e-6)


# --------------------------------------------------------------------- spec, config, errors
def test_spec_claims_the_configured_keras_loss_and_non_negativity():
    spec = lossplug.registry.spec("bind")
    claims = {type(p): p for p in spec.properties}
    assert NonNegative in claims and spec.config().loss == "mse"
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.uniform(size=(3, 4)), rng.uniform(size=(3, 4))
    for name in ("mse", "binary_crossentropy", "dice", "cosine_similarity"):
        example = Example({"y_true": y_true}, {"y_pred": y_pred}, spec.make_config({"loss": name}))
        reference = claims[ReducesTo].reference(example)
        np.testing.assert_allclose(
            call(y_true.astype("float32"), y_pred.astype("float32"), loss=name),
            reference,
            rtol=1e-5,
            atol=1e-6,
        )


def test_unknown_loss_name_lists_the_valid_names():
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("bind", loss="mean_squared_eror")
    message = str(info.value)
    for word in (
        "'bind'",
        "loss='mean_squared_eror'",
        "not a Keras loss name",
        "valid names:",
        "mse",
        "binary_crossentropy",
        "sparse_categorical_crossentropy",
        "huber",
    ):
        assert word in message
    assert set(lossplug_bind.valid_loss_names()) >= {"mse", "mae", "bce", "kld", "dice", "poisson"}
    assert "circle" not in lossplug_bind.valid_loss_names()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            {"loss": "mse", "from_logits": True},
            ["'bind'", "from_logits=True", "'mse'", "no from_logits"],
        ),
        ({"loss": "circle"}, ["'bind'", "loss='circle'", "couples the samples"]),
        ({"loss": 3}, ["'bind'", "loss=3", "must be str"]),
        ({"loss": "Loss"}, ["'bind'", "loss='Loss'", "not a Keras loss name"]),
        ({"from_logits": "yes"}, ["'bind'", "from_logits='yes'", "bool"]),
        ({"reduction": "sum"}, ["'bind'", "no parameter 'reduction'", "loss, from_logits"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("bind", **config)
    for word in words:
        assert word in str(info.value)


def test_class_names_and_from_logits_losses_are_accepted():
    term = lossplug.use("bind", loss="BinaryCrossentropy", from_logits=True)
    assert term.config.loss == "BinaryCrossentropy" and term.config.from_logits
    assert lossplug.use("bind", loss="categorical_focal_crossentropy", from_logits=True).config


def test_binding_a_tensor_the_plugin_does_not_read_is_refused():
    with pytest.raises(lossplug.MissingTensorError, match="'features'.*reads: y_pred, y_true"):
        lossplug.use("bind", bind={"features": "hidden"})


# --------------------------------------------------------------------- end to end
def make_mask_model():
    """A toy 'Mask R-CNN' head: an intermediate mask-feature layer and a final mask output."""
    inputs = keras.Input((16,), name="image")
    mask_features = keras.layers.Dense(4, name="mask_features")(inputs)
    hidden = keras.layers.Dense(16, activation="relu")(mask_features)
    masks = keras.layers.Dense(4, activation="sigmoid", name="masks")(hidden)
    return lossplug.LossModel(inputs, masks, expose=["mask_features"]), inputs, mask_features


@pytest.mark.slow
def test_two_bound_terms_over_an_intermediate_layer_each_show_in_history():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16)).astype("float32")
    y = (x[:, :4] > 0).astype("float32")
    model, inputs, mask_features = make_mask_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=[
            lossplug.use("bind", loss="binary_crossentropy", display_name="mask_bce"),
            lossplug.use(
                "bind",
                loss="mse",
                weight=0.5,
                bind={"y_pred": "mask_features"},
                display_name="mask_mse",
            ),
        ],
    )
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0, validation_split=0.25).history
    for name in ("loss", "mask_bce", "mask_mse"):
        assert name in history and f"val_{name}" in history
    assert history["mask_bce"][-1] < history["mask_bce"][0]
    assert history["mask_mse"][-1] < history["mask_mse"][0]
    np.testing.assert_allclose(
        history["loss"], np.add(history["mask_bce"], history["mask_mse"]), rtol=1e-4
    )
    # evaluate's terms are the Keras losses of the output and of the intermediate layer
    result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    features = keras.Model(inputs, mask_features).predict(x, verbose=0)
    masks = model.predict(x, verbose=0)
    expected_mse = 0.5 * float(keras.losses.MeanSquaredError()(y, features))
    expected_bce = float(keras.losses.BinaryCrossentropy()(y, masks))
    assert result["mask_mse"] == pytest.approx(expected_mse, rel=1e-4)
    assert result["mask_bce"] == pytest.approx(expected_bce, rel=1e-4)

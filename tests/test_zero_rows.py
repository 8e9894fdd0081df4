"""Normalised embeddings have bounded, finite gradients at and near the zero vector.

``margin_softmax`` (every kind) and ``triplet`` with the cosine metric normalise their
inputs with :func:`lossplug.numerics.l2_normalize`. A zero (or nearly zero) feature row must
give finite, bounded gradients in float16, bfloat16, float32 and float64, and a
``mixed_float16`` fit with such a row must skip no step (a 1e6x gradient at a zero row used
to overflow float16 and make the loss scaler skip half the steps).
"""

from __future__ import annotations

import keras
import lossplug
import numpy as np
import pytest
from lossplug import backend
from lossplug.properties import Example
from lossplug.testing.harness import PluginHarness

DTYPES = ("float16", "bfloat16", "float32", "float64")
#: 1 / eps of numerics.l2_normalize: the most a normalisation can amplify a gradient
BOUND = 1.0 / lossplug.numerics.L2_EPSILON


def features_with_small_rows(scale: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8))
    x[0] = 0.0  # a zero row
    x[1] *= scale  # a nearly zero one
    return x


def gradient_of(name: str, config: dict, example: Example, dtype: str) -> np.ndarray:
    harness = PluginHarness(name)
    example = example.replace(config=harness.spec.make_config(config))
    with backend.current().kit_scope():  # float64 exists on every backend inside
        wrt = next(iter(example.outputs))
        outcome, grads, _ = harness.gradients(example, [wrt], dtype=dtype)
    (grad,) = grads.values()
    assert np.all(np.isfinite(outcome.loss))
    return np.asarray(grad, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.0, 1e-6, 1e-3])
@pytest.mark.parametrize("kind", ["arcface", "cosface", "sphereface"])
def test_margin_softmax_gradients_are_finite_and_bounded_at_small_rows(kind, scale, dtype):
    x = features_with_small_rows(scale)
    example = Example(
        inputs={"y_true": np.array([0, 1, 2, 0, 1, 2])},
        outputs={"features": x},
        config=None,
    )
    grad = gradient_of("margin_softmax", {"num_classes": 3, "kind": kind}, example, dtype)
    assert np.all(np.isfinite(grad)), grad
    # scale s times a cosine's gradient (<= 1/eps) bounds every row's gradient
    assert np.abs(grad).max() <= 64.0 * BOUND


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.0, 1e-6, 1e-3])
def test_cosine_triplet_gradients_are_finite_and_bounded_at_small_rows(scale, dtype):
    x = features_with_small_rows(scale)
    example = Example(
        inputs={"y_true": np.array([0, 0, 1, 1, 2, 2])},
        outputs={"embeddings": x},
        config=None,
    )
    config = {"mode": "mining", "metric": "cosine", "mining": "batch_all"}
    grad = gradient_of("triplet", config, example, dtype)
    assert np.all(np.isfinite(grad)), grad
    assert np.abs(grad).max() <= 4.0 * BOUND


def test_mixed_float16_fit_with_a_zero_feature_row_skips_no_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12)).astype("float32")
    x[::8] = 0.0  # every batch of 32 has zero rows: features without bias are exactly 0
    y = rng.integers(0, 4, 96).astype("int32")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((12,))
        features = keras.layers.Dense(8, use_bias=False, name="features")(inputs)
        logits = keras.layers.Dense(4, name="logits", dtype="float32")(features)
        model = lossplug.LossModel(inputs, logits, expose=["features"])
        # A loss scale at which these gradients fit float16 without any zero row: a zero
        # row's gradient amplified 1e6x (the old rsqrt(max(|x|^2, 1e-12))) would overflow.
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam(), initial_scale=16.0, dynamic_growth_steps=1000
        )
        model.compile(
            optimizer,
            loss=[
                "label_smoothing",
                lossplug.use("margin_softmax", num_classes=4, kind="arcface"),
            ],
        )
        initial_scale = float(optimizer.initial_scale)
        history = model.fit(x, y, epochs=3, batch_size=32, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(history["loss"]))
    # A skipped step halves the loss scale and is not counted by the inner optimizer.
    assert float(keras.ops.convert_to_numpy(optimizer.dynamic_scale)) >= initial_scale
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 9

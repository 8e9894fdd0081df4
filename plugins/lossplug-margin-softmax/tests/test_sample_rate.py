"""Tests of ``margin_softmax(sample_rate=r)``, the sampled softmax for very many classes
(Partial FC): equal to the full loss at r = 1, every label in the sample, the positive
logit unchanged, zero gradients outside the sample, training on every backend, saving.

Backend-neutral (``keras.ops`` and the backend's own autodiff), so that each run of the
suite (one per ``KERAS_BACKEND``) checks its backend.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_margin_softmax as plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug import backend
from lossplug.extras import Extras, StateStore
from lossplug.testing import call_plugin
from lossplug_margin_softmax.loss import (
    margin_logits,
    margin_softmax_loss,
    sampled_margin_logits,
    sampled_margin_softmax_loss,
)
from lossplug_margin_softmax.sampling import (
    class_hash,
    class_hash_numpy,
    sample_classes,
    sample_size,
    sampled_classes,
)
from test_margin_softmax import kind_configs, reference, sub_center_problems

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SEEDS = st.integers(0, 2**31 - 1)
#: the values the plugin's seed variable holds (float32, exact below 2^24)
STATE_SEEDS = st.integers(0, 2**24 - 1)
STEPS = st.integers(0, 10**6)
RATES = st.floats(0.01, 1.0, exclude_min=False)


# ----------------------------------------------------------------------------- helpers
def tensor(value, dtype=None):
    return ops.convert_to_tensor(np.asarray(value, dtype=dtype))


def numpy(value):
    return np.asarray(ops.convert_to_numpy(value))


def config(**values):
    return plugin.SPEC.make_config(values)


def kit_loss(labels, features, weights, *, seed=None, step=0, training=True, **values):
    """The plugin called as the core calls it (state W and the seed set), float32 result."""
    state = {"class_weights": np.asarray(weights, np.float32)}
    if seed is not None:
        state["sample_seed"] = np.float32(seed)
    loss, _ = call_plugin(
        "margin_softmax",
        {"y_true": np.asarray(labels, np.int32)},
        {"features": np.asarray(features)},
        config=values,
        state=state,
        training=training,
        step=step,
    )
    return np.asarray(loss, np.float64)


def gradients(fn, **tensors):
    """The backend's gradients of sum(fn(**tensors)) with respect to every tensor."""
    watched = {name: tensor(value) for name, value in tensors.items()}

    def objective(values):
        loss = fn(**values)
        return ops.sum(loss), loss

    _, loss, grads, _ = backend.current().kit_gradients(objective, watched, [])
    return numpy(loss), {name: numpy(g) for name, g in grads.items()}


def positions(classes, labels):
    return np.array([list(classes).index(y) for y in np.asarray(labels).reshape(-1)])


@st.composite
def sampling_problems(draw):
    """(labels, num_classes, sample_rate, seed, step) with up to 300 classes."""
    classes = draw(st.integers(2, 300))
    batch = draw(st.integers(1, 40))
    labels = draw(hnp.arrays(np.int32, (batch,), elements=st.integers(0, classes - 1)))
    return labels, classes, draw(RATES), draw(SEEDS), draw(STEPS)


@st.composite
def sampled_losses(draw):
    """A margin_softmax problem (every kind, K sub-centres) with a sample rate below 1."""
    labels, features, weights, classes, sub_centers = draw(sub_center_problems())
    values = {
        "num_classes": classes,
        "sub_centers": sub_centers,
        "sample_rate": draw(st.floats(0.05, 0.95)),
        **draw(kind_configs()),
    }
    return labels, features, weights, values, draw(STATE_SEEDS), draw(st.integers(0, 1000))


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    ("rate", "classes", "expected"),
    [(1.0, 10, 10), (0.3, 10, 3), (0.1, 1_000_000, 100_000), (0.25, 7, 2), (1e-9, 10, 1)],
)
def test_sample_size_is_the_ceiling_of_rate_times_classes(rate, classes, expected):
    assert sample_size(rate, classes) == expected  # 0.3 * 10 = 3.0000000000000004 gives 3


@SETTINGS
@given(problem=sampling_problems())
def test_every_label_is_in_the_sample_and_maps_back_to_itself(problem):
    """max(#positives, ceil(r C)) distinct classes, the positives among them, each label
    remapped to its own class's column, and the same classes as the NumPy rule."""
    labels, classes, rate, seed, step = problem
    size = sample_size(rate, classes)
    sample = sample_classes(
        tensor(labels), classes, size, tensor(seed, np.int32), tensor(step, np.int32)
    )
    chosen, remapped, used = numpy(sample.classes), numpy(sample.labels), int(numpy(sample.used))
    positives = set(labels.tolist())
    assert used == max(len(positives), size)
    assert sample.width == min(classes, max(size, len(labels))) == len(chosen)
    assert len(set(chosen.tolist())) == len(chosen)  # without replacement
    assert positives <= set(chosen[:used].tolist())
    assert np.all(remapped < used)
    np.testing.assert_array_equal(chosen[remapped], labels)
    np.testing.assert_array_equal(chosen[:used], sampled_classes(labels, classes, rate, seed, step))
    if sample.mask is not None:
        np.testing.assert_array_equal(numpy(sample.mask), np.arange(len(chosen)) < used)
    else:
        assert len(chosen) == used


def test_the_hash_is_the_same_bits_on_this_backend_as_in_numpy():
    """Also for an int64 step past 2^31 (only its low 31 bits count)."""
    ids = np.arange(0, 2_000_000, 7, dtype=np.int32)
    with backend.current().kit_scope():  # int64 on JAX too
        for seed, step in [(0, 0), (2**31 - 1, 5), (123456789, 2**31 - 1), (42, 2**33 + 3)]:
            got = numpy(class_hash(tensor(ids), tensor(seed, np.int32), tensor(step, np.int64)))
            np.testing.assert_array_equal(got, class_hash_numpy(ids, seed, step))
            assert got.min() >= 0 and len(np.unique(got)) == len(ids)  # distinct: a bijection


def test_the_sample_is_deterministic_changes_with_the_step_and_is_uniform():
    classes, rate, seed = 1000, 0.05, 7
    labels = np.array([3, 3, 500, 999], np.int32)
    first = sampled_classes(labels, classes, rate, seed, 0)
    np.testing.assert_array_equal(first, sampled_classes(labels, classes, rate, seed, 0))
    counts = np.zeros(classes)
    steps = 400
    for step in range(steps):
        chosen = sampled_classes(labels, classes, rate, seed, step)
        assert len(chosen) == 50 and set(chosen[:3]) == {3, 500, 999}
        counts[chosen[3:]] += 1
    assert not np.array_equal(first, sampled_classes(labels, classes, rate, seed, 1))
    assert not np.array_equal(first, sampled_classes(labels, classes, rate, seed + 1, 0))
    negatives = np.delete(counts, [3, 500, 999])
    expected = steps * 47 / 997  # each negative is drawn with probability 47 / 997 per step
    assert negatives.mean() == pytest.approx(expected)
    # binomial(400, 0.047): sd 4.2; with 997 classes every count stays within 6 sd
    assert np.all(np.abs(negatives - expected) < 6 * math.sqrt(expected))


# ----------------------------------------------------------------------------- equalities
@SETTINGS
@given(problem=sub_center_problems(), values=kind_configs())
def test_sample_rate_one_is_the_loss_without_it_bit_for_bit(problem, values):
    labels, features, weights, classes, sub_centers = problem
    values = {**values, "num_classes": classes, "sub_centers": sub_centers}
    plain = kit_loss(labels, features, weights, **values)
    np.testing.assert_array_equal(
        kit_loss(labels, features, weights, sample_rate=1.0, **values), plain
    )
    # and so is a rate whose ceil(r C) is every class
    whole = (classes - 0.5) / classes
    assert sample_size(whole, classes) == classes
    np.testing.assert_array_equal(
        kit_loss(labels, features, weights, seed=5, sample_rate=whole, **values), plain
    )


@SETTINGS
@given(problem=sub_center_problems(), values=kind_configs(), seed=SEEDS, step=STEPS)
def test_the_sampling_code_at_rate_one_is_the_full_loss(problem, values, seed, step):
    """The sampling code path itself (classes permuted, gathered, labels remapped) with
    every class sampled equals the full loss and the papers' formulas, float64."""
    labels, features, weights, classes, sub_centers = problem
    cfg = config(num_classes=classes, sub_centers=sub_centers, sample_rate=1.0, **values)
    with backend.current().kit_scope():
        args = (tensor(features), tensor(labels), tensor(weights))
        full = numpy(margin_softmax_loss(*args, cfg))
        sampled = numpy(
            sampled_margin_softmax_loss(*args, cfg, tensor(seed, np.int32), tensor(step))
        )
    np.testing.assert_allclose(sampled, full, rtol=1e-12, atol=1e-12 * values["scale"])
    expected = reference(
        labels,
        features,
        weights,
        values["kind"],
        values["scale"],
        values["margin"],
        values.get("easy_margin", False),
        values.get("sphere_lambda", 0.0),
        sub_centers=sub_centers,
    )
    np.testing.assert_allclose(sampled, expected, rtol=1e-6, atol=1e-6 * values["scale"])


@SETTINGS
@given(problem=sampled_losses())
def test_the_positive_logit_with_margin_is_the_full_one(problem):
    """Column t of the sampled logits is class classes[t] of the full logits; each
    sample's remapped label picks its positive logit (with the margin) unchanged."""
    labels, features, weights, values, seed, step = problem
    cfg = config(**values)
    with backend.current().kit_scope():
        args = (tensor(features), tensor(labels), tensor(weights))
        full, full_target = (numpy(v) for v in margin_logits(*args, cfg))
        logits, target, sample = sampled_margin_logits(
            *args, cfg, tensor(seed, np.int32), tensor(step)
        )
        logits, target = numpy(logits), numpy(target)
        chosen, remapped, used = (numpy(v) for v in sample[:3])
    rows = np.arange(len(labels))
    tight = {"rtol": 1e-12, "atol": 1e-12 * values["scale"]}
    np.testing.assert_allclose(target, full_target, **tight)
    np.testing.assert_array_equal(logits[rows, remapped], target)
    np.testing.assert_allclose(logits[rows, remapped], full[rows, labels], **tight)
    np.testing.assert_allclose(logits[:, :used], full[:, chosen[:used]], **tight)
    assert np.all(logits[:, used:] == -np.inf)


@SETTINGS
@given(problem=sampled_losses())
def test_the_training_loss_is_the_full_loss_over_the_sampled_classes(problem):
    """Through the core (float32): the loss of a training step equals the full loss of the
    problem restricted to the sampled classes, labels remapped."""
    labels, features, weights, values, seed, step = problem
    chosen = sampled_classes(labels, values["num_classes"], values["sample_rate"], seed, step)
    got = kit_loss(labels, features, weights, seed=seed, step=step, **values)
    if len(chosen) == 1:
        np.testing.assert_allclose(got, 0.0, atol=1e-6)
        return
    k = values["sub_centers"]
    columns = (chosen[:, None] * k + np.arange(k)).reshape(-1)
    restricted = {**values, "num_classes": len(chosen), "sample_rate": 1.0}
    expected = kit_loss(positions(chosen, labels), features, weights[:, columns], **restricted)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * values["scale"])


@SETTINGS
@given(problem=sampled_losses())
def test_evaluation_uses_every_class(problem):
    labels, features, weights, values, seed, step = problem
    evaluated = kit_loss(labels, features, weights, seed=seed, step=step, training=False, **values)
    full = kit_loss(labels, features, weights, training=False, **{**values, "sample_rate": 1.0})
    np.testing.assert_array_equal(evaluated, full)


@SETTINGS
@given(problem=sampled_losses())
def test_samples_are_independent_at_rate_one_and_in_evaluation(problem):
    """What the kit's sample_independence check would test, had the spec not declared
    batch_coupled=True for the training steps with sample_rate < 1."""
    labels, features, weights, values, seed, step = problem
    if len(labels) < 2:
        return
    half = len(labels) // 2
    for training, extra in [(True, {"sample_rate": 1.0}), (False, {})]:
        kw = {**values, **extra, "seed": seed, "step": step, "training": training}
        whole = kit_loss(labels, features, weights, **kw)
        for part in (slice(0, half), slice(half, None)):
            alone = kit_loss(labels[part], features[part], weights, **kw)
            np.testing.assert_allclose(alone, whole[part], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- gradients
@settings(SETTINGS, max_examples=12)
@given(problem=sampled_losses())
def test_only_sampled_columns_get_gradients_and_they_are_the_restricted_loss_s(problem):
    """float64: the gradient of W is exactly zero outside the sampled columns; on them it
    is the gradient of the full loss of the restricted problem (labels remapped), and so
    is the gradient of the features."""
    labels, features, weights, values, seed, step = problem
    cfg = config(**values)
    k = values["sub_centers"]
    chosen = sampled_classes(labels, values["num_classes"], values["sample_rate"], seed, step)
    columns = (chosen[:, None] * k + np.arange(k)).reshape(-1)
    outside = np.setdiff1d(np.arange(weights.shape[1]), columns)
    with backend.current().kit_scope():
        seed_t, step_t = tensor(seed, np.int32), tensor(step)

        def sampled(features, weights):
            return sampled_margin_softmax_loss(
                features, tensor(labels), weights, cfg, seed_t, step_t
            )

        _, grads = gradients(sampled, features=features, weights=weights)
        assert grads["weights"].dtype == np.float64
        np.testing.assert_array_equal(grads["weights"][:, outside], 0.0)
        if len(chosen) < 2:
            np.testing.assert_array_equal(grads["weights"], 0.0)  # one class: loss 0
            return
        small = config(**{**values, "num_classes": len(chosen), "sample_rate": 1.0})
        remapped = tensor(positions(chosen, labels), np.int32)

        def restricted(features, weights):
            return margin_softmax_loss(features, remapped, weights, small)

        _, expected = gradients(restricted, features=features, weights=weights[:, columns])
    # float64 rounding (lossplug.numerics keeps float64 in float64 on JAX and PyTorch)
    close = {"rtol": 1e-9, "atol": 1e-12}
    np.testing.assert_allclose(grads["weights"][:, columns], expected["weights"], **close)
    np.testing.assert_allclose(grads["features"], expected["features"], **close)


@pytest.mark.parametrize("sub_centers", [1, 3])
@pytest.mark.parametrize(
    "values",
    [
        {"kind": "arcface", "margin": 0.5},
        {"kind": "cosface", "margin": 0.35},
        {"kind": "sphereface", "margin": 4.0, "sphere_lambda": 5.0},
    ],
    ids=lambda v: v["kind"],
)
def test_sampled_gradients_match_finite_differences_of_the_numpy_reference(values, sub_centers):
    """At a generic point (no ties, no kinks): the gradient of the sampled loss with respect
    to the sampled columns of W matches central differences of the float64 NumPy formulas
    over the sampled classes, and is zero elsewhere."""
    rng = np.random.default_rng(sub_centers)
    classes, batch, dim, rate, seed, step = 60, 12, 6, 0.2, 99, 3
    labels = rng.integers(0, classes, batch).astype(np.int32)
    features = rng.normal(size=(batch, dim))
    weights = rng.normal(size=(dim, classes * sub_centers))
    cfg = config(
        num_classes=classes, sub_centers=sub_centers, sample_rate=rate, scale=8.0, **values
    )
    chosen = sampled_classes(labels, classes, rate, seed, step)
    columns = (chosen[:, None] * sub_centers + np.arange(sub_centers)).reshape(-1)
    with backend.current().kit_scope():
        seed_t, step_t = tensor(seed, np.int32), tensor(step)

        def sampled(weights):
            return sampled_margin_softmax_loss(
                tensor(features), tensor(labels), weights, cfg, seed_t, step_t
            )

        loss, grads = gradients(sampled, weights=weights)
    grad = grads["weights"]
    outside = np.setdiff1d(np.arange(weights.shape[1]), columns)
    np.testing.assert_array_equal(grad[:, outside], 0.0)
    assert np.all(np.abs(grad[:, columns]).max(axis=0) > 0)

    def numpy_loss(w):
        return reference(
            positions(chosen, labels),
            features,
            w,
            values["kind"],
            8.0,
            values["margin"],
            lam=values.get("sphere_lambda", 0.0),
            sub_centers=sub_centers,
        )

    sub = weights[:, columns]
    # float64 on every backend: psi(theta) uses lossplug.numerics' cos, floor and arctan2,
    # which Keras 3.15 computes in float32 on JAX and PyTorch (docs/decisions.md)
    np.testing.assert_allclose(loss, numpy_loss(sub), rtol=1e-10)
    h = 1e-6
    for _ in range(3):
        direction = rng.normal(size=sub.shape)
        finite = (numpy_loss(sub + h * direction).sum() - numpy_loss(sub - h * direction).sum()) / (
            2 * h
        )
        assert float(np.sum(grad[:, columns] * direction)) == pytest.approx(finite, rel=1e-5)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan"), "0.5"])
def test_bad_sample_rates_are_rejected_with_the_field(value):
    with pytest.raises(lossplug.PluginConfigError, match="margin_softmax") as info:
        lossplug.use("margin_softmax", sample_rate=value)
    assert "sample_rate" in str(info.value)


def test_the_range_is_declared_open_at_zero_and_closed_at_one():
    import attrs

    (field,) = [f for f in attrs.fields(plugin.Config) if f.name == "sample_rate"]
    meta = field.metadata["lossplug"]
    assert (meta["low"], meta["low_inclusive"], meta["high"], meta["high_inclusive"]) == (
        0.0,
        False,
        1.0,
        True,
    )
    assert lossplug.use("margin_softmax", sample_rate=1).config.sample_rate == 1


def state_of(sample_rate):
    store = StateStore(plugin="margin_softmax")
    extras = Extras(
        config=config(num_classes=7, sample_rate=sample_rate),
        epoch=tensor(0, np.int32),
        step=tensor(0, np.int32),
        training=False,
        state=store,
    )
    plugin.build_loss_graph(
        {"y_true": tensor([1, 2], np.int32)}, {"features": ops.ones((2, 5))}, extras
    )
    return store


def test_the_seed_is_a_non_trainable_state_variable_only_when_sampling():
    assert sorted(state_of(1.0).plugin_variables) == ["class_weights"]
    store = state_of(0.5)
    assert sorted(store.plugin_variables) == ["class_weights", "sample_seed"]
    seed = store.plugin_variables["sample_seed"]
    assert not seed.trainable and keras.backend.standardize_dtype(seed.dtype) == "float32"
    value = float(numpy(seed))
    assert value == int(value) and 0 <= value < 2**24  # an integer, exact in float32
    assert [v.path.split("/")[-1] for v in store.trainable_variables] == ["class_weights"]


MIRRORED = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, lossplug, numpy as np
rng = np.random.default_rng(0)
x, y = rng.normal(size=(64, 16)).astype("float32"), rng.integers(0, 40, 64).astype("int32")
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    inputs = keras.Input((16,))
    model = lossplug.LossModel(inputs, keras.layers.Dense(8, name="features")(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=lossplug.use("margin_softmax", num_classes=40, sample_rate=0.25),
    )
history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
evaluated = model.evaluate(x, y, verbose=0, return_dict=True)["margin_softmax"]
print(history.history["margin_softmax"] + [evaluated])
"""


@pytest.mark.backends("tensorflow")
def test_a_sampled_term_trains_under_a_mirrored_strategy():
    """Two replicas (logical CPUs, in a fresh process): the seed variable can be mirrored
    (an int32 one with the state store's aggregation "mean" cannot)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    values = [float(v) for v in done.stdout.strip().splitlines()[-1].strip("[]").split(",")]
    assert len(values) == 3 and all(np.isfinite(values))


# ----------------------------------------------------------------------------- training
CLASSES, DIM = 40, 8


def identity_data(n=200, seed=0):
    """x = centre of its class + noise, in 16 dimensions; 40 classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, 16))
    y = rng.integers(0, CLASSES, n).astype("int32")
    x = (centres[y] + 0.3 * rng.normal(size=(n, 16))).astype("float32")
    return x, y


def arcface_model(optimizer, sample_rate, **compile_kwargs):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    features = keras.layers.Dense(DIM, name="features")(inputs)
    model = lossplug.LossModel(inputs, features)
    model.compile(
        optimizer=optimizer,
        loss=lossplug.use(
            "margin_softmax", num_classes=CLASSES, scale=16.0, sample_rate=sample_rate
        ),
        **compile_kwargs,
    )
    return model


def weights_of(model):
    return numpy(model.term_state("margin_softmax")["class_weights"])


@pytest.mark.parametrize(
    "jit_compile",
    [
        "auto",
        pytest.param(True, marks=pytest.mark.backends("tensorflow"), id="xla"),
    ],
)
def test_fit_with_half_of_the_classes_trains(jit_compile):
    """A real fit with sample_rate=0.5, batches of 32 and a partial last batch of 8 (on
    TensorFlow that retraces with an unknown batch size: a dynamic sample width)."""
    x, y = identity_data()
    model = arcface_model(keras.optimizers.Adam(0.02), 0.5, jit_compile=jit_compile)
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    losses = history.history["margin_softmax"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    predicted = plugin.nearest_class(model.predict(x, verbose=0), weights_of(model))
    assert np.mean(predicted == y) > 0.9
    full = model.evaluate(x, y, verbose=0, return_dict=True)["margin_softmax"]
    assert np.isfinite(full)


def test_plain_sgd_leaves_the_columns_it_did_not_sample_unchanged():
    """One fit step of SGD without momentum: W changes exactly on the sampled classes of
    that step (positives of the batch plus ceil(r C) - #positives others at step 0)."""
    x, y = identity_data(n=16)
    model = arcface_model(keras.optimizers.SGD(0.5), 0.25)
    before = weights_of(model)
    seed = int(numpy(model.term_state("margin_softmax")["sample_seed"]))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    after = weights_of(model)
    chosen = sampled_classes(y, CLASSES, 0.25, seed, 0)
    assert len(chosen) == max(len(set(y.tolist())), 10)
    others = np.setdiff1d(np.arange(CLASSES), chosen)
    assert len(others) > 0
    np.testing.assert_array_equal(after[:, others], before[:, others])
    assert np.all(np.abs(after[:, chosen] - before[:, chosen]).max(axis=0) > 0)


def test_a_model_with_sample_rate_saves_and_loads(tmp_path):
    x, y = identity_data(n=64)
    model = arcface_model(keras.optimizers.Adam(0.02), 0.25)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "sampled.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    (term,) = [b.term for b in loaded._lossplug_terms_bound()]
    assert term.config == config(num_classes=CLASSES, scale=16.0, sample_rate=0.25)
    for name in ("class_weights", "sample_seed"):
        np.testing.assert_array_equal(
            numpy(loaded.term_state("margin_softmax")[name]),
            numpy(model.term_state("margin_softmax")[name]),
        )
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert after["margin_softmax"] == pytest.approx(before["margin_softmax"], rel=1e-6)
    # and it keeps training, with the same classes as the original would sample
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)

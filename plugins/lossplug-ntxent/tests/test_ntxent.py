"""The ``ntxent`` plugin: SimCLR's eq. 1, its minimum, weights, errors, and self-supervised digits."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.reference import regular_simplex
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import harness_for
from lossplug_ntxent import claims
from lossplug_ntxent.loss import ntxent_loss

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

test_conformance = conformance_tests("ntxent")  # the kit: every check and claim


def call(view_a, view_b, **config):
    """The installed plugin's loss (a float) and its top-1 metric, called as the core calls it."""
    loss, metrics = call_plugin("ntxent", {}, {"view_a": view_a, "view_b": view_b}, config=config)
    assert loss.shape == ()
    return float(loss), float(metrics["top1"])


def gradients(view_a, view_b, **config):
    spec = lossplug.registry.spec("ntxent")
    example = Example({}, {"view_a": view_a, "view_b": view_b}, spec.make_config(config))
    outcome, grads, _ = harness_for("ntxent").gradients(example, ["view_a", "view_b"])
    return float(outcome.loss), grads["view_a"], grads["view_b"]


def numpy_ntxent(view_a, view_b, temperature, weights=None):
    """Eq. 1 of Chen et al. 2020, one row at a time: -log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t))."""
    z = np.concatenate([view_a, view_b]).astype(np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 2.0**-10)
    n = len(view_a)
    s = np.clip(z @ z.T, -1, 1) / temperature
    losses = []
    for i in range(2 * n):
        others = [k for k in range(2 * n) if k != i]
        partner = (i + n) % (2 * n)
        losses.append(-math.log(math.exp(s[i, partner]) / sum(math.exp(s[i, k]) for k in others)))
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    w = np.concatenate([w, w])
    return float(np.sum(w * losses) / np.sum(w)) if np.sum(w) else 0.0


@st.composite
def view_pairs(draw, min_batch=1):
    b, d = draw(st.integers(min_batch, 6)), draw(st.integers(1, 5))
    elements = st.floats(-3, 3, allow_nan=False, allow_subnormal=False, width=32)
    view_a = draw(hnp.arrays(np.float32, (b, d), elements=elements))
    noise = draw(hnp.arrays(np.float32, (b, d), elements=elements))
    mix = draw(st.sampled_from([0.0, 0.3, 1.0]))
    view_a = np.where(np.abs(view_a).sum(1, keepdims=True) > 0.1, view_a, 1.0)  # no tiny rows
    return view_a, (view_a + mix * noise).astype(np.float32)


temperatures = st.sampled_from([0.05, 0.1, 0.5, 1.0, 3.0])


# --------------------------------------------------------------------- mathematics
@SETTINGS
@given(view_pairs(), temperatures)
def test_matches_simclr_eq_1(pair, temperature):
    view_a, view_b = pair
    loss, _ = call(view_a, view_b, temperature=temperature)
    assert loss == pytest.approx(numpy_ntxent(view_a, view_b, temperature), rel=1e-5, abs=1e-5)


@SETTINGS
@given(view_pairs(min_batch=2), temperatures)
def test_never_below_the_simplex_minimum(pair, temperature):
    loss, _ = call(*pair, temperature=temperature)
    assert loss >= claims.minimum(len(pair[0]), temperature) * (1 - 1e-5) - 1e-6


@pytest.mark.parametrize("samples", [2, 3, 5])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_the_regular_simplex_reaches_the_minimum(samples, temperature):
    """Up to float32's resolution of log(1 + x) near 1 (about 2e-7; the minimum is 1.2e-6
    for 3 samples at tau = 0.1)."""
    rows = regular_simplex(samples, 4).astype("float32")
    loss, top1 = call(rows, rows, temperature=temperature)
    assert loss == pytest.approx(claims.minimum(samples, temperature), rel=1e-5, abs=5e-7)
    assert top1 == 1.0


def test_orthogonal_samples_with_identical_views_have_the_closed_form():
    """Positive similarity 1, 2N - 2 negatives at 0: l = log(1 + (2N - 2) exp(-1 / tau))."""
    rows = np.eye(4, dtype="float32")[:3]
    loss, _ = call(rows, 2.0 * rows, temperature=0.5)
    assert loss == pytest.approx(math.log1p(4 * math.exp(-2.0)), rel=1e-6)


def test_a_batch_of_one_is_exactly_zero_with_zero_gradients():
    rng = np.random.default_rng(0)
    view_a, view_b = rng.normal(size=(2, 1, 3)).astype("float32")
    loss, grad_a, grad_b = gradients(view_a, view_b)
    assert loss == 0.0
    np.testing.assert_array_equal(grad_a, 0.0)
    np.testing.assert_array_equal(grad_b, 0.0)


def test_swapping_and_permuting_the_views_together_leave_the_loss():
    rng = np.random.default_rng(1)
    view_a = rng.normal(size=(6, 4)).astype("float32")
    view_b = (view_a + 0.1 * rng.normal(size=(6, 4))).astype("float32")  # matching views
    base, _ = call(view_a, view_b)
    assert call(view_b, view_a)[0] == pytest.approx(base, rel=1e-6)
    perm = rng.permutation(6)
    assert call(view_a[perm], view_b[perm])[0] == pytest.approx(base, rel=1e-6)
    assert call(view_a[perm], view_b)[0] > base + 0.1  # pairs broken: a different loss


def test_sample_weights_weight_the_anchors_but_every_row_stays_a_negative():
    rng = np.random.default_rng(2)
    view_a, view_b = rng.normal(size=(2, 5, 3)).astype("float32")
    weights = np.array([2.0, 1.0, 0.0, 1.0, 0.5], np.float32)
    loss, _ = ntxent_loss(view_a, view_b, temperature=0.5, sample_weight=weights)
    expected = numpy_ntxent(view_a, view_b, 0.5, weights)
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(numpy_ntxent(view_a, view_b, 0.5), rel=1e-3)
    nothing, _ = ntxent_loss(view_a, view_b, sample_weight=np.zeros(5, np.float32))
    assert float(keras.ops.convert_to_numpy(nothing)) == 0.0


def test_sample_weights_reach_the_plugin_in_a_loss_model():
    """Keras 3.15 drops sample_weight when y is None (also for a plain keras.Model), so a
    weighted self-supervised batch passes placeholder targets, which ntxent ignores."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3)).astype("float32")
    first, second = keras.Input((3,)), keras.Input((3,))
    dense = keras.layers.Dense(4)
    model = lossplug.LossModel(
        [first, second],
        [
            keras.layers.Identity(name="view_a")(dense(first)),
            keras.layers.Identity(name="view_b")(dense(second)),
        ],
    )
    model.compile(loss="ntxent")
    weights = np.array([1.0, 0.0, 2.0, 1.0, 1.0, 0.5], np.float32)
    views, placeholder = [x, x + 0.1], np.zeros(6, np.float32)
    got = model.evaluate(
        views, placeholder, sample_weight=weights, batch_size=6, verbose=0, return_dict=True
    )
    a, b = (np.asarray(v) for v in model.predict(views, verbose=0))
    assert got["ntxent"] == pytest.approx(numpy_ntxent(a, b, 0.5, weights), rel=1e-5)
    dropped = model.evaluate(
        views, sample_weight=weights, batch_size=6, verbose=0, return_dict=True
    )
    assert dropped["ntxent"] == pytest.approx(numpy_ntxent(a, b, 0.5), rel=1e-5)  # Keras


def test_zero_rows_and_half_precision_stay_finite():
    view_a = np.zeros((3, 4), np.float32)
    view_a[0] = 1.0
    loss, grad_a, grad_b = gradients(view_a, np.zeros((3, 4), np.float32))
    assert np.isfinite(loss) and np.all(np.isfinite(grad_a)) and np.all(np.isfinite(grad_b))
    rng = np.random.default_rng(3)
    view_a, view_b = rng.normal(size=(2, 8, 16)).astype("float16")
    loss, _ = call_plugin("ntxent", {}, {"view_a": view_a, "view_b": view_b})
    assert loss.dtype == np.float32
    expected = numpy_ntxent(view_a.astype(np.float64), view_b.astype(np.float64), 0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_top1_counts_rows_whose_other_view_is_nearest():
    view_a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    view_b = np.array([[1.0, 0.2], [1.0, -0.3]], np.float32)  # sample 1's second view looks like 0
    _, top1 = call(view_a, view_b)
    assert top1 == pytest.approx(2 / 4)  # rows a0 and b0 find their partner; a1 and b1 do not


# --------------------------------------------------------------------- errors and config
def test_views_of_other_shapes_are_refused():
    with pytest.raises(lossplug.InvalidTensorError, match="view_a of shape \\(batch, dim\\)"):
        call(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(lossplug.InvalidTensorError, match="one dimension, got 3 and 4"):
        call(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"temperature": 0.0}, ["'ntxent'", "temperature=0.0", "in [0.01, 10.0]"]),
        ({"temperature": 50.0}, ["'ntxent'", "temperature=50.0", "in [0.01, 10.0]"]),
        ({"temperature": "0.5"}, ["'ntxent'", "temperature='0.5'", "int or float"]),
        ({"similarity": "dot"}, ["'ntxent'", "no parameter 'similarity'", "temperature"]),
    ],
)
def test_bad_config_is_refused_naming_plugin_field_and_rule(config, words):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("ntxent", **config)
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------- end to end
def augment(x, rng, noise=0.1):
    """A view of 8x8 digits: shifted by up to one pixel (zero fill), plus Gaussian noise."""
    images = np.pad(x.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
    shifts = rng.integers(0, 3, size=(len(x), 2))
    out = np.stack(
        [im[dy : dy + 8, dx : dx + 8] for im, (dy, dx) in zip(images, shifts, strict=True)]
    )
    return (out + rng.normal(0.0, noise, out.shape)).reshape(-1, 64).astype("float32")


def class_structure(z, labels):
    """(1-NN class accuracy, mean inter-class / mean intra-class cosine distance)."""
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    distance = 1.0 - u @ u.T
    np.fill_diagonal(distance, np.inf)
    accuracy = float(np.mean(labels[distance.argmin(1)] == labels))
    same, off = labels[:, None] == labels[None, :], ~np.eye(len(z), dtype=bool)
    return accuracy, float(distance[~same].mean() / distance[same & off].mean())


def view_retrieval(encoder, x, rng, batch=128):
    """Held-out top-1 in batches of ``batch`` images (as in training): the fraction of
    augmented images whose most similar other view is their own."""
    a, b = encoder.predict(augment(x, rng), verbose=0), encoder.predict(augment(x, rng), verbose=0)
    hits = [
        call(a[i : i + batch], b[i : i + batch], temperature=0.2)[1]
        for i in range(0, len(x), batch)
    ]
    return float(np.mean(hits))


class TwoViews(keras.utils.PyDataset):
    """Batches of two fresh augmentations of the same digits, and no targets: fit(x)."""

    def __init__(self, images, batch_size=128, seed=0):
        super().__init__()
        self.images, self.batch_size = images, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index):
        rows = self.images[self.order[index * self.batch_size : (index + 1) * self.batch_size]]
        return ((augment(rows, self.rng), augment(rows, self.rng)),)  # inputs only

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.images))


@pytest.mark.slow
def test_self_supervised_digits_pull_classes_apart_without_labels():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(images))
    train, test, test_labels = images[order[:1200]], images[order[1200:]], labels[order[1200:]]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    encoder = keras.Model(inputs, keras.layers.Dense(32)(hidden), name="encoder")
    first, second = keras.Input((64,), name="first"), keras.Input((64,), name="second")
    view_a = keras.layers.Identity(name="view_a")(encoder(first))
    view_b = keras.layers.Identity(name="view_b")(encoder(second))
    model = lossplug.LossModel([first, second], [view_a, view_b])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=lossplug.use("ntxent", temperature=0.2)
    )
    before = class_structure(encoder.predict(test, verbose=0), test_labels)
    retrieval_before = view_retrieval(encoder, test, np.random.default_rng(1))
    history = model.fit(TwoViews(train), epochs=10, verbose=0).history  # no labels anywhere
    after = class_structure(encoder.predict(test, verbose=0), test_labels)
    retrieval_after = view_retrieval(encoder, test, np.random.default_rng(1))
    print(
        f"\nheld-out digits: 1-NN accuracy {before[0]:.3f} -> {after[0]:.3f}, inter/intra-class "
        f"distance ratio {before[1]:.3f} -> {after[1]:.3f}, other-view retrieval in batches of "
        f"128 {retrieval_before:.3f} -> {retrieval_after:.3f}; training loss "
        f"{history['ntxent'][0]:.3f} -> {history['ntxent'][-1]:.3f}, top1 "
        f"{history['ntxent_top1'][0]:.3f} -> {history['ntxent_top1'][-1]:.3f}"
    )
    assert set(history) == {"loss", "ntxent", "ntxent_top1"}
    assert history["ntxent"][-1] < history["ntxent"][0] - 0.5
    assert after[1] > 1.3 * before[1]  # classes pulled apart although no label was seen
    assert retrieval_after > retrieval_before + 0.1
    assert after[0] > 0.85  # and the nearest neighbours still mostly share the class

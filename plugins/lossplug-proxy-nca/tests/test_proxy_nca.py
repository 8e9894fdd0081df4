"""Tests of the proxy_nca plugin: the paper's formula, the proxies (state), config, training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_proxy_nca as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import harness_for

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("proxy_nca")


def run(labels, embeddings, proxies, **config):
    """The installed plugin's per-sample loss (float64) and metrics, with the given proxies."""
    config.setdefault("num_classes", len(proxies))
    loss, metrics = call_plugin(
        "proxy_nca",
        {"y_true": labels},
        {"embeddings": embeddings},
        config=config,
        state={"proxies": proxies},
    )
    assert loss.shape == (len(labels),)
    return loss.astype(np.float64), metrics


def gradients(labels, embeddings, proxies, **config):
    """(d sum(loss) / d embeddings, d sum(loss) / d proxies) through the kit's harness."""
    config.setdefault("num_classes", len(proxies))
    example = Example(
        {"y_true": labels},
        {"embeddings": embeddings},
        plugin.SPEC.make_config(config),
        state={"proxies": proxies},
    )
    _, grads, state_grads = harness_for("proxy_nca").gradients(example, ["embeddings"])
    return grads["embeddings"], state_grads["proxies"]


def reference(labels, x, p, scale, denominator):
    """Movshovitz-Attias et al. eq. 6 written out: NCA over squared distances of unit vectors."""
    x = np.asarray(x, np.float64)
    p = np.asarray(p, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    losses = []
    for xi, yi in zip(x, labels, strict=True):
        d = ((xi - p) ** 2).sum(-1)
        others = [c for c in range(len(p)) if denominator == "all" or c != yi]
        losses.append(scale * d[yi] + np.log(np.exp(-scale * d[others]).sum()))
    return np.array(losses)


@st.composite
def batches(draw):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(2, 6))
    d = draw(st.integers(2, 5))
    elements = st.floats(-3, 3, width=32).filter(lambda v: abs(v) > 0.05)
    x = draw(hnp.arrays(np.float32, (b, d), elements=elements))
    p = draw(hnp.arrays(np.float32, (c, d), elements=elements))
    y = draw(hnp.arrays(np.int32, (b,), elements=st.integers(0, c - 1)))
    return y, x, p


scales = st.floats(0.1, 30.0)
denominators = st.sampled_from(["all", "negatives"])


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(batches(), scales, denominators)
def test_matches_the_paper(batch, scale, denominator):
    y, x, p = batch
    loss, metrics = run(y, x, p, scale=scale, denominator=denominator)
    np.testing.assert_allclose(
        loss, reference(y, x, p, scale, denominator), rtol=1e-4, atol=1e-4 * (1 + scale)
    )
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(metrics["proxy_accuracy"], (cos.argmax(1) == y).mean())


@SETTINGS
@given(batches(), scales)
def test_all_is_softmax_cross_entropy_of_scaled_cosines(batch, scale):
    """d = 2 - 2 cos for unit vectors: softmax(-s d) is softmax(2 s cos)."""
    y, x, p = batch
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)
    ).T
    expected = keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(
            y, (2 * scale * cos).astype(np.float32), from_logits=True
        )
    )
    np.testing.assert_allclose(run(y, x, p, scale=scale)[0], expected, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(batches(), st.floats(0.1, 10.0), st.floats(0.1, 10.0), denominators)
def test_invariant_to_the_norms_of_embeddings_and_proxies(batch, a, b, denominator):
    y, x, p = batch
    base = run(y, x, p, denominator=denominator)[0]
    scaled = run(y, x * np.float32(a), p * np.float32(b), denominator=denominator)[0]
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-4)


def test_the_papers_form_can_go_negative_the_softmax_form_cannot():
    p = np.eye(3, dtype=np.float32)
    x = np.array([[1.0, 0.0, 0.0]], np.float32)
    y = np.array([0])
    negatives = run(y, x, p, scale=9.0, denominator="negatives")[0]
    softmax = run(y, x, p, scale=9.0, denominator="all")[0]
    # d_y = 0, d_other = 2: -log(1 / (2 e^-18)) and -log(1 / (1 + 2 e^-18))
    np.testing.assert_allclose(negatives, np.log(2) - 18.0, rtol=1e-5)
    np.testing.assert_allclose(softmax, np.log1p(2 * np.exp(-18.0)), rtol=1e-3, atol=1e-12)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_finite_and_bounded_at_extreme_and_zero_embeddings(denominator):
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 3)).astype(np.float32)
    x = np.array([[1e4, -1e4, 0.0], [1e-6, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    y = np.array([0, 3, 1])
    loss, _ = run(y, x, p, scale=30.0, denominator=denominator)
    gx, gp = gradients(y, x, p, scale=30.0, denominator=denominator)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))
    low, high = (np.log(3) - 120, np.log(3) + 120) if denominator == "negatives" else (0, 121.1)
    assert np.all(loss >= low) and np.all(loss <= high)
    # a zero embedding has no direction: the same cosine 0 to every proxy
    if denominator == "all":
        np.testing.assert_allclose(loss[2], np.log(4), rtol=1e-5)


def test_every_proxy_gets_a_dense_gradient():
    """The positive proxy is pulled, every other one pushed (all appear in the softmax)."""
    rng = np.random.default_rng(1)
    p = rng.normal(size=(5, 4)).astype(np.float32)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 0, 0, 2, 2, 0])
    _, gp = gradients(y, x, p)
    assert gp.shape == p.shape and np.all(np.abs(gp).sum(1) > 0)


@pytest.mark.slow
def test_adam_moves_a_proxy_by_the_learning_rate_with_repeated_labels():
    """No IndexedSlices: with k samples of one class, Adam's first step is lr per coordinate,
    not up to sqrt(k) lr (see the authoring guide's note)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    embeddings = keras.layers.Dense(3, name="embeddings")(inputs)
    model = lossplug.LossModel(inputs, embeddings)
    model.compile(
        optimizer=keras.optimizers.Adam(0.1), loss=lossplug.use("proxy_nca", num_classes=4)
    )
    proxies = next(w for w in model.weights if w.path.endswith("proxies"))
    before = proxies.numpy().copy()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, np.zeros(8, "int32"), epochs=1, batch_size=8, verbose=0)
    step = np.abs(proxies.numpy() - before)
    assert step.max() <= 0.1 + 1e-5 and step.max() > 0.09


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"num_classes": 1}, "num_classes=1 is invalid: must be in [2, inf]"),
        ({"num_classes": 2.0}, "num_classes=2.0 is invalid: must be int, got float"),
        ({"scale": 0.0}, "scale=0.0 is invalid: must be in (0.0, inf]"),
        ({"denominator": "positives"}, "denominator='positives' is invalid: must be one of"),
        ({"temperature": 0.1}, "has no parameter 'temperature'; its parameters are: num_classes"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("proxy_nca", **values)
    assert "'proxy_nca'" in str(info.value)
    assert fragment in str(info.value)


def test_bad_labels_are_explained():
    p = np.eye(3, dtype=np.float32)
    x = np.ones((2, 3), np.float32)
    with pytest.raises(Exception, match=r"proxy_nca.*class ids outside \[0, num_classes=3\)"):
        run(np.array([0, 3]), x, p)
    with pytest.raises(lossplug.InvalidTensorError, match=r"proxy_nca.*one-hot\?"):
        run(np.eye(3, dtype=np.int32)[:2], x, p)


# ----------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(
        (x / 16.0).astype("float32"), y, test_size=0.3, random_state=0, stratify=y
    )


def _unit(e):
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _scores(model, x_train, y_train, x_test, y_test):
    """(nearest-proxy accuracy, 1-NN accuracy, inter / intra-class distance ratio), held out."""
    train, test = _unit(model.predict(x_train, verbose=0)), _unit(model.predict(x_test, verbose=0))
    proxies = _unit(next(w for w in model.weights if w.path.endswith("proxies")).numpy())
    nearest_proxy = float(((test @ proxies.T).argmax(1) == y_test).mean())
    one_nn = float((y_train[(test @ train.T).argmax(1)] == y_test).mean())
    d = np.sqrt(np.maximum(2 - 2 * test @ test.T, 0))
    same = y_test[:, None] == y_test[None, :]
    ratio = float(d[~same].mean() / d[same & ~np.eye(len(y_test), dtype=bool)].mean())
    return nearest_proxy, one_nn, ratio


@pytest.mark.slow
def test_training_on_digits_gathers_each_class_around_its_proxy():
    x_train, x_test, y_train, y_test = _digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    model = lossplug.LossModel(inputs, keras.layers.Dense(16, name="embeddings")(hidden))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss=lossplug.use("proxy_nca", num_classes=10)
    )
    before = _scores(model, x_train, y_train, x_test, y_test)
    history = model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0).history
    after = _scores(model, x_train, y_train, x_test, y_test)
    names = ("nearest-proxy accuracy", "1-NN accuracy", "inter/intra distance ratio")
    print("\ndigits, held out, before -> after 5 epochs:")
    for name, b, a in zip(names, before, after, strict=True):
        print(f"  {name}: {b:.3f} -> {a:.3f}")
    assert history["proxy_nca"][-1] < 0.2 * history["proxy_nca"][0]
    assert history["proxy_nca_proxy_accuracy"][-1] > 0.9
    assert after[0] > 0.85 and after[1] > before[1] + 0.04 and after[2] > 1.25 * before[2]

"""Tests of the proxy_nca plugin: the paper's formula, the proxies (state), config, training."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import embedding_helpers as helpers
import keras
import lossplug
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lossplug.testing import call_plugin, conformance_tests

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


#: (d sum(loss) / d embeddings, d sum(loss) / d proxies) through the kit's harness.
gradients = functools.partial(helpers.proxy_gradients, "proxy_nca")


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


batches = functools.partial(helpers.proxy_batches, 6, classes=(2, 6), dims=(2, 5))
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
    helpers.check_adam_moves_a_proxy_by_the_learning_rate("proxy_nca", np.zeros(8, "int32"))


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
    helpers.check_bad_proxy_labels_are_explained("proxy_nca")


# ----------------------------------------------------------------- training
@pytest.mark.slow
def test_training_on_digits_gathers_each_class_around_its_proxy():
    helpers.check_training_gathers_each_class_around_its_proxy(
        "proxy_nca", loss_drop=0.2, ratio_gain=1.25
    )

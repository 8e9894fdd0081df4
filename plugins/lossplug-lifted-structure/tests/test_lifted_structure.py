"""Tests of the lifted_structure plugin: the paper's eq. 4 in NumPy, stability, degenerate
batches, configuration errors, the conformance kit and training on digits."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_lifted_structure as plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.numerics import L2_EPSILON
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import harness_for
from lossplug_lifted_structure.loss import lifted_structure_loss

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def config(**values):
    return plugin.SPEC.make_config(values)


def np_distances(x, metric):
    x = np.asarray(x, np.float64)
    if metric == "cosine":
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), L2_EPSILON)
        return np.clip(1.0 - u @ u.T, 0.0, 2.0)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def reference(x, labels, cfg, weights=None):
    """Eq. 4 of Oh Song et al. 2016, over unordered positive pairs (i < j) for equal
    weights; with weights, each ordered pair weighted by its anchor."""
    d = np_distances(x, cfg.metric)
    n = len(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    total = counted = 0.0
    for i in range(n):
        for j in range(n):
            if i == j or labels[i] != labels[j]:
                continue
            terms = [cfg.margin - d[i, k] for k in range(n) if labels[k] != labels[i]]
            terms += [cfg.margin - d[j, k] for k in range(n) if labels[k] != labels[j]]
            if not terms:
                continue
            objective = np.logaddexp.reduce(terms) + d[i, j]
            total += w[i] * max(objective, 0.0) ** 2
            counted += w[i]
    return 0.5 * total / counted if counted > 0 else 0.0


@st.composite
def problems(draw):
    n = draw(st.integers(1, 8))
    dim = draw(st.integers(1, 4))
    x = draw(hnp.arrays(np.float32, (n, dim), elements=st.floats(-3, 3, width=32, allow_nan=False)))
    labels = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, 2)))
    cfg = config(margin=draw(st.floats(0.0, 3.0)), metric=draw(st.sampled_from(plugin.METRICS)))
    weights = draw(
        st.none() | hnp.arrays(np.float32, (n,), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    )
    return x, labels, cfg, weights


# ----------------------------------------------------------------------------- the math
@SETTINGS
@given(problem=problems())
def test_equals_the_paper_formula(problem):
    x, labels, cfg, weights = problem
    loss, metrics = lifted_structure_loss(x, labels, cfg, weights)
    expected = reference(x, labels, cfg, weights)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=2e-5)
    assert 0.0 <= float(metrics["active_fraction"]) <= 1.0


def test_the_mean_over_ordered_pairs_is_the_papers_sum_over_unordered_pairs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    cfg = config(margin=1.0)
    d = np_distances(x, "euclidean")
    pairs = [(i, j) for i in range(9) for j in range(i + 1, 9) if labels[i] == labels[j]]
    total = 0.0
    for i, j in pairs:
        negatives = [cfg.margin - d[i, k] for k in range(9) if labels[k] != labels[i]]
        negatives += [cfg.margin - d[j, k] for k in range(9) if labels[k] != labels[j]]
        total += max(math.log(np.exp(negatives).sum()) + d[i, j], 0.0) ** 2
    loss, _ = lifted_structure_loss(x, labels, cfg)
    np.testing.assert_allclose(float(loss), total / (2 * len(pairs)), rtol=1e-5)


def test_far_apart_classes_give_zero_and_large_margins_stay_finite():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss, metrics = call_plugin("lifted_structure", {"y_true": labels}, {"embeddings": x})
    assert float(loss) == 0.0 and float(metrics["active_fraction"]) == 0.0
    # margin 1e4: exp(1e4) overflows any float, the log-sum-exp does not
    loss, grad = loss_and_gradient(x, labels, margin=1e4)
    np.testing.assert_allclose(loss, 0.5 * (1e4 - 10.0 + math.log(4.0)) ** 2, rtol=1e-5)
    assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------- degenerate
def loss_and_gradient(x, labels, **values):
    """The loss and d loss / d embeddings, through the kit's harness."""
    example = Example(
        inputs={"y_true": np.asarray(labels, np.int32)},
        outputs={"embeddings": np.asarray(x, np.float32)},
        config=config(**values),
    )
    outcome, grads, _ = harness_for("lifted_structure").gradients(example, ["embeddings"])
    return float(outcome.loss), grads["embeddings"]


@pytest.mark.parametrize("metric", plugin.METRICS)
def test_degenerate_batches_are_exactly_zero_or_finite(metric):
    for labels in ([4], [2, 2, 2], [0, 1, 2]):  # no positive pair with a negative
        for x in (np.zeros((len(labels), 3)), np.ones((len(labels), 3))):
            loss, grad = loss_and_gradient(x, labels, metric=metric)
            assert loss == 0.0 and np.all(grad == 0.0)
    # coincident points of two classes: finite value and gradient
    loss, grad = loss_and_gradient(np.ones((4, 3)), [0, 0, 1, 1], metric=metric)
    assert np.isfinite(loss) and loss > 0 and np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"margin": -1.0}, "margin=-1.0 is invalid"),
        ({"margin": "1"}, "margin='1' is invalid"),
        ({"metric": "manhattan"}, "metric='manhattan' is invalid"),
        ({"alpha": 1.0}, "has no parameter 'alpha'"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="lifted_structure") as info:
        lossplug.use("lifted_structure", **values)
    assert fragment in str(info.value)


def test_tensors_of_the_wrong_shape_are_reported():
    with pytest.raises(lossplug.InvalidTensorError, match="'lifted_structure' needs embeddings"):
        call_plugin(
            "lifted_structure", {"y_true": np.arange(4)}, {"embeddings": np.zeros((4, 2, 2))}
        )
    with pytest.raises(lossplug.InvalidTensorError, match="one-hot"):
        call_plugin("lifted_structure", {"y_true": np.eye(4)}, {"embeddings": np.zeros((4, 2))})


test_conformance = conformance_tests("lifted_structure")


# ----------------------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def distance_ratio(embeddings, labels):
    """mean inter-class / mean intra-class Euclidean distance."""
    d = np_distances(embeddings, "euclidean")
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return d[~same].mean() / d[same & off].mean()


def test_training_on_digits_separates_the_classes():
    x, y = _digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    embeddings = keras.layers.Dense(16, name="embeddings")(hidden)
    model = lossplug.LossModel(inputs, embeddings)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=lossplug.use("lifted_structure"))
    before = distance_ratio(model.predict(x, verbose=0), y)
    history = model.fit(x, y, epochs=5, batch_size=128, verbose=0)
    after = distance_ratio(model.predict(x, verbose=0), y)
    losses = history.history["lifted_structure"]
    print(
        f"\nlifted_structure on digits: inter/intra distance ratio {before:.2f} -> {after:.2f}, "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    assert losses[-1] < 0.7 * losses[0], losses
    assert after > 1.5 * before, (before, after)

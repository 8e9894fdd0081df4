"""Tests of the npair plugin: pair formation and Sohn's loss in NumPy, special cases,
degenerate batches, configuration errors, the conformance kit and training on digits."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import embedding_helpers as helpers
import lossplug
import lossplug_npair as plugin
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.numerics import L2_EPSILON
from lossplug.testing import call_plugin, conformance_tests
from lossplug_npair.loss import form_pairs, npair_loss


def config(**values):
    return plugin.SPEC.make_config(values)


def np_pairs(labels, x):
    """(anchor, positive) index pairs: the first two samples of each class in the canonical
    order (lexicographic on the rows, then position)."""
    x = np.asarray(x)
    seen = {}
    for i in sorted(range(len(labels)), key=lambda i: (tuple(x[i].tolist()), i)):
        seen.setdefault(int(labels[i]), []).append(i)
    return [(idx[0], idx[1]) for idx in seen.values() if len(idx) >= 2]


def reference(x, labels, cfg, weights=None):
    """Sohn 2016, eq. 3 (+ L2 regulariser) over the N pairs, anchor by anchor."""
    x = np.asarray(x, np.float64)
    if cfg.similarity == "cosine":
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), L2_EPSILON)
    else:
        u = x
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    pairs = np_pairs(labels, x)
    total = counted = 0.0
    for a, p in pairs:
        s_own = u[a] @ u[p]
        others = [u[a] @ u[q] - s_own for b, q in pairs if b != a]
        cross_entropy = np.logaddexp.reduce([0.0, *others])  # log(1 + sum exp), stable
        regulariser = 0.5 * (x[a] @ x[a] + x[p] @ x[p])
        total += w[a] * (cross_entropy + cfg.l2_weight * regulariser)
        counted += w[a]
    return total / counted if counted > 0 else 0.0


@st.composite
def problems(draw):
    x, labels = draw(helpers.labelled_embeddings(max_size=9, classes=4))
    cfg = config(
        l2_weight=draw(st.sampled_from([0.0, 0.002, 0.5])),
        similarity=draw(st.sampled_from(plugin.SIMILARITIES)),
    )
    weights = draw(helpers.sample_weights(len(labels)))
    return x, labels, cfg, weights


# ----------------------------------------------------------------------------- the math
@helpers.SETTINGS
@given(
    labels=hnp.arrays(np.int32, st.integers(1, 10), elements=st.integers(0, 4)),
    data=st.data(),
)
def test_pairs_are_the_first_two_samples_of_each_class_in_canonical_order(labels, data):
    values = st.sampled_from([-1.0, 0.0, 0.5, 1.0])  # many ties between coordinates and rows
    x = data.draw(hnp.arrays(np.float32, (len(labels), 3), elements=values))
    anchor, positive = form_pairs(ops.convert_to_tensor(labels), ops.convert_to_tensor(x))
    anchor, positive = ops.convert_to_numpy(anchor), ops.convert_to_numpy(positive)
    expected = np_pairs(labels, x)
    assert sorted(np.flatnonzero(anchor).tolist()) == sorted(a for a, _ in expected)
    for a, p in expected:
        assert positive[a] == p
    # permuting the batch permutes the pairs with it: the same loss
    perm = data.draw(st.permutations(range(len(labels))))
    cfg = config()
    np.testing.assert_allclose(
        float(npair_loss(x[perm], labels[perm], cfg)[0]),
        float(npair_loss(x, labels, cfg)[0]),
        rtol=1e-6,
        atol=1e-7,
    )


@helpers.SETTINGS
@given(problem=problems())
def test_equals_the_paper_formula(problem):
    x, labels, cfg, weights = problem
    loss, metrics = npair_loss(x, labels, cfg, weights)
    expected = reference(x, labels, cfg, weights)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=2e-5)
    assert float(metrics["pairs"]) == len(np_pairs(labels, x))


def test_a_worked_example():
    # classes 0 and 1: anchors 0 and 2, positives 1 and 3 (sample 4, a third of class 0 after
    # them in lexicographic order, is unused)
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [9.0, 9.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 0])
    loss, metrics = call_plugin(
        "npair", {"y_true": labels}, {"embeddings": x}, config={"l2_weight": 0.1}
    )
    # anchor 0: s(f0, f1+) = 2, s(f0, f3+) = 0 -> log(1 + e^-2); R = (1 + 4) / 2
    # anchor 2: s(f2, f3+) = 3, s(f2, f1+) = 0 -> log(1 + e^-3); R = (1 + 9) / 2
    expected = (np.log1p(np.exp(-2.0)) + 0.25 + np.log1p(np.exp(-3.0)) + 0.5) / 2
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["pairs"]) == 2.0


def test_one_pair_leaves_only_the_regulariser_and_no_pair_gives_zero():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 5.0]], np.float32)
    loss, _ = call_plugin("npair", {"y_true": np.array([0, 0, 1])}, {"embeddings": x})
    np.testing.assert_allclose(float(loss), 0.002 * (5.0 + 9.0) / 2, rtol=1e-6)
    loss, metrics = call_plugin("npair", {"y_true": np.array([0, 1, 2])}, {"embeddings": x})
    assert float(loss) == 0.0 and float(metrics["pairs"]) == 0.0


def test_large_inner_products_stay_finite():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(12, 8)) * 100.0).astype(np.float32)  # logits ~ 1e5
    labels = np.repeat(np.arange(6), 2)
    loss, grad = loss_and_gradient(x, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, reference(x, labels, config()), rtol=1e-4)


# ----------------------------------------------------------------------------- degenerate
#: The loss and d loss / d embeddings, through the kit's harness.
loss_and_gradient = functools.partial(helpers.loss_and_gradient, "npair")


@pytest.mark.parametrize("similarity", plugin.SIMILARITIES)
def test_degenerate_batches_are_exactly_zero_or_finite(similarity):
    for labels in ([4], [0, 1, 2]):  # no class with two samples
        for x in (np.zeros((len(labels), 3)), np.ones((len(labels), 3))):
            loss, grad = loss_and_gradient(x, labels, similarity=similarity)
            assert loss == 0.0 and np.all(grad == 0.0)
    for x in (np.zeros((4, 3)), np.ones((4, 3))):  # coincident or zero embeddings
        loss, grad = loss_and_gradient(x, [0, 0, 1, 1], similarity=similarity)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"l2_weight": -0.1}, "l2_weight=-0.1 is invalid"),
        ({"similarity": "euclidean"}, "similarity='euclidean' is invalid"),
        ({"reg_lambda": 0.002}, "has no parameter 'reg_lambda'"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="npair") as info:
        lossplug.use("npair", **values)
    assert fragment in str(info.value)


def test_tensors_of_the_wrong_shape_are_reported():
    helpers.check_wrong_tensors_are_reported("npair")


test_conformance = conformance_tests("npair")


# ----------------------------------------------------------------------------- training
def two_of_each_class(labels):
    """An order of the samples in which each batch of 20 holds two of each of the ten digits."""
    rng = np.random.default_rng(0)
    order = []
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    for step in range(min(len(c) for c in by_class) // 2):
        batch = [c[2 * step : 2 * step + 2] for c in by_class]
        order.append(np.concatenate(batch)[rng.permutation(20)])
    return np.concatenate(order)


def test_training_on_digits_separates_the_classes():
    """Batches of 20: two samples of each of the ten digits (N = 10 pairs per batch)."""
    helpers.check_training_separates_the_digits(
        "npair", "cosine", batch_size=20, batch_order=two_of_each_class
    )

"""Tests of the lifted_structure plugin: the paper's eq. 4 in NumPy, stability, degenerate
batches, configuration errors, the conformance kit and training on digits."""

from __future__ import annotations

import functools
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import embedding_helpers as helpers
import lossplug
import lossplug_lifted_structure as plugin
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lossplug.testing import call_plugin, conformance_tests
from lossplug_lifted_structure.loss import lifted_structure_loss


def config(**values):
    return plugin.SPEC.make_config(values)


def reference(x, labels, cfg, weights=None):
    """Eq. 4 of Oh Song et al. 2016, over unordered positive pairs (i < j) for equal
    weights; with weights, each ordered pair weighted by its anchor."""
    d = helpers.np_distances(x, cfg.metric)
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
    x, labels = draw(helpers.labelled_embeddings())
    cfg = config(margin=draw(st.floats(0.0, 3.0)), metric=draw(st.sampled_from(plugin.METRICS)))
    weights = draw(helpers.sample_weights(len(labels)))
    return x, labels, cfg, weights


# ----------------------------------------------------------------------------- the math
@helpers.SETTINGS
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
    d = helpers.np_distances(x, "euclidean")
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
#: The loss and d loss / d embeddings, through the kit's harness.
loss_and_gradient = functools.partial(helpers.loss_and_gradient, "lifted_structure")


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
    helpers.check_wrong_tensors_are_reported("lifted_structure")


test_conformance = conformance_tests("lifted_structure")


# ----------------------------------------------------------------------------- training
def test_training_on_digits_separates_the_classes():
    helpers.check_training_separates_the_digits("lifted_structure")

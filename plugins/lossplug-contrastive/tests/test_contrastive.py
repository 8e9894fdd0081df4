"""Tests of the contrastive plugin: the paper's formula in NumPy, special cases, degenerate
batches, configuration errors, the conformance kit and training on digits."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import embedding_helpers as helpers
import lossplug
import lossplug_contrastive as plugin
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lossplug.testing import call_plugin, conformance_tests
from lossplug_contrastive.loss import contrastive_loss


def config(**values):
    return plugin.SPEC.make_config(values)


def reference(x, labels, cfg, weights=None):
    """Hadsell et al. eq. 4 over every ordered pair i != j, written out pair by pair."""
    d = helpers.np_distances(x, cfg.metric)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)

    def h(t):
        return 0.5 * max(t, 0.0) ** 2 if cfg.squared else max(t, 0.0)

    total = counted = 0.0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i == j:
                continue
            if labels[i] == labels[j]:
                loss = h(d[i, j] - cfg.pos_margin)
            else:
                loss = h(cfg.neg_margin - d[i, j])
            total += w[i] * loss
            if cfg.average == "all" or loss > 0:
                counted += w[i]
    return total / counted if counted > 0 else 0.0


@st.composite
def problems(draw):
    x, labels = draw(helpers.labelled_embeddings())
    metric = draw(st.sampled_from(plugin.METRICS))
    top = 2.0 if metric == "cosine" else 4.0
    cfg = config(
        pos_margin=draw(st.floats(0.0, top / 4)),
        neg_margin=draw(st.floats(0.0, top)),
        metric=metric,
        squared=draw(st.booleans()),
        average=draw(st.sampled_from(plugin.AVERAGES)),
    )
    weights = draw(helpers.sample_weights(len(labels)))
    return x, labels, cfg, weights


# ----------------------------------------------------------------------------- the math
@helpers.SETTINGS
@given(problem=problems())
def test_equals_the_paper_formula_over_all_pairs(problem):
    x, labels, cfg, weights = problem
    loss, metrics = contrastive_loss(x, labels, cfg, weights)
    expected = reference(x, labels, cfg, weights)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
    assert 0.0 <= float(metrics["active_fraction"]) <= 1.0


def test_a_worked_example_of_the_paper_form():
    # 1-D: a and b of class 0 at 0 and 0.5, c of class 1 at 0.8; m = 1
    x = np.array([[0.0], [0.5], [0.8]], np.float32)
    loss, metrics = call_plugin("contrastive", {"y_true": np.array([0, 0, 1])}, {"embeddings": x})
    # ordered pairs (a,b),(b,a): 1/2 0.5^2; (a,c),(c,a): 1/2 (1 - 0.8)^2; (b,c),(c,b): 1/2 (1 - 0.3)^2
    expected = (2 * 0.125 + 2 * 0.02 + 2 * 0.245) / 6
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["active_fraction"]) == 1.0


def test_pos_margin_and_unsquared_hinges_are_pytorch_metric_learnings_form():
    x = np.array([[0.0], [0.5], [0.8]], np.float32)
    values = {"pos_margin": 0.2, "squared": False, "average": "active"}
    loss, _ = call_plugin("contrastive", {"y_true": np.array([0, 0, 1])}, {"embeddings": x},
                          config=values)  # fmt: skip
    # positive pairs: 0.5 - 0.2 = 0.3 (twice); negatives: 1 - 0.8 = 0.2, 1 - 0.3 = 0.7 (twice)
    np.testing.assert_allclose(float(loss), (2 * 0.3 + 2 * 0.2 + 2 * 0.7) / 6, rtol=1e-6)


def test_zero_when_positives_coincide_and_negatives_are_beyond_the_margin():
    for metric, x in (
        ("euclidean", np.array([[0.0, 1.0], [0.0, 1.0], [3.0, 1.0], [3.0, 1.0]])),
        ("cosine", np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-0.5, 0.0]])),  # d = 2
    ):
        loss, metrics = call_plugin(
            "contrastive",
            {"y_true": np.array([0, 0, 1, 1])},
            {"embeddings": x.astype(np.float32)},
            config={"metric": metric, "neg_margin": 1.5},
        )
        assert float(loss) == 0.0 and float(metrics["active_fraction"]) == 0.0


def test_cosine_loss_ignores_the_scale_of_each_embedding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 10)
    cfg = config(metric="cosine", neg_margin=0.8)
    base = float(contrastive_loss(x, labels, cfg)[0])
    scaled = float(contrastive_loss(x * rng.uniform(0.1, 10, (10, 1)).astype("float32"), labels,
                                    cfg)[0])  # fmt: skip
    np.testing.assert_allclose(scaled, base, rtol=1e-5)
    euclidean = config(neg_margin=0.8)
    assert not np.isclose(
        float(contrastive_loss(x, labels, euclidean)[0]),
        float(contrastive_loss(x * 3.0, labels, euclidean)[0]),
    )


# ----------------------------------------------------------------------------- degenerate
#: The loss and d loss / d embeddings, through the kit's harness (any backend's tape).
loss_and_gradient = functools.partial(helpers.loss_and_gradient, "contrastive")


@pytest.mark.parametrize("metric", plugin.METRICS)
@pytest.mark.parametrize("average", plugin.AVERAGES)
@pytest.mark.parametrize("squared", [True, False])
def test_degenerate_batches_are_finite_and_zero_where_nothing_is_defined(metric, average, squared):
    values = {"metric": metric, "average": average, "squared": squared}
    loss, grad = loss_and_gradient(np.ones((1, 3)), [4], **values)  # no pair at all
    assert loss == 0.0 and np.all(grad == 0.0)
    for labels in ([2, 2, 2], [0, 1, 2]):  # one class: positives only; all distinct: negatives
        for x in (np.zeros((3, 3)), np.ones((3, 3)), np.eye(3)):
            loss, grad = loss_and_gradient(x, labels, **values)
            assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # coincident negatives: the largest loss h(m_neg), with finite gradients
    loss, grad = loss_and_gradient(np.ones((2, 3)), [0, 1], **values)
    assert loss == pytest.approx(0.5 if squared else 1.0) and np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"pos_margin": -0.1}, "pos_margin=-0.1 is invalid"),
        ({"neg_margin": float("nan")}, "neg_margin=nan is invalid"),
        ({"metric": "manhattan"}, "metric='manhattan' is invalid"),
        ({"average": "valid"}, "average='valid' is invalid"),
        ({"metric": "cosine", "neg_margin": 2.5}, "cosine distances lie in [0, 2]"),
        ({"margin": 1.0}, "has no parameter 'margin'"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="contrastive") as info:
        lossplug.use("contrastive", **values)
    assert fragment in str(info.value)


def test_tensors_of_the_wrong_shape_are_reported():
    helpers.check_wrong_tensors_are_reported("contrastive")


test_conformance = conformance_tests("contrastive")


# ----------------------------------------------------------------------------- training
def test_training_on_digits_separates_the_classes():
    helpers.check_training_separates_the_digits("contrastive")

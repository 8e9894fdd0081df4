"""Tests of the multi_similarity plugin: the paper's miner and loss in NumPy, special cases,
degenerate batches, configuration errors, the conformance kit and training on digits."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import embedding_helpers as helpers
import lossplug
import lossplug_multi_similarity as plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lossplug.numerics import L2_EPSILON
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug_multi_similarity.claims import perfect
from lossplug_multi_similarity.loss import multi_similarity_loss

SETTINGS = settings(
    helpers.SETTINGS, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


def config(**values):
    return plugin.SPEC.make_config(values)


def np_similarities(x):
    x = np.asarray(x, np.float64)
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), L2_EPSILON)
    return np.clip(u @ u.T, -1.0, 1.0)


def reference(x, labels, cfg, weights=None):
    """Eq. 9, 10 (mining) and 15 (loss) of Wang et al. 2019, anchor by anchor."""
    s = np_similarities(x)
    n = len(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    total = counted = 0.0
    for i in range(n):
        pos = [k for k in range(n) if k != i and labels[k] == labels[i]]
        neg = [k for k in range(n) if labels[k] != labels[i]]
        if cfg.mine:
            kept_neg = [k for k in neg if pos and s[i, k] + cfg.epsilon > min(s[i, pos])]
            kept_pos = [k for k in pos if neg and s[i, k] - cfg.epsilon < max(s[i, neg])]
        else:
            kept_pos, kept_neg = pos, neg
        loss = np.log1p(sum(np.exp(-cfg.alpha * (s[i, k] - cfg.base)) for k in kept_pos))
        loss = loss / cfg.alpha
        loss += np.log1p(sum(np.exp(cfg.beta * (s[i, k] - cfg.base)) for k in kept_neg)) / cfg.beta
        total += w[i] * loss
        if cfg.average == "batch" or kept_pos or kept_neg:
            counted += w[i]
    return total / counted if counted > 0 else 0.0


@st.composite
def problems(draw):
    x, labels = draw(helpers.labelled_embeddings())
    x[np.linalg.norm(x, axis=1) < 0.1, 0] = 1.0  # directions must exist
    cfg = config(
        alpha=draw(st.sampled_from([0.5, 2.0, 10.0])),
        beta=draw(st.sampled_from([1.0, 10.0, 50.0])),
        base=draw(st.sampled_from([0.0, 0.5, 1.0])),
        epsilon=draw(st.sampled_from([0.0, 0.1, 0.5])),
        mine=draw(st.booleans()),
        average=draw(st.sampled_from(plugin.AVERAGES)),
    )
    weights = draw(helpers.sample_weights(len(labels)))
    return x, labels, cfg, weights


def far_from_thresholds(x, labels, cfg):
    """No similarity within 1e-4 of a mining threshold (float32 rounding could flip it)."""
    s = np_similarities(x)
    same = labels[:, None] == labels[None, :]
    for i in range(len(labels)):
        pos = same[i] & (np.arange(len(labels)) != i)
        neg = ~same[i]
        if pos.any() and neg.any():
            gaps = np.concatenate(
                [
                    s[i, neg] + cfg.epsilon - s[i, pos].min(),
                    s[i, pos] - cfg.epsilon - s[i, neg].max(),
                ]
            )
            if np.any(np.abs(gaps) < 1e-4):
                return False
    return True


# ----------------------------------------------------------------------------- the math
@SETTINGS
@given(problem=problems())
def test_equals_the_papers_miner_and_loss(problem):
    x, labels, cfg, weights = problem
    # a similarity on a threshold: float32 and float64 may mine differently
    assume(not cfg.mine or far_from_thresholds(x, labels, cfg))
    loss, metrics = multi_similarity_loss(x, labels, cfg, weights)
    expected = reference(x, labels, cfg, weights)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5, atol=2e-5)
    assert 0.0 <= float(metrics["mined_fraction"]) <= 1.0


def test_a_worked_example_of_the_miner():
    # anchor 0 of class 0: positive 1 at similarity cos(60) = 0.5, negatives 2 at cos(30) and
    # 3 at cos(120) = -0.5; epsilon 0.1
    angles = np.deg2rad([0.0, 60.0, 30.0, 120.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    cfg = config(alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, average="batch")
    # anchor 0: negatives kept if s + 0.1 > 0.5: s=0.866 yes, s=-0.5 no; positive kept if
    # 0.5 - 0.1 < max neg 0.866: yes
    s = np.cos(np.deg2rad(30.0))
    anchor0 = np.log1p(np.exp(-2.0 * (0.5 - 0.5))) / 2.0 + np.log1p(np.exp(50.0 * (s - 0.5))) / 50
    # the first anchor alone (weights 1, 0, 0, 0 select it)
    one, _ = multi_similarity_loss(x, labels, cfg, np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    np.testing.assert_allclose(float(one), anchor0, rtol=1e-6)
    loss, _ = multi_similarity_loss(x, labels, cfg)
    np.testing.assert_allclose(float(loss), reference(x, labels, cfg), rtol=1e-6)


def test_zero_when_the_miner_keeps_no_pair_and_positive_without_mining():
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss, metrics = call_plugin("multi_similarity", {"y_true": labels}, {"embeddings": x})
    assert float(loss) == 0.0 and float(metrics["mined_fraction"]) == 0.0
    loss, _ = call_plugin(
        "multi_similarity", {"y_true": labels}, {"embeddings": x}, config={"mine": False}
    )
    # positives: 1/2 log(1 + e^{-2 (1 - 0.5)}); negatives: 1/50 log(1 + e^{50 (0 - 0.5)})
    expected = np.log1p(np.exp(-1.0)) / 2 + np.log1p(np.exp(-25.0)) / 50
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_the_perfect_example_of_the_claim_has_zero_loss_in_any_dimension():
    rng = np.random.default_rng(0)
    for dim in (1, 2, 3, 6):
        labels = rng.integers(0, 5, 7).astype(np.int32)
        example = Example(
            inputs={"y_true": labels},
            outputs={"embeddings": rng.normal(size=(7, dim)).astype(np.float32)},
            config=config(epsilon=0.5),
        )
        ideal = perfect(example)
        loss, _ = multi_similarity_loss(
            ideal.outputs["embeddings"], ideal.inputs["y_true"], ideal.config
        )
        assert float(loss) == 0.0


def test_large_scales_stay_finite():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    for values in ({"beta": 1e4, "base": -1.0}, {"alpha": 1e4, "base": 1.0}, {"alpha": 1e-3}):
        loss, grad = loss_and_gradient(x, labels, mine=False, **values)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------- degenerate
#: The loss and d loss / d embeddings, through the kit's harness.
loss_and_gradient = functools.partial(helpers.loss_and_gradient, "multi_similarity")


@pytest.mark.parametrize("mine", [True, False])
@pytest.mark.parametrize("average", plugin.AVERAGES)
def test_degenerate_batches_are_finite_and_zero_where_nothing_is_defined(mine, average):
    values = {"mine": mine, "average": average}
    loss, grad = loss_and_gradient(np.ones((1, 3)), [4], **values)
    assert loss == 0.0 and np.all(grad == 0.0)
    for labels in ([2, 2, 2], [0, 1, 2]):
        for x in (np.zeros((3, 3)), np.ones((3, 3)), np.eye(3)):
            loss, grad = loss_and_gradient(x, labels, **values)
            assert np.isfinite(loss) and np.all(np.isfinite(grad))
            if mine:  # one class: no negatives; distinct labels: no positives: nothing mined
                assert loss == 0.0


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"alpha": 0.0}, "alpha=0.0 is invalid"),
        ({"beta": -1.0}, "beta=-1.0 is invalid"),
        ({"base": 1.5}, "base=1.5 is invalid"),
        ({"epsilon": -0.1}, "epsilon=-0.1 is invalid"),
        ({"average": "anchors"}, "average='anchors' is invalid"),
        ({"lambda": 0.5}, "has no parameter 'lambda'"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="multi_similarity") as info:
        lossplug.use("multi_similarity", **values)
    assert fragment in str(info.value)


def test_tensors_of_the_wrong_shape_are_reported():
    helpers.check_wrong_tensors_are_reported("multi_similarity")


test_conformance = conformance_tests("multi_similarity")


# ----------------------------------------------------------------------------- training
def test_training_on_digits_separates_the_classes():
    """Cosine distances: the loss works on directions."""
    helpers.check_training_separates_the_digits("multi_similarity", "cosine")

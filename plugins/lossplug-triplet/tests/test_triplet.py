"""Tests of the triplet plugin: mining against brute force, degenerate batches, claims,
configuration, tf.distribute and training.

Backend-neutral (keras.ops, NumPy and lossplug.testing's gradients) except the
tf.distribute test; float64 stays float64 on JAX (64-bit mode where the tests need it).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attrs
import keras
import lossplug
import lossplug_triplet as plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug import backend
from lossplug.extras import Extras, StateStore
from lossplug.mining import mine
from lossplug.numerics import L2_EPSILON
from lossplug.pairs import pairwise_distances
from lossplug.terms import call_plugin
from lossplug.testing import conformance_tests, value_and_gradients
from lossplug_triplet.claims import check_cosine_scale_invariance, perfect_example

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
METRICS = ("euclidean", "squared_euclidean", "cosine")
#: float64 tensors exist inside this context on every backend (JAX: 64-bit mode)
float64_available = backend.current().kit_scope
#: Eager JAX compiles every op for each new shape (seconds each): there, the examples are
#: drawn with a few shapes (the smallest included), so the compilations are reused.
FEW_SHAPES = backend.name() == "jax"


def sizes(low, high):
    """An int in [low, high]; on JAX either end of the range."""
    return st.sampled_from([low, high]) if FEW_SHAPES else st.integers(low, high)


# ----------------------------------------------------------------------------- helpers
def config(**values):
    return plugin.SPEC.make_config(values)


def run(
    cfg,
    *,
    embeddings=None,
    labels=None,
    anchor=None,
    positive=None,
    negative=None,
    sample_weight=None,
):
    """Call the plugin through the core's call_plugin; returns (loss, metrics) as floats.

    Float64 inputs stay float64 (on JAX too)."""
    with float64_available():
        inputs, outputs = {}, {}
        if labels is not None:
            inputs["y_true"] = ops.convert_to_tensor(labels)
        for name, value in (
            ("embeddings", embeddings),
            ("anchor", anchor),
            ("positive", positive),
            ("negative", negative),
        ):
            if value is not None:
                outputs[name] = ops.convert_to_tensor(value)
        extras = Extras(
            config=cfg,
            epoch=ops.convert_to_tensor(np.int32(0)),
            step=ops.convert_to_tensor(np.int32(0)),
            training=True,
            state=StateStore(plugin="triplet"),
            sample_weight=None if sample_weight is None else ops.convert_to_tensor(sample_weight),
        )
        out = call_plugin(
            plugin.SPEC, plugin.build_loss_graph, inputs, outputs, extras, term="triplet"
        )
        metrics = {k: as_float(v) for k, (v, _) in out.metrics.items()}
        return as_float(out.loss), metrics


def as_float(value):
    return float(ops.convert_to_numpy(value))


def np_distances(embeddings, metric):
    e = np.asarray(embeddings, dtype=np.float64)
    if metric == "cosine":
        norms = np.maximum(np.sqrt((e * e).sum(1, keepdims=True)), L2_EPSILON)
        u = e / norms
        d = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    else:
        d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
        if metric == "euclidean":
            d = np.sqrt(d)
    np.fill_diagonal(d, 0.0)
    return d


def brute_force(d, labels, margin, strategy, average="valid", weights=None):
    """The mined loss by enumerating every (anchor, positive, negative): O(B^3).

    Returns (loss, active fraction)."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    scored = []  # (anchor, hinge)
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if strategy == "batch_all":
            scored += [(a, max(0.0, margin + d[a, p] - d[a, q])) for p in pos for q in neg]
        elif strategy == "batch_hard":
            if pos and neg:
                hardest = margin + max(d[a, p] for p in pos) - min(d[a, q] for q in neg)
                scored.append((a, max(0.0, hardest)))
        else:  # semi_hard
            if not neg:
                continue
            for p in pos:
                farther = [d[a, q] for q in neg if d[a, q] > d[a, p]]
                chosen = min(farther) if farther else max(d[a, q] for q in neg)
                scored.append((a, max(0.0, margin + d[a, p] - chosen)))
    counted = [(a, h) for a, h in scored if average == "valid" or h > 0]
    total = sum(w[a] * h for a, h in scored)
    denominator = sum(w[a] for a, _ in counted)
    loss = total / denominator if denominator > 0 else 0.0
    active = sum(1 for _, h in scored if h > 0)
    return loss, (active / len(scored) if scored else 0.0)


def _positives_negatives(labels):
    """(same label and not the anchor itself, other label) as boolean B x B tensors."""
    same = ops.equal(labels[:, None], labels[None, :])
    itself = ops.cast(ops.eye(ops.shape(labels)[0]), "bool")
    return ops.logical_and(same, ops.logical_not(itself)), ops.logical_not(same)


def naive_loss(embeddings, labels, margin, strategy, metric="euclidean"):
    """What a user would write: the B x B x B broadcast (for gradient comparisons)."""
    d = pairwise_distances(embeddings, metric=metric)
    pos, neg = _positives_negatives(labels)
    valid = ops.logical_and(pos[:, :, None], neg[:, None, :])
    if strategy == "batch_all":
        hinge = ops.relu(margin + d[:, :, None] - d[:, None, :])
        hinge = ops.where(valid, hinge, ops.zeros_like(hinge))
        return ops.sum(hinge) / ops.maximum(ops.sum(ops.cast(valid, d.dtype)), 1.0)
    # semi-hard: the closest negative farther than the positive, else the farthest negative
    big = ops.max(d) + margin + 1.0
    farther = ops.logical_and(valid, d[:, None, :] > d[:, :, None])
    outside = ops.min(ops.where(farther, d[:, None, :], big), axis=2)
    inside = ops.max(ops.where(neg, d, -1.0), axis=1)[:, None]
    chosen = ops.where(ops.any(farther, axis=2), outside, inside)
    pair = ops.logical_and(pos, ops.any(neg, axis=1)[:, None])
    hinge = ops.where(pair, ops.relu(margin + d - chosen), ops.zeros_like(d))
    return ops.sum(hinge) / ops.maximum(ops.sum(ops.cast(pair, d.dtype)), 1.0)


def naive_batch_hard_loss(embeddings, labels, margin, metric="euclidean"):
    """batch_hard as a user would write it: the hardest positive / negative per anchor,
    the first one on ties (a subgradient at ties)."""
    d = pairwise_distances(embeddings, metric=metric)
    pos, neg = _positives_negatives(labels)
    big = ops.max(d) + 9.0
    ip = ops.argmax(ops.where(pos, d, -ops.ones_like(d)), axis=1)
    i_n = ops.argmin(ops.where(neg, d, big), axis=1)
    hp = ops.take_along_axis(d, ip[:, None], axis=1)[:, 0]
    hn = ops.take_along_axis(d, i_n[:, None], axis=1)[:, 0]
    ok = ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1))
    per = ops.where(ok, ops.relu(margin + hp - hn), ops.zeros_like(hp))
    return ops.sum(per) / ops.maximum(ops.sum(ops.cast(ok, d.dtype)), 1.0)


@st.composite
def distance_problems(draw):
    """A symmetric distance matrix on a coarse grid (many exact ties), labels, margin, weights."""
    n = draw(st.integers(1, 8))
    grid = draw(hnp.arrays(np.float64, (n, n), elements=st.integers(0, 6).map(lambda v: v / 2)))
    d = np.triu(grid, 1)
    d = d + d.T
    labels = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, 3)))
    margin = draw(st.sampled_from([0.0, 0.5, 1.0, 1.25, 3.0]))
    weights = draw(
        st.none() | hnp.arrays(np.float64, (n,), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    )
    return d, labels, margin, weights


@st.composite
def embedding_batches(draw, low=-5.0, high=5.0):
    n = draw(sizes(1, 8))
    dim = draw(sizes(1, 4))
    values = st.floats(low, high, allow_nan=False, allow_infinity=False)
    embeddings = draw(hnp.arrays(np.float64, (n, dim), elements=values))
    labels = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, 2)))
    return embeddings, labels


# ----------------------------------------------------------------------------- mining maths
@SETTINGS
@given(
    problem=distance_problems(),
    strategy=st.sampled_from(STRATEGIES),
    average=st.sampled_from(["valid", "active"]),
)
def test_mining_equals_brute_force_on_any_distance_matrix(problem, strategy, average):
    d, labels, margin, weights = problem
    with float64_available():
        result = mine(
            ops.convert_to_tensor(d),
            labels=ops.convert_to_tensor(labels),
            margin=margin,
            strategy=strategy,
            average=average,
            weights=None if weights is None else ops.convert_to_tensor(weights),
        )
        loss, active_fraction = as_float(result.loss), as_float(result.active_fraction)
    expected, fraction = brute_force(d, labels, margin, strategy, average, weights)
    np.testing.assert_allclose(loss, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(active_fraction, fraction, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(
    batch=embedding_batches(),
    metric=st.sampled_from(METRICS),
    strategy=st.sampled_from(("batch_all", "batch_hard")),
    margin=st.floats(0.0, 1.9),
)
def test_plugin_equals_brute_force_from_embeddings(batch, metric, strategy, margin):
    """Through the plugin (distances included) the loss equals the O(B^3) enumeration."""
    embeddings, labels = batch
    cfg = config(metric=metric, mining=strategy, margin=margin)
    loss, _ = run(cfg, embeddings=embeddings, labels=labels)
    expected, _ = brute_force(np_distances(embeddings, metric), labels, margin, strategy)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("average", ["valid", "active"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_plugin_equals_brute_force_on_random_batches(strategy, average, metric):
    """Every strategy and metric, float32 in, on batches with several classes."""
    rng = np.random.default_rng(sum(map(ord, strategy + average + metric)))
    for _ in range(3):
        n = int(rng.integers(6, 24))
        embeddings = rng.normal(size=(n, 5)).astype(np.float32)
        labels = rng.integers(0, 4, n).astype(np.int32)
        cfg = config(metric=metric, mining=strategy, average=average, margin=0.3)
        loss, metrics = run(cfg, embeddings=embeddings, labels=labels)
        expected, fraction = brute_force(
            np_distances(embeddings, metric), labels, 0.3, strategy, average
        )
        np.testing.assert_allclose(loss, expected, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["active_fraction"], fraction, atol=1e-6)


@SETTINGS
@given(
    values=hnp.arrays(
        np.float32,
        st.tuples(sizes(1, 7), sizes(1, 5)),
        elements=st.floats(-100, 100, width=32),
    ),
    metric=st.sampled_from(METRICS),
)
def test_pairwise_distances_are_accurate_in_float32(values, metric):
    got = ops.convert_to_numpy(pairwise_distances(values, metric=metric)).astype(np.float64)
    expected = np_distances(values, metric)
    scale = 1.0 + np.abs(values).max()
    if metric == "squared_euclidean":
        tolerance = 1e-6 * scale**2
    elif metric == "euclidean":
        tolerance = 1e-6 * scale
    else:
        tolerance = 1e-6
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=tolerance)
    assert np.all(np.diag(got) == 0.0)


@SETTINGS
@given(
    batch=embedding_batches(),
    strategy=st.sampled_from(("batch_all", "batch_hard")),
    metric=st.sampled_from(METRICS),
)
def test_gradients_equal_those_of_the_broadcast_implementation(batch, strategy, metric):
    embeddings, labels = batch
    tensors = {"x": embeddings, "y": labels}
    cfg = config(metric=metric, mining=strategy, margin=0.7)
    ours, g_ours = value_and_gradients(lambda x, y: plugin.mined_loss(x, y, cfg).loss, tensors)
    if strategy == "batch_all":
        reference, g_ref = value_and_gradients(
            lambda x, y: naive_loss(x, y, 0.7, strategy, metric), tensors
        )
    else:
        reference, g_ref = value_and_gradients(
            lambda x, y: naive_batch_hard_loss(x, y, 0.7, metric), tensors
        )
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(g_ours["x"]))
    np.testing.assert_allclose(g_ours["x"], g_ref["x"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_semi_hard_value_and_gradient_equal_the_broadcast_implementation(seed):
    rng = np.random.default_rng(seed)
    tensors = {"x": rng.normal(size=(20, 4)), "y": rng.integers(0, 4, 20).astype(np.int32)}
    ours, g_ours = value_and_gradients(
        lambda x, y: (
            mine(
                pairwise_distances(x, metric="euclidean"),
                labels=y,
                margin=0.5,
                strategy="semi_hard",
            ).loss
        ),
        tensors,
    )
    reference, g_ref = value_and_gradients(lambda x, y: naive_loss(x, y, 0.5, "semi_hard"), tensors)
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-10)
    np.testing.assert_allclose(g_ours["x"], g_ref["x"], rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------- degenerate
NO_TRIPLET_LABELS = {
    "one class": [3, 3, 3, 3],
    "all distinct": [0, 1, 2, 3],
    "single sample": [5],
}


@pytest.mark.parametrize("labels", list(NO_TRIPLET_LABELS.values()), ids=list(NO_TRIPLET_LABELS))
@pytest.mark.parametrize(("strategy", "metric"), list(itertools.product(STRATEGIES, METRICS)))
@pytest.mark.parametrize("average", ["valid", "active"])
def test_no_valid_triplet_gives_exactly_zero_and_finite_gradients(
    labels, strategy, metric, average
):
    labels = np.asarray(labels, np.int32)
    for embeddings in (
        np.zeros((len(labels), 3), np.float32),
        np.random.default_rng(0).normal(size=(len(labels), 3)).astype(np.float32),
    ):
        cfg = config(mining=strategy, metric=metric, average=average)

        def loss(x, y, cfg=cfg):
            return plugin.triplet_loss({"y_true": y}, {"embeddings": x}, cfg)

        value, grads = value_and_gradients(
            lambda x, y: loss(x, y).loss, {"x": embeddings, "y": labels}
        )
        assert float(value) == 0.0
        assert as_float(loss(embeddings, labels).metrics["active_fraction"]) == 0.0
        # (a gradient the loss does not depend on comes back as zeros)
        assert np.all(np.isfinite(grads["x"]))


@pytest.mark.parametrize(("strategy", "metric"), list(itertools.product(STRATEGIES, METRICS)))
def test_coincident_embeddings_have_finite_gradients(strategy, metric):
    """Valid triplets whose points coincide (d = 0): the sqrt and the normalisation are safe."""
    x = np.ones((6, 3), np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    cfg = config(mining=strategy, metric=metric, margin=0.5)
    loss, grads = value_and_gradients(
        lambda x, labels: plugin.triplet_loss({"y_true": labels}, {"embeddings": x}, cfg).loss,
        {"x": x, "labels": labels},
    )
    np.testing.assert_allclose(float(loss), 0.5, rtol=1e-6)  # every hinge is exactly m
    assert np.all(np.isfinite(grads["x"]))


# ----------------------------------------------------------------------------- claims
@SETTINGS
@given(
    batch=embedding_batches(),
    metric=st.sampled_from(METRICS),
    strategy=st.sampled_from(STRATEGIES),
    margin=st.floats(0.0, 1.9),
)
def test_zero_once_every_gap_exceeds_the_margin(batch, metric, strategy, margin):
    embeddings, labels = batch
    cfg = config(metric=metric, mining=strategy, margin=margin)
    example = lossplug.properties.Example(
        inputs={"y_true": labels},
        outputs={"embeddings": embeddings.astype(np.float32)},
        config=cfg,
    )
    perfect = perfect_example(example)
    loss, metrics = run(perfect.config, embeddings=perfect.outputs["embeddings"], labels=labels)
    assert loss == 0.0
    assert metrics["active_fraction"] == 0.0
    # and the margin really is met: every valid (a, p, n) has d(a, n) - d(a, p) > m
    d = np_distances(perfect.outputs["embeddings"], metric)
    same = labels[:, None] == labels[None, :]
    for a in range(len(labels)):
        for p in np.flatnonzero(same[a]):
            for q in np.flatnonzero(~same[a]):
                if p != a:
                    gap, margin_used = d[a, q] - d[a, p], perfect.config.margin
                    # (margin 0 with coincident classes: 1-D cosine cannot separate 3 classes)
                    assert gap > margin_used or (margin_used == 0.0 and gap >= 0.0)


# ----------------------------------------------------------------------------- accuracy
def _close_pairs(n=128, dim=128, gap=1e-3, norm=10.0):
    """Identities of two embeddings ``gap`` apart at norm ``norm`` (positives late in training)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim))
    x = norm * x / np.linalg.norm(x, axis=1, keepdims=True)
    x[1::2] = x[0::2] + rng.normal(size=(n // 2, dim)) * gap / np.sqrt(dim)
    return x.astype(np.float32), (np.arange(n) // 2).astype(np.int32)


def _float32_gram_distances(x):
    """The distances a user computes: the Gram identity in float32."""
    sq = (x * x).sum(1)
    return np.sqrt(np.maximum(sq[:, None] - 2.0 * (x @ x.T) + sq[None, :], 0.0)).astype(np.float64)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_points_1e_3_apart_keep_float64_accuracy_in_float32(strategy):
    """Loss and gradient from float32 inputs, computed in float32, match the float64 result."""
    x, labels = _close_pairs()
    margin = 14.5  # negatives are ~14 away: every strategy has active hinges
    cfg = config(mining=strategy, margin=margin)
    exact = np_distances(x, "euclidean")
    expected, _ = brute_force(exact, labels, margin, strategy)
    naive, _ = brute_force(_float32_gram_distances(x), labels, margin, strategy)
    grads = {}
    for dtype in ("float32", "float64"):
        loss, grad = value_and_gradients(
            lambda v, y: plugin.triplet_loss({"y_true": y}, {"embeddings": v}, cfg).loss,
            {"v": x.astype(dtype), "y": labels},
        )
        grads[dtype] = grad["v"].astype(np.float64)
        if dtype == "float32":
            error = abs(float(loss) - expected)
    assert error < 2e-6 and abs(naive - expected) > 1e-4, (error, abs(naive - expected))
    scale = np.abs(grads["float64"]).max()
    if strategy in ("batch_hard", "semi_hard"):
        # The two embeddings of an identity are 1e-3 apart, so an anchor's two nearest
        # negatives are tied to ~1e-4 (batch_hard ranks on the Gram form) or within float32
        # rounding (semi_hard: 11.7483010 and 11.7483022 round to one float32 number), and
        # float32 and float64 may pick different ones (both are subgradients; which of two
        # tied values comes first is up to the backend's sort, and torch's is not stable);
        # their sum over each identity's pair agrees.
        grads = {k: g.reshape(-1, 2, g.shape[1]).sum(axis=1) for k, g in grads.items()}
    assert np.abs(grads["float32"] - grads["float64"]).max() < 1e-4 * scale


def test_a_selection_tie_within_float32_error_changes_the_loss_by_at_most_that_error():
    """batch_hard ranks on the float32 Gram matrix (here off by ~0.1 on squared distances)
    and recomputes its two picks per anchor from differences: picking the wrong one of two
    positives whose distances differ by delta costs at most delta, not the Gram error."""
    rng = np.random.default_rng(0)
    dim, identities = 8, 6
    rows, labels = [], []
    for k in range(identities):
        centre = np.zeros(dim)
        centre[k] = 1000.0  # identities far apart, far from the batch mean
        units = rng.normal(size=(2, dim))
        units /= np.linalg.norm(units, axis=1, keepdims=True)
        delta = rng.uniform(0.0, 1e-4)  # two positives tied to within delta
        rows += [centre, centre + 1.0 * units[0], centre + (1.0 + delta) * units[1]]
        labels += [k, k, k]
    x = np.array(rows).astype(np.float32)
    labels = np.array(labels, np.int32)
    exact = np_distances(x, "euclidean")  # float64 on the float32 values
    ties = max(abs(exact[i, i + 1] - exact[i, i + 2]) for i in range(0, len(x), 3))
    margin = 1416.0  # negatives are ~1414 away: every anchor's hinge is active
    rounding = 4 * np.finfo(np.float32).eps * (margin + 2.0)  # float32 sums near 1416
    # the ranking matrix (float32 Gram form) cannot tell the tied positives apart
    ranking = ops.convert_to_numpy(pairwise_distances(x, metric="euclidean", exact_neighbours=0))
    positive = (labels[:, None] == labels[None, :]) & ~np.eye(len(x), dtype=bool)
    assert np.abs(ranking - exact)[positive].max() > 10 * (ties + rounding)
    truth, _ = brute_force(exact, labels, margin, "batch_hard")
    loss, _ = run(config(mining="batch_hard", margin=margin), embeddings=x, labels=labels)
    assert abs(loss - truth) <= ties + rounding, (loss, truth, ties)
    # and anchor by anchor (weights select one anchor): the anchors with tied positives
    for anchor in range(0, len(x), 3):
        weights = np.zeros(len(x), np.float32)
        weights[anchor] = 1.0
        one, _ = run(
            config(mining="batch_hard", margin=margin),
            embeddings=x,
            labels=labels,
            sample_weight=weights,
        )
        expected, _ = brute_force(exact, labels, margin, "batch_hard", weights=weights)
        assert abs(one - expected) <= ties + rounding, (anchor, one, expected)


def test_a_violated_gap_is_penalised_by_exactly_its_shortfall():
    # 1-D: anchor 0, positive at 1, negative at 1.2 -> d_ap = 1, d_an = 1.2, m = 0.5
    embeddings = np.array([[0.0], [1.0], [1.2]], np.float32)
    labels = np.array([0, 0, 1], np.int32)
    loss, metrics = run(
        config(mining="batch_all", margin=0.5), embeddings=embeddings, labels=labels
    )
    # valid triplets: (0,1,2): 0.5+1-1.2=0.3 ; (1,0,2): 0.5+1-0.2=1.3
    np.testing.assert_allclose(loss, (0.3 + 1.3) / 2, rtol=1e-6)
    assert metrics["active_fraction"] == 1.0


@SETTINGS
@given(
    batch=embedding_batches(),
    strategy=st.sampled_from(STRATEGIES),
    average=st.sampled_from(["valid", "active"]),
    mode=st.sampled_from(["mining", "explicit"]),
)
def test_cosine_loss_is_invariant_to_rescaling_each_embedding(batch, strategy, average, mode):
    embeddings, labels = batch
    if mode == "explicit":
        average = "valid"
    cfg = config(mode=mode, metric="euclidean", mining=strategy, average=average, margin=0.4)
    e32 = embeddings.astype(np.float32)
    example = lossplug.properties.Example(
        inputs={"y_true": labels},
        outputs={
            "embeddings": e32,
            "anchor": e32,
            "positive": e32[::-1].copy(),
            "negative": np.roll(e32, 1, axis=0),
        },
        config=cfg,
    )

    def loss_fn(ex):
        return np.asarray(run(ex.config, labels=ex.inputs["y_true"], **ex.outputs)[0])

    check_cosine_scale_invariance(example, loss_fn)
    # the check is not vacuous: the Euclidean loss does change under the same rescaling
    if mode == "mining" and strategy == "batch_all" and average == "valid":
        norms = np.linalg.norm(embeddings, axis=1)
        assume(np.all(norms > 0.1) and len(set(labels.tolist())) > 1)
        assume(np.ptp(embeddings, axis=0).max() > 0.1)  # not all points equal: distances > 0
        assume(any(labels[i] == labels[j] for i in range(len(labels)) for j in range(i)))
        base = run(cfg, embeddings=e32, labels=labels)[0]
        scaled = run(cfg, embeddings=e32 * 8.0, labels=labels)[0]
        assume(base > 1e-3)
        assert not np.isclose(base, scaled, rtol=1e-3)


# ----------------------------------------------------------------------------- explicit mode
@SETTINGS
@given(
    triplets=hnp.arrays(
        np.float32,
        st.tuples(st.just(3), st.integers(1, 6), st.integers(1, 4)),
        elements=st.floats(-10, 10, width=32),
    ),
    metric=st.sampled_from(METRICS),
    margin=st.floats(0.0, 1.9),
    weighted=st.booleans(),
)
def test_explicit_mode_is_the_mean_hinge_per_sample(triplets, metric, margin, weighted):
    a, p, n = triplets
    weights = np.linspace(0.0, 2.0, len(a)).astype(np.float32) if weighted else None
    cfg = config(mode="explicit", metric=metric, margin=margin)
    loss, metrics = run(cfg, anchor=a, positive=p, negative=n, sample_weight=weights)

    def dist(u, v):
        if metric == "cosine":
            nu = np.maximum(np.sqrt((u.astype(np.float64) ** 2).sum(1)), L2_EPSILON)
            nv = np.maximum(np.sqrt((v.astype(np.float64) ** 2).sum(1)), L2_EPSILON)
            return np.clip(1 - (u * v).sum(1) / nu / nv, 0, 2)
        sq = ((u.astype(np.float64) - v) ** 2).sum(1)
        return sq if metric == "squared_euclidean" else np.sqrt(sq)

    hinge = np.maximum(0.0, margin + dist(a, p) - dist(a, n))
    w = np.ones(len(a)) if weights is None else weights
    scale = 1.0 + (np.abs(triplets).max() ** 2 if metric == "squared_euclidean" else 10.0)
    np.testing.assert_allclose(loss, np.sum(w * hinge) / len(a), rtol=1e-5, atol=1e-6 * scale)
    tensors = [ops.convert_to_tensor(t) for t in (a, p, n)]
    per_sample = ops.convert_to_numpy(plugin.explicit_hinge(*tensors, cfg))
    np.testing.assert_allclose(per_sample, hinge, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(metrics["active_fraction"], np.mean(per_sample > 0), atol=1e-7)


def test_cosine_is_the_similarity_form_of_the_margin_loss():
    """With metric='cosine' the hinge is max(0, m + cos(a, n) - cos(a, p))."""
    rng = np.random.default_rng(3)
    a, p, n = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(3))
    cos = lambda u, v: (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)  # noqa: E731
    expected = np.maximum(0.0, 0.2 + cos(a, n) - cos(a, p))
    got = plugin.explicit_hinge(
        ops.convert_to_tensor(a),
        ops.convert_to_tensor(p),
        ops.convert_to_tensor(n),
        config(mode="explicit", metric="cosine", margin=0.2),
    )
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-6)


def test_mining_sample_weights_weight_the_anchors():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(10, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 10).astype(np.int32)
    weights = rng.uniform(0.0, 2.0, 10).astype(np.float32)
    for strategy in STRATEGIES:
        cfg = config(mining=strategy, margin=0.8)
        unweighted = run(cfg, embeddings=embeddings, labels=labels)[0]
        ones = run(cfg, embeddings=embeddings, labels=labels, sample_weight=np.ones(10, "float32"))
        assert ones[0] == pytest.approx(unweighted, rel=1e-6)
        got = run(cfg, embeddings=embeddings, labels=labels, sample_weight=weights[:, None])[0]
        expected, _ = brute_force(
            np_distances(embeddings, "euclidean"), labels, 0.8, strategy, weights=weights
        )
        assert got == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"mining": "hardest"}, "mining='hardest' is invalid"),
        ({"metric": "manhattan"}, "metric='manhattan' is invalid"),
        ({"mode": "pairs"}, "mode='pairs' is invalid"),
        ({"margin": -0.1}, "margin=-0.1 is invalid"),
        ({"margin": float("nan")}, "margin=nan is invalid"),
        ({"margin": "1"}, "margin='1' is invalid"),
        ({"metric": "cosine", "margin": 2.0}, "can never be met"),
        ({"mode": "explicit", "average": "active"}, "applies to mode='mining' only"),
        ({"alpha": 1.0}, "has no parameter 'alpha'"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="triplet") as info:
        lossplug.use("triplet", **values)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("values", "given_tensors", "missing"),
    [
        ({}, {"embeddings"}, "y_true"),
        ({}, {"y_true"}, "embeddings"),
        ({"mode": "explicit"}, {"anchor", "positive"}, "negative"),
        ({"mode": "explicit"}, {"embeddings", "y_true"}, "anchor"),
    ],
)
def test_missing_tensor_names_the_mode_and_the_tensor(values, given_tensors, missing):
    rng = np.random.default_rng(0)
    tensors = {name: rng.normal(size=(4, 2)).astype(np.float32) for name in given_tensors}
    labels = np.array([0, 0, 1, 1], np.int32) if "y_true" in tensors else None
    tensors.pop("y_true", None)
    with pytest.raises(lossplug.MissingTensorError) as info:
        run(config(**values), labels=labels, **tensors)
    text = str(info.value)
    assert repr(missing) in text and f"mode={config(**values).mode!r}" in text
    assert "bind" in text


@pytest.mark.parametrize(
    ("values", "tensors", "fragment"),
    [
        ({}, {"embeddings": np.zeros((4, 2, 2)), "labels": np.arange(4)}, "embeddings of shape"),
        ({}, {"embeddings": np.zeros((4, 2)), "labels": np.eye(4)}, "one-hot?"),
        (
            {"mode": "explicit"},
            {"anchor": np.zeros(4), "positive": np.zeros(4), "negative": np.zeros(4)},
            "anchor of shape (batch, dim)",
        ),
        (
            {"mode": "explicit"},
            {
                "anchor": np.zeros((4, 2)),
                "positive": np.zeros((4, 2)),
                "negative": np.zeros((4, 3)),
            },
            "of one dimension, got 2, 2 and 3",
        ),
    ],
)
def test_tensors_of_the_wrong_shape_are_reported(values, tensors, fragment):
    tensors = {k: v.astype(np.int32 if k == "labels" else np.float32) for k, v in tensors.items()}
    with pytest.raises(lossplug.InvalidTensorError, match="triplet") as info:
        run(config(**values), **tensors)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- tf.distribute
DISTRIBUTED = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import lossplug_triplet as plugin
    from lossplug.extras import Extras, StateStore
    from lossplug.terms import call_plugin, scale_for_distribution

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 3)).astype("float32")
    lab = np.array([0, 0, 0, 1, 1, 1, 0, 1, 2, 2, 0, 2], "int32")  # replica 0 sees 0/1 only
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for global_batch in (False, True):
        cfg = plugin.SPEC.make_config({"mining": "batch_all", "margin": 0.5})
        extras = Extras(config=cfg, epoch=tf.constant(0, tf.int64), step=tf.constant(0, tf.int64),
                        training=True, state=StateStore(plugin="triplet"),
                        global_batch=global_batch)
        e = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(emb[6 * ctx.replica_id_in_sync_group:][:6]))
        y = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(lab[6 * ctx.replica_id_in_sync_group:][:6]))

        @tf.function
        def step(e, y):
            def replica(e, y):
                with tf.GradientTape() as tape:
                    tape.watch(e)
                    res = call_plugin(plugin.SPEC, plugin.build_loss_graph, {"y_true": y},
                                      {"embeddings": e}, extras, term="triplet")
                    scaled = scale_for_distribution(res.loss)
                return res.loss, tape.gradient(scaled, e)
            return strategy.run(replica, args=(e, y))

        losses, grads = step(e, y)
        out[global_batch] = (
            [float(v) for v in strategy.experimental_local_results(losses)],
            np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)]),
        )
    np.savez(sys.argv[1], local=np.array(out[False][0]), gathered=np.array(out[True][0]),
             local_grad=out[False][1], gathered_grad=out[True][1])
    """
)


@pytest.mark.e2e  # starts a process: TensorFlow's devices must be configured before first use
@pytest.mark.backends("tensorflow")  # tf.distribute.MirroredStrategy
def test_global_batch_mining_gathers_every_replica(tmp_path):
    script = tmp_path / "distributed.py"
    script.write_text(DISTRIBUTED)
    result_path = tmp_path / "out.npz"
    proc = subprocess.run(
        [sys.executable, str(script), str(result_path)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = np.load(result_path)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 3)).astype("float32")
    lab = np.array([0, 0, 0, 1, 1, 1, 0, 1, 2, 2, 0, 2], "int32")
    cfg = config(mining="batch_all", margin=0.5)
    # without global_batch each replica mines its own half
    halves = [run(cfg, embeddings=emb[i : i + 6], labels=lab[i : i + 6])[0] for i in (0, 6)]
    np.testing.assert_allclose(result["local"], halves, rtol=1e-5)
    # with it, both replicas compute the loss of the whole batch ...
    full, grads = value_and_gradients(
        lambda x, y: plugin.triplet_loss({"y_true": y}, {"embeddings": x}, cfg).loss,
        {"x": emb, "y": lab},
    )
    np.testing.assert_allclose(result["gathered"], [float(full)] * 2, rtol=1e-5)
    # ... and the gradients reaching each replica's slice are those of the global loss
    np.testing.assert_allclose(result["gathered_grad"], grads["x"], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def _distance_ratio(embeddings, labels):
    """mean inter-class distance / mean intra-class distance."""
    d = np_distances(embeddings, "euclidean")
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return d[~same].mean() / d[same & off].mean()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mining_on_digits_lowers_the_loss_and_separates_the_classes(strategy):
    x, y = _digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    embeddings = keras.layers.Dense(16, name="embeddings")(hidden)
    model = lossplug.LossModel(inputs, embeddings)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=lossplug.use("triplet", mining=strategy, margin=1.0),
    )
    before = _distance_ratio(model.predict(x, verbose=0), y)
    history = model.fit(x, y, epochs=4, batch_size=128, verbose=0)
    after = _distance_ratio(model.predict(x, verbose=0), y)
    losses = history.history["triplet"]
    # the hardest triplet of a batch of 128 stays violated far longer than the average one
    assert losses[-1] < (0.85 if strategy == "batch_hard" else 0.7) * losses[0], losses
    assert "triplet_active_fraction" in history.history
    assert after > 1.2 * before, (before, after)


@pytest.mark.slow
def test_explicit_mode_trains_a_question_and_an_answer_encoder():
    x, y = _digits()
    rng = np.random.default_rng(0)
    anchors = rng.integers(0, len(y), 1200)
    right = np.array([rng.choice(np.flatnonzero(y == y[i])) for i in anchors])
    wrong = np.array([rng.choice(np.flatnonzero(y != y[i])) for i in anchors])
    data = [x[anchors], x[right], x[wrong]]
    keras.utils.set_random_seed(0)
    question = keras.Input((64,), name="question")
    answer_right = keras.Input((64,), name="right")
    answer_wrong = keras.Input((64,), name="wrong")
    question_encoder = keras.layers.Dense(16, name="question_encoder")
    answer_encoder = keras.layers.Dense(16, name="answer_encoder")  # shared by both answers
    outputs = [
        keras.layers.Identity(name="anchor")(question_encoder(question)),
        keras.layers.Identity(name="positive")(answer_encoder(answer_right)),
        keras.layers.Identity(name="negative")(answer_encoder(answer_wrong)),
    ]
    model = lossplug.LossModel([question, answer_right, answer_wrong], outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=lossplug.use("triplet", mode="explicit", metric="cosine", margin=0.3),
    )

    def ranked_right():
        a, p, n = model.predict(data, verbose=0)
        cos = lambda u, v: (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)  # noqa: E731
        return float(np.mean(cos(a, p) > cos(a, n)))

    before = ranked_right()
    history = model.fit(data, epochs=4, batch_size=64, verbose=0)
    losses = history.history["triplet"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert ranked_right() > max(0.9, before + 0.2)


def test_config_round_trips_through_the_spec():
    cfg = config(mode="mining", mining="semi_hard", metric="cosine", margin=0.2, average="active")
    assert plugin.SPEC.make_config(attrs.asdict(cfg)) == cfg


test_conformance = conformance_tests("triplet")

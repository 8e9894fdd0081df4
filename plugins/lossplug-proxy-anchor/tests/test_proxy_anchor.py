"""Tests of the proxy_anchor plugin: eq. 4, sample weights, the proxies (state), config, training."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import embedding_helpers as helpers
import lossplug
import lossplug_proxy_anchor as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.extras import Extras, StateStore
from lossplug.terms import call_plugin
from lossplug.testing import conformance_tests

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("proxy_anchor")


def run(labels, embeddings, proxies, sample_weight=None, **config):
    """The plugin called as the core calls it, with the given proxies: (loss, metrics)."""
    config.setdefault("num_classes", len(proxies))
    store = StateStore(plugin="proxy_anchor")
    extras = Extras(
        config=plugin.SPEC.make_config(config),
        epoch=ops.convert_to_tensor(0, "int32"),  # the core's epoch clock is int32
        step=ops.convert_to_tensor(0, "int32"),
        training=True,
        state=store,
        sample_weight=None if sample_weight is None else ops.convert_to_tensor(sample_weight),
    )
    inputs = {"y_true": ops.convert_to_tensor(labels)}
    outputs = {"embeddings": ops.convert_to_tensor(embeddings)}
    call_plugin(plugin.SPEC, plugin.build_loss_graph, inputs, outputs, extras, term="pa")
    store.set_values({"proxies": np.asarray(proxies, np.float32)})
    out = call_plugin(plugin.SPEC, plugin.build_loss_graph, inputs, outputs, extras, term="pa")
    metrics = {k: float(ops.convert_to_numpy(v)) for k, (v, _) in out.metrics.items()}
    return float(ops.convert_to_numpy(out.loss)), metrics


#: (d loss / d embeddings, d loss / d proxies) through the kit's harness.
gradients = functools.partial(helpers.proxy_gradients, "proxy_anchor")


def reference(labels, x, p, alpha, delta, w=None):
    """Kim et al. eq. (4), vectorised with masks (float64)."""
    x = np.asarray(x, np.float64)
    p = np.asarray(p, np.float64)
    s = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)
    ).T
    w = np.ones(len(labels)) if w is None else np.asarray(w, np.float64)
    pos = (np.eye(len(p))[labels] > 0) & (w[:, None] > 0)
    neg = (np.eye(len(p))[labels] == 0) & (w[:, None] > 0)
    pull = np.log1p((w[:, None] * pos * np.exp(-alpha * (s - delta))).sum(0))
    push = np.log1p((w[:, None] * neg * np.exp(alpha * (s + delta))).sum(0))
    with_positives = pos.any(0)
    first = pull[with_positives].sum() / with_positives.sum() if with_positives.any() else 0.0
    return first + push.sum() / len(p)


@st.composite
def batches(draw):
    y, x, p = draw(helpers.proxy_batches(8, classes=(1, 5), dims=(2, 4)))
    w = draw(hnp.arrays(np.float32, y.shape, elements=st.sampled_from([0.0, 0.5, 1.0, 2.0])))
    return y, x, p, w


alphas = st.floats(1.0, 64.0)
deltas = st.floats(0.0, 1.0)


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(batches(), alphas, deltas)
def test_matches_the_paper_with_and_without_sample_weights(batch, alpha, delta):
    y, x, p, w = batch
    for weights in (None, w):
        loss, metrics = run(y, x, p, weights, alpha=alpha, delta=delta)
        expected = reference(y, x, p, alpha, delta, weights)
        np.testing.assert_allclose(loss, expected, rtol=2e-4, atol=1e-5 * alpha)
    assert metrics["positive_proxies"] == len(set(y[w > 0].tolist()))


def test_weight_two_is_a_duplicate_and_weight_zero_a_removal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    p = rng.normal(size=(3, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 2, 0])
    doubled = run(y, x, p, np.array([2, 1, 1, 1, 0], np.float32))[0]
    explicit = run(np.r_[y[:4], y[0]], np.r_[x[:4], x[:1]], p)[0]
    np.testing.assert_allclose(doubled, explicit, rtol=1e-5)


def test_batches_without_positives_or_negatives():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    x = np.array([[1.0, 0.2], [0.9, -0.1]], np.float32)
    # one class only: no negative for proxy 0, no positive for proxies 1 and 2
    loss, metrics = run(np.array([0, 0]), x, p, alpha=32.0, delta=0.1)
    np.testing.assert_allclose(loss, reference(np.array([0, 0]), x, p, 32.0, 0.1), rtol=1e-5)
    assert metrics["positive_proxies"] == 1
    # every sample weighted 0: nothing is defined, the loss is exactly 0
    loss, metrics = run(np.array([0, 1]), x, p, np.zeros(2, np.float32))
    assert loss == 0.0 and metrics["positive_proxies"] == 0
    gx, gp = gradients(np.array([0]), x[:1], p)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))


def test_hard_positives_get_the_gradient():
    """Proxy-anchor's point: a positive far from its proxy gets a much larger gradient."""
    p = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
    angles = np.array([0.2, 1.5])  # an easy and a hard positive of class 0
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    gx, _ = gradients(np.array([0, 0]), x, p)
    norms = np.linalg.norm(gx, axis=1)
    assert norms[1] > 1e3 * norms[0]


def test_extreme_embeddings_are_finite():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(3, 4)).astype(np.float32)
    x = np.array([[1e4, 0, 0, 0], [1e-6, 0, 0, 0], [0, 0, 0, 0], [0, -1e4, 1e4, 0]], np.float32)
    y = np.array([0, 1, 2, 2])
    loss, _ = run(y, x, p, alpha=64.0, delta=1.0)
    gx, gp = gradients(y, x, p, alpha=64.0, delta=1.0)
    assert np.isfinite(loss) and np.all(np.isfinite(gx)) and np.all(np.isfinite(gp))


@pytest.mark.slow
def test_adam_moves_a_proxy_by_the_learning_rate_with_repeated_labels():
    """Dense proxy gradients: Adam's first step is lr per coordinate (not up to sqrt(k) lr)."""
    helpers.check_adam_moves_a_proxy_by_the_learning_rate("proxy_anchor", [0] * 6 + [1] * 2)


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"num_classes": 0}, "num_classes=0 is invalid: must be in [1, inf]"),
        ({"alpha": 0.0}, "alpha=0.0 is invalid: must be in (0.0, inf]"),
        ({"delta": 1.5}, "delta=1.5 is invalid: must be in [0.0, 1.0]"),
        ({"delta": -0.1}, "delta=-0.1 is invalid: must be in [0.0, 1.0]"),
        ({"margin": 0.1}, "has no parameter 'margin'; its parameters are: num_classes, alpha"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("proxy_anchor", **values)
    assert "'proxy_anchor'" in str(info.value)
    assert fragment in str(info.value)


def test_bad_labels_are_explained():
    helpers.check_bad_proxy_labels_are_explained("proxy_anchor")


# ----------------------------------------------------------------- training
@pytest.mark.slow
def test_training_on_digits_gathers_each_class_around_its_proxy():
    helpers.check_training_gathers_each_class_around_its_proxy(
        "proxy_anchor", loss_drop=0.6, ratio_gain=1.3
    )


# ----------------------------------------------------------------- tf.distribute
DISTRIBUTED = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import lossplug_proxy_anchor as plugin
    from lossplug.extras import Extras, StateStore
    from lossplug.terms import call_plugin, scale_for_distribution

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 3)).astype("float32")
    lab = np.array([0, 0, 0, 1, 1, 1, 0, 1, 2, 2, 0, 2], "int32")  # replica 0 sees 0/1 only
    proxies = rng.normal(size=(3, 3)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for global_batch in (False, True):
        cfg = plugin.SPEC.make_config({"num_classes": 3})
        store = StateStore(plugin="proxy_anchor")
        extras = Extras(config=cfg, epoch=tf.constant(0, tf.int64), step=tf.constant(0, tf.int64),
                        training=True, state=store, global_batch=global_batch)
        call_plugin(plugin.SPEC, plugin.build_loss_graph, {"y_true": tf.constant(lab)},
                    {"embeddings": tf.constant(emb)}, extras, term="pa")  # creates the proxies
        store.set_values({"proxies": proxies})
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
                                      {"embeddings": e}, extras, term="pa")
                    scaled = scale_for_distribution(res.loss)
                return res.loss, tape.gradient(scaled, e)
            return strategy.run(replica, args=(e, y))

        losses, grads = step(e, y)
        out[global_batch] = (
            [float(v) for v in strategy.experimental_local_results(losses)],
            np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)]),
        )
    np.savez(sys.argv[1], local=np.array(out[False][0]), gathered=np.array(out[True][0]),
             gathered_grad=out[True][1], proxies=proxies)
    """
)


@pytest.mark.e2e  # starts a process: TensorFlow's devices must be configured before first use
@pytest.mark.backends("tensorflow")  # tf.distribute.MirroredStrategy
def test_global_batch_gathers_every_replica(tmp_path):
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
    proxies = result["proxies"]
    # without global_batch each replica computes the loss of its own half
    halves = [reference(lab[i : i + 6], emb[i : i + 6], proxies, 32.0, 0.1) for i in (0, 6)]
    np.testing.assert_allclose(result["local"], halves, rtol=1e-4)
    # with it, both compute the loss of the whole batch ...
    np.testing.assert_allclose(
        result["gathered"], [reference(lab, emb, proxies, 32.0, 0.1)] * 2, rtol=1e-4
    )
    # ... and each replica's slice gets the gradient of the global loss
    full_grad, _ = gradients(lab, emb, proxies, num_classes=3)
    np.testing.assert_allclose(result["gathered_grad"], full_grad, rtol=1e-4, atol=1e-6)

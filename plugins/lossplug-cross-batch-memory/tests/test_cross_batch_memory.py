"""Tests of the cross_batch_memory plugin: the ring buffer through real training steps, the
loss against a NumPy reference (partially filled memory, warm-up), gradients, evaluate and
predict, saving and loading in a fresh process, configuration errors, the conformance kit
and training on digits."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_cross_batch_memory as plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lossplug import backend
from lossplug.numerics import L2_EPSILON
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import PluginHarness, Session
from lossplug_cross_batch_memory import memory
from lossplug_cross_batch_memory.loss import cross_batch_loss

# The core tests' helper that runs code in a new interpreter with this Keras backend.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from test_workflows import fresh_python, ok

NAME = "cross_batch_memory"
QUICK = os.environ.get("LOSSPLUG_PROFILE", "quick") == "quick"
SETTINGS = settings(
    max_examples=30 if QUICK else 100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
#: each example of these compiles and fits a model
FIT_SETTINGS = settings(SETTINGS, max_examples=4 if QUICK else 25)

# The whole conformance kit (every check the spec's claims imply), as pytest tests.
test_conformance = conformance_tests(NAME)


def config(**values):
    return plugin.SPEC.make_config(values)


# ----------------------------------------------------------------------------- references
def np_distances(x, r, metric):
    """d(x_a, r_j) in float64 from differences (cosine: 1 - cos with the core's epsilon)."""
    x, r = np.asarray(x, np.float64), np.asarray(r, np.float64)
    if metric == "cosine":
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), L2_EPSILON)
        v = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), L2_EPSILON)
        return np.clip(1.0 - u @ v.T, 0.0, 2.0)
    squared = ((x[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return squared if metric == "squared_euclidean" else np.sqrt(squared)


def reference(x, labels, stored, stored_labels, cfg, weights=None):
    """The loss of anchors x against x and the rows ``stored``, written out pair by pair.

    Returns (loss, active fraction). The references are the batch (index j < B, j != a
    for positives) followed by the stored rows, all constants of the formula.
    """
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels).reshape(-1)
    refs = np.concatenate([x, np.asarray(stored, np.float64).reshape(-1, x.shape[1])])
    ref_labels = np.concatenate([labels, np.asarray(stored_labels).reshape(-1)])
    d = np_distances(x, refs, cfg.metric)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    total = counted = valid_n = active_n = 0.0
    for a in range(len(x)):
        pos = [j for j in range(len(refs)) if ref_labels[j] == labels[a] and j != a]
        neg = [j for j in range(len(refs)) if ref_labels[j] != labels[a]]
        scored = []  # (loss, counts) of each pair or triplet of anchor a
        if cfg.form == "contrastive":

            def h(t):
                return 0.5 * max(t, 0.0) ** 2 if cfg.squared else max(t, 0.0)

            scored += [h(d[a, j] - cfg.pos_margin) for j in pos]
            scored += [h(cfg.neg_margin - d[a, j]) for j in neg]
        elif pos and neg:
            if cfg.mining == "batch_all":
                scored += [max(0.0, cfg.margin + d[a, p] - d[a, n]) for p in pos for n in neg]
            elif cfg.mining == "batch_hard":
                hardest = max(d[a, p] for p in pos) - min(d[a, n] for n in neg)
                scored.append(max(0.0, cfg.margin + hardest))
            else:  # semi_hard
                for p in pos:
                    farther = [d[a, n] for n in neg if d[a, n] > d[a, p]]
                    chosen = min(farther) if farther else max(d[a, n] for n in neg)
                    scored.append(max(0.0, cfg.margin + d[a, p] - chosen))
        for value in scored:
            total += w[a] * value
            valid_n += 1
            active_n += value > 0
            if cfg.average == "valid" or value > 0:
                counted += w[a]
    loss = total / counted if counted > 0 else 0.0
    return loss, (active_n / valid_n if valid_n else 0.0)


def state_of(stored, stored_labels, size, *, steps=0.0):
    """Plugin state whose first len(stored) slots hold ``stored`` (the memory of len(stored)
    samples written from slot 0)."""
    stored = np.asarray(stored, np.float32)
    filled = len(stored)
    dim = stored.shape[1]
    mem = np.zeros((size, dim), np.float32)
    ids = np.zeros(size, np.float32)
    mem[:filled], ids[:filled] = stored, stored_labels
    return {
        memory.MEMORY: mem,
        memory.LABELS: ids,
        memory.POINTER: np.float32(filled % size),
        memory.FILLED: np.float32(filled),
        memory.STEPS: np.float32(steps),
    }


def ring(rows, labels, size):
    """The memory after writing ``rows`` one by one from slot 0 (the definition of a ring
    buffer): (memory, labels, pointer, filled)."""
    rows = np.asarray(rows, np.float32)
    mem = np.zeros((size, rows.shape[1]), np.float32)
    ids = np.zeros(size, np.float32)
    for t, (row, label) in enumerate(zip(rows, labels, strict=True)):
        mem[t % size], ids[t % size] = row, label
    return mem, ids, len(rows) % size, min(len(rows), size)


@st.composite
def problems(draw, *, warm=True):
    """A batch, a partly filled memory and a config; continuous random data (no ties)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Few shapes (the filling varies freely): JAX compiles every eager op per shape.
    batch = draw(st.sampled_from((1, 4, 7)))
    dim = draw(st.sampled_from((1, 3)))
    size = draw(st.sampled_from((2, 5)))
    filled = draw(st.integers(0, size))
    classes = draw(st.integers(1, 4))
    form = draw(st.sampled_from(plugin.FORMS))
    metric = draw(st.sampled_from(("euclidean", "squared_euclidean", "cosine")))
    top = 1.5 if metric == "cosine" else 3.0
    cfg = config(
        form=form,
        memory_size=size,
        warmup_steps=draw(st.sampled_from((0, 2))),
        metric=metric,
        pos_margin=draw(st.floats(0.0, top / 4)),
        neg_margin=draw(st.floats(0.0, top)),
        squared=draw(st.booleans()),
        margin=draw(st.floats(0.0, top)),
        mining=draw(st.sampled_from(("batch_all", "batch_hard", "semi_hard"))),
        average=draw(st.sampled_from(("valid", "active"))),
    )
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    stored = rng.normal(size=(filled, dim)).astype(np.float32)
    stored_labels = rng.integers(0, classes + 1, filled).astype(np.float32)
    weights = rng.choice([0.0, 0.5, 1.0, 2.0], batch).astype(np.float32)
    weights = draw(st.sampled_from((None, weights)))
    steps = cfg.warmup_steps if warm else draw(st.integers(0, max(cfg.warmup_steps - 1, 0)))
    return x, labels, stored, stored_labels, cfg, weights, steps


def plugin_loss(x, labels, stored, stored_labels, cfg, weights, steps):
    """The plugin's loss and metrics, called as the core calls it, on that memory."""
    example = Example(
        inputs={"y_true": labels},
        outputs={"embeddings": x},
        config=cfg,
        state=state_of(stored, stored_labels, cfg.memory_size, steps=steps),
    )
    session = Session(PluginHarness(NAME), cfg)
    if weights is None:
        outcome = session.call(example, training=False)
        return float(outcome.loss), outcome.metrics
    # sample weights reach plugins through extras.sample_weight: call the hook directly
    session.ensure(example)
    session.restore(example.state)
    extras = session.extras(False, 0, 0)._replace(
        sample_weight=keras.ops.convert_to_tensor(weights)
    )
    result = plugin.build_loss_graph(
        {"y_true": keras.ops.convert_to_tensor(labels)},
        {"embeddings": keras.ops.convert_to_tensor(x)},
        extras,
    )
    metrics = {k: keras.ops.convert_to_numpy(v) for k, v in result.metrics.items()}
    return float(keras.ops.convert_to_numpy(result.loss)), metrics


# ----------------------------------------------------------------------------- the math
@SETTINGS
@given(problem=problems())
def test_loss_over_batch_and_memory_equals_the_numpy_reference(problem):
    x, labels, stored, stored_labels, cfg, weights, steps = problem
    loss, metrics = plugin_loss(x, labels, stored, stored_labels, cfg, weights, steps)
    expected, fraction = reference(x, labels, stored, stored_labels, cfg, weights)
    np.testing.assert_allclose(loss, expected, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(float(metrics["active_fraction"]), fraction, rtol=1e-5, atol=1e-6)
    assert float(metrics["memory_rows"]) == len(stored)


@SETTINGS
@given(problem=problems(warm=False))
def test_during_the_warm_up_the_memory_is_not_used(problem):
    x, labels, stored, stored_labels, cfg, weights, steps = problem
    cfg = config(**{**_values(cfg), "warmup_steps": 2})
    steps = min(steps, 1)
    loss, metrics = plugin_loss(x, labels, stored, stored_labels, cfg, weights, steps)
    expected, _ = reference(x, labels, stored[:0], stored_labels[:0], cfg, weights)
    np.testing.assert_allclose(loss, expected, rtol=2e-4, atol=2e-5)
    assert float(metrics["memory_rows"]) == 0.0


def _values(cfg):
    import attrs

    return attrs.asdict(cfg)


@SETTINGS
@given(problem=problems(warm=False))
def test_without_memory_in_use_it_is_the_in_batch_contrastive_or_triplet_plugin(problem):
    x, labels, stored, stored_labels, cfg, _, _ = problem
    cfg = config(**{**_values(cfg), "warmup_steps": 1})
    loss, _ = plugin_loss(x, labels, stored, stored_labels, cfg, None, 0)  # warm-up
    inputs, outputs = {"y_true": labels}, {"embeddings": x}
    if cfg.form == "contrastive":
        pytest.importorskip("lossplug_contrastive")
        if cfg.metric == "squared_euclidean":
            return  # the contrastive plugin offers euclidean and cosine only
        other = dict(pos_margin=cfg.pos_margin, neg_margin=cfg.neg_margin, metric=cfg.metric,
                     squared=cfg.squared, average="all" if cfg.average == "valid" else "active")  # fmt: skip
        expected, _ = call_plugin("contrastive", inputs, outputs, config=other)
    else:
        pytest.importorskip("lossplug_triplet")
        other = dict(margin=cfg.margin, metric=cfg.metric, mining=cfg.mining, average=cfg.average)
        expected, _ = call_plugin("triplet", inputs, outputs, config=other)
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5, atol=1e-6)


def test_a_worked_example():
    # 1-D: batch a = 0 (class 0), b = 0.5 (class 1); memory c = 0.2 (class 0), unfilled slot
    x = np.array([[0.0], [0.5]], np.float32)
    state = state_of(np.array([[0.2]]), np.array([0.0]), 2)
    loss, metrics = call_plugin(NAME, {"y_true": np.array([0, 1])}, {"embeddings": x},
                                config={"memory_size": 2}, state=state)  # fmt: skip
    # pairs: (a,b) neg 1/2 (1 - 0.5)^2, (a,c) pos 1/2 0.2^2, (b,a) neg 1/2 0.5^2, (b,c) neg
    # 1/2 (1 - 0.3)^2: four pairs
    expected = (0.125 + 0.02 + 0.125 + 0.245) / 4
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["memory_rows"]) == 1.0


# ----------------------------------------------------------------------------- gradients
def _gradient(fn, value):
    """d sum(fn(t)) / dt at the NumPy array ``value`` (zeros where t does not reach the sum)."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        t = tf.constant(value)
        with tf.GradientTape() as tape:
            tape.watch(t)
            total = keras.ops.sum(fn(t))
        return np.asarray(tape.gradient(total, t, unconnected_gradients="zero"))
    if name == "jax":
        import jax

        return np.asarray(
            jax.grad(lambda a: keras.ops.sum(fn(a)))(keras.ops.convert_to_tensor(value))
        )
    import torch

    t = torch.tensor(value, requires_grad=True)
    total = keras.ops.sum(fn(t))
    if not total.requires_grad:
        return np.zeros_like(value)
    (grad,) = torch.autograd.grad(total, [t], allow_unused=True)
    return np.zeros_like(value) if grad is None else grad.detach().numpy()


@SETTINGS
@given(problem=problems())
def test_no_gradient_reaches_the_memory(problem):
    x, labels, stored, stored_labels, cfg, weights, _ = problem
    size = cfg.memory_size
    mem = state_of(stored, stored_labels, size)
    valid = np.arange(size) < len(stored)

    def loss_of_memory(m):
        loss, _ = cross_batch_loss(
            keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(labels), m,
            keras.ops.convert_to_tensor(mem[memory.LABELS]), keras.ops.convert_to_tensor(valid),
            cfg, None if weights is None else keras.ops.convert_to_tensor(weights),
        )  # fmt: skip
        return loss

    grad = _gradient(loss_of_memory, mem[memory.MEMORY])
    assert np.all(grad == 0.0), grad


@settings(SETTINGS, max_examples=10 if QUICK else 40)
@given(problem=problems())
def test_gradient_wrt_embeddings_is_that_of_the_loss_with_the_memory_as_constants(problem):
    x, labels, stored, stored_labels, cfg, _, _ = problem
    x = x.astype(np.float64)
    example = Example(
        inputs={"y_true": labels},
        outputs={"embeddings": x},
        config=cfg,
        state=state_of(stored, stored_labels, cfg.memory_size, steps=cfg.warmup_steps),
    )
    # A new harness, not harness_for's cached one: registry.hook_caller's pluggy subset
    # caller leaves out only the plugins registered when it was made, so a cached caller
    # also calls plugins loaded since (contrastive and triplet, by the tests above).
    with backend.current().kit_scope():  # float64 on JAX too
        _, grads, _ = PluginHarness(NAME).gradients(example, ["embeddings"], dtype="float64")
    step = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        plus = reference(up, labels, stored, stored_labels, cfg)[0]
        minus = reference(down, labels, stored, stored_labels, cfg)[0]
        numeric[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(grads["embeddings"], numeric, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the ring buffer
@settings(SETTINGS, max_examples=200)
@given(
    batch=st.integers(0, 12),
    size=st.integers(1, 7),
    before=st.integers(0, 20),
    warmup=st.integers(0, 3),
    steps=st.integers(0, 4),
)
def test_enqueue_writes_the_ring_buffer(batch, size, before, warmup, steps):
    rng = np.random.default_rng(batch * 1000 + size * 100 + before)
    dim = 2
    history = rng.normal(size=(before, dim)).astype(np.float32)
    history_ids = rng.integers(0, 5, before).astype(np.float32)
    rows = rng.normal(size=(batch, dim)).astype(np.float32)
    ids = rng.integers(0, 5, batch).astype(np.int32)
    mem, lab, pointer, filled = ring(history, history_ids, size)
    start = memory.Memory(
        *(keras.ops.convert_to_tensor(v) for v in
          (mem, lab, np.float32(pointer), np.float32(filled), np.float32(min(steps, warmup))))
    )  # fmt: skip
    new = memory.enqueue(
        start, keras.ops.convert_to_tensor(rows), keras.ops.convert_to_tensor(ids), warmup
    )
    e_mem, e_lab, e_pointer, e_filled = ring(
        np.concatenate([history, rows]), np.concatenate([history_ids, ids]), size
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.memory), e_mem)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.labels), e_lab)
    assert float(new.pointer) == e_pointer
    assert float(new.filled) == e_filled
    assert float(new.steps) == min(min(steps, warmup) + 1, warmup)
    for value, variable_shape in zip(new, ((size, dim), (size,), (), (), ()), strict=True):
        assert tuple(value.shape) == variable_shape
        assert keras.backend.standardize_dtype(value.dtype) == "float32"


def identity_model(dim, jit_compile="auto", **values):
    """A LossModel whose embeddings are its inputs (identity kernel, learning rate 0)."""
    inputs = keras.Input((dim,))
    embeddings = keras.layers.Dense(
        dim, use_bias=False, kernel_initializer="identity", name="embeddings"
    )(inputs)
    model = lossplug.LossModel(inputs, embeddings)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=lossplug.use(NAME, **values),
        jit_compile=jit_compile,
    )
    return model


def stream(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, dim)) + np.arange(n)[:, None]).astype(np.float32)
    return x, rng.integers(0, 3, n).astype(np.int32)


def state_values(model):
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in model.term_state(NAME).items()}


@FIT_SETTINGS
@example(n=17, batch=6, size=4, epochs=2, warmup=3, jit=True)  # batches larger than M
@example(n=13, batch=3, size=5, epochs=1, warmup=9, jit=False)  # wraps, last batch partial
@given(
    n=st.integers(1, 17),
    batch=st.integers(1, 6),
    size=st.integers(1, 9),
    epochs=st.integers(1, 2),
    warmup=st.integers(0, 4),
    jit=st.booleans(),
)
def test_training_steps_leave_exactly_the_last_m_embeddings(n, batch, size, epochs, warmup, jit):
    x, y = stream(n, 3)
    jit_compile = jit if keras.backend.backend() == "tensorflow" else "auto"
    model = identity_model(3, jit_compile, memory_size=size, warmup_steps=warmup)
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    mem, lab, pointer, filled = ring(np.tile(x, (epochs, 1)), np.tile(y, epochs), size)
    got = state_values(model)
    np.testing.assert_array_equal(got[memory.MEMORY], mem)
    np.testing.assert_array_equal(got[memory.LABELS], lab)
    assert got[memory.POINTER] == pointer
    assert got[memory.FILLED] == filled
    assert got[memory.STEPS] == min(epochs * math.ceil(n / batch), warmup)


def test_evaluate_and_predict_leave_the_memory_alone():
    x, y = stream(11, 3)
    model = identity_model(3, memory_size=8)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    before = state_values(model)
    other, other_y = stream(9, 3, seed=1)
    model.evaluate(other, other_y, batch_size=4, verbose=0)
    model.predict(other, batch_size=4, verbose=0)
    model.compute_loss(other, other_y, model(other), training=False)
    after = state_values(model)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    mem, _, pointer, _ = ring(x, y, 8)
    np.testing.assert_array_equal(after[memory.MEMORY], mem)
    assert after[memory.POINTER] == pointer


def test_a_skipped_step_writes_nothing():
    x, y = stream(8, 3)
    x[5, 1] = np.nan  # the second batch of 4
    model = identity_model(3, memory_size=6)
    with pytest.raises(lossplug.NonFiniteLossError):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    got = state_values(model)
    mem, _, pointer, filled = ring(x[:4], y[:4], 6)
    np.testing.assert_array_equal(got[memory.MEMORY], mem)
    assert got[memory.POINTER] == pointer and got[memory.FILLED] == filled


def test_a_saved_model_restores_the_memory_in_a_fresh_process(tmp_path):
    x, y = stream(13, 3)
    model = identity_model(3, memory_size=5, warmup_steps=2)
    model.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)  # 13 rows: wrapped twice
    saved = state_values(model)
    loss = model.evaluate(x, y, batch_size=13, verbose=0, return_dict=True)[NAME]
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = ok(fresh_python(f"""
        import json, keras, lossplug, numpy as np
        model = keras.models.load_model({str(path)!r})
        state = {{k: np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                  for k, v in model.term_state({NAME!r}).items()}}
        x, y = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        loss = model.evaluate(x, y, batch_size=13, verbose=0, return_dict=True)[{NAME!r}]
        print(json.dumps({{"state": state, "loss": loss}}))
    """))  # fmt: skip
    loaded = json.loads(out.strip().splitlines()[-1])
    for name, value in saved.items():
        np.testing.assert_array_equal(np.asarray(loaded["state"][name], np.float32), value, name)
    mem, lab, pointer, filled = ring(x, y, 5)
    np.testing.assert_array_equal(saved[memory.MEMORY], mem)
    assert (saved[memory.POINTER], saved[memory.FILLED], saved[memory.STEPS]) == (
        pointer,
        filled,
        2,
    )
    np.testing.assert_allclose(loaded["loss"], loss, rtol=1e-6)
    # the warm-up is over: the restored memory is in the loss after loading
    expected, _ = reference(x, y, mem[:filled], lab[:filled], config(memory_size=5))
    np.testing.assert_allclose(loaded["loss"], expected, rtol=1e-4)


@pytest.mark.backends("tensorflow")
def test_under_mirrored_strategy_every_replica_writes_the_global_batch():
    """Two logical CPUs (set before TensorFlow starts: a fresh process)."""
    out = ok(fresh_python(f"""
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, lossplug
        rng = np.random.default_rng(0)
        x = (rng.normal(size=(12, 3)) + np.arange(12)[:, None]).astype("float32")
        y = rng.integers(0, 3, 12).astype("int32")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            inputs = keras.Input((3,))
            embeddings = keras.layers.Dense(3, use_bias=False, kernel_initializer="identity",
                                            name="embeddings")(inputs)
            model = lossplug.LossModel(inputs, embeddings)
            model.compile(optimizer=keras.optimizers.SGD(0.0),
                          loss=lossplug.use({NAME!r}, memory_size=5))
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        state = {{k: np.asarray(v).tolist() for k, v in model.term_state({NAME!r}).items()}}
        print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "state": state,
                          "x": x.tolist(), "y": y.tolist()}}))
    """))  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    assert result["replicas"] == 2
    x, y = np.asarray(result["x"], np.float32), np.asarray(result["y"])
    mem, lab, pointer, filled = ring(x, y, 5)  # the global batches, in order
    np.testing.assert_array_equal(np.asarray(result["state"][memory.MEMORY], np.float32), mem)
    np.testing.assert_array_equal(np.asarray(result["state"][memory.LABELS], np.float32), lab)
    assert (result["state"][memory.POINTER], result["state"][memory.FILLED]) == (pointer, filled)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"memory_size": 0}, "memory_size"),
        ({"memory_size": 2.5}, "memory_size"),
        ({"memory_size": 2**24}, "memory_size"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"form": "lifted"}, "form"),
        ({"margin": -0.1}, "margin"),
        ({"neg_margin": -1.0}, "neg_margin"),
        ({"mining": "hardest"}, "mining"),
        ({"metric": "cosine", "neg_margin": 2.5}, "neg_margin"),
        ({"form": "triplet", "metric": "cosine", "margin": 2.0}, "margin"),
    ],
)
def test_bad_config_is_refused_naming_the_plugin_and_the_field(values, field):
    with pytest.raises(lossplug.PluginConfigError, match=NAME) as info:
        lossplug.use(NAME, **values)
    assert field in str(info.value)


def test_bad_tensors_are_refused_naming_the_plugin():
    with pytest.raises(lossplug.InvalidTensorError, match=NAME):
        call_plugin(
            NAME, {"y_true": np.array([0, 1])}, {"embeddings": np.zeros((2, 3, 1), "float32")}
        )
    with pytest.raises(lossplug.InvalidTensorError, match="one-hot"):
        call_plugin(NAME, {"y_true": np.eye(3)[:2]}, {"embeddings": np.zeros((2, 3), "float32")})


# ----------------------------------------------------------------------------- digits
def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def distance_ratio(embeddings, labels):
    """mean inter-class / mean intra-class Euclidean distance."""
    d = np_distances(embeddings, embeddings, "euclidean")
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return d[~same].mean() / d[same & off].mean()


def _train_on_digits(warmup_steps):
    """A 64-64-16 MLP with unit-norm embeddings, 2 epochs of batch 16, Adam(3e-3)."""
    x, y = _digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    embeddings = keras.layers.UnitNormalization(name="embeddings")(keras.layers.Dense(16)(hidden))
    model = lossplug.LossModel(inputs, embeddings)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=lossplug.use(NAME, memory_size=256, warmup_steps=warmup_steps),
    )
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return distance_ratio(model.predict(x, verbose=0), y), history.history, state_values(model)


def test_memory_improves_training_on_digits():
    # the same model, data order and loss; the baseline's memory is filled but never used
    # (2 epochs are 226 steps)
    without, history_without, state_without = _train_on_digits(warmup_steps=10**6)
    with_memory, history_with, state_with = _train_on_digits(warmup_steps=0)
    print(
        f"\ncross_batch_memory on digits ({keras.backend.backend()}): inter/intra distance "
        f"ratio {without:.3f} without memory, {with_memory:.3f} with memory_size=256 "
        f"(memory rows per step: {history_without[NAME + '_memory_rows'][-1]:.0f} and "
        f"{history_with[NAME + '_memory_rows'][-1]:.0f})"
    )
    assert history_without[NAME + "_memory_rows"] == [0.0, 0.0]
    assert history_with[NAME + "_memory_rows"][-1] == 256.0
    assert state_without[memory.FILLED] == state_with[memory.FILLED] == 256.0
    assert with_memory > without

"""Plugin state updated by the plugin's own rule (``extras.state.update``), end to end.

The vehicle is the installed ``center`` plugin with ``update="paper"`` (Wen et al.'s
centre rule). The core's guarantees under test: the update is applied once per training
step, after the optimizer, only when the step is applied (finite); never by ``evaluate``,
``predict``, validation or the compile-time probe; saved and restored like any state; and
the same on one device as on several replicas.

The feature layer is frozen (``trainable=False``) in most tests, so the features of every
batch are known before training and the centres can be replayed in NumPy.
"""

from __future__ import annotations

import json
import warnings

import keras
import lossplug
import numpy as np
import pytest
from lossplug_center.claims import paper_rule
from test_workflows import fresh_python, ok

CLASSES, DIM, FEATURES, BATCH = 3, 5, 4, 16
# Keras' torch trainer runs one step at a time
SEVERAL = pytest.mark.backends("tensorflow", "jax")


# --------------------------------------------------------------------- helpers
def data(n=BATCH * 6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype("float32")
    y = rng.integers(0, CLASSES, n).astype("int32")
    y[:CLASSES] = np.arange(CLASSES)  # every class in the first batch
    second = y[BATCH : 2 * BATCH]
    second[second == CLASSES - 1] = 0  # the last class absent from the second batch
    return x, y


def architecture(frozen=True):
    """Dense features (frozen by default) -> logits, the features exposed."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((DIM,), name="x")
    layer = keras.layers.Dense(FEATURES, activation="tanh", name="features", trainable=not frozen)
    features = layer(inputs)
    logits = keras.layers.Dense(CLASSES, name="logits")(features)
    return lossplug.LossModel(inputs, logits, expose=["features"])


def losses(update="paper", alpha=0.5, extra=()):
    """CE on the logits plus the center term."""
    center = lossplug.use("center", weight=0.5, num_classes=CLASSES, alpha=alpha, update=update)
    return [keras.losses.SparseCategoricalCrossentropy(from_logits=True), center, *extra]


def build(update="paper", alpha=0.5, *, frozen=True, extra=(), **compile_args):
    model = architecture(frozen)
    model.compile(keras.optimizers.Adam(0.01), loss=losses(update, alpha, extra), **compile_args)
    return model


def centres(model):
    return np.array(keras.ops.convert_to_numpy(model.term_state("center")["centers"]))


def features_of(model, x):
    extractor = keras.Model(model.input, model.get_layer("features").output)
    return np.asarray(extractor.predict(x, batch_size=len(x), verbose=0), dtype=np.float64)


def replay(c, features, labels, alpha, steps, batch=BATCH, weights=None):
    """``steps`` rule applications over consecutive batches."""
    for k in range(steps):
        rows = slice(k * batch, (k + 1) * batch)
        w = None if weights is None else weights[rows]
        c = paper_rule(c, features[rows], labels[rows], alpha, w)
    return c


def assert_centres(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def trainable_of(model):
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_weights}


# --------------------------------------------------------------------- the rule per step
def test_one_adam_step_applies_the_papers_rule_once():
    x, y = data(BATCH)
    model = build()
    store = model.term_state("center")["centers"]
    assert not store.trainable and all(w is not store for w in model.trainable_weights)
    np.testing.assert_array_equal(centres(model), 0.0)  # the probe moved nothing
    feats = features_of(model, x)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    assert_centres(centres(model), paper_rule(np.zeros((CLASSES, FEATURES)), feats, y, 0.5))


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_k_steps_follow_the_rule_and_validation_applies_none(alpha):
    x, y = data()
    x_val, y_val = data(2 * BATCH, seed=1)
    model = build(alpha=alpha)
    feats = features_of(model, x)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        validation_data=(x_val, y_val),  # test steps in between must not move the centres
    )
    want = replay(np.zeros((CLASSES, FEATURES)), feats, y, alpha, steps=6)
    assert_centres(centres(model), want)


@pytest.mark.parametrize(
    "compile_args",
    [
        pytest.param({"steps_per_execution": 3, "jit_compile": False}, marks=SEVERAL, id="spe3"),
        pytest.param({"jit_compile": True}, id="jit"),  # torch: torch.compile, ~1 min
        pytest.param({"steps_per_execution": 3, "jit_compile": True}, marks=SEVERAL, id="spe3-jit"),
        pytest.param({"run_eagerly": True}, id="eager"),
        pytest.param({"check_finite": False}, id="unguarded"),
    ],
)
def test_applied_exactly_once_per_step(compile_args):
    x, y = data()
    model = build(**compile_args)
    feats = features_of(model, x)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6
    assert_centres(centres(model), replay(np.zeros((CLASSES, FEATURES)), feats, y, 0.5, steps=6))


def test_a_model_without_trainable_weights_still_applies_the_rule():
    """No optimizer step, but the plugin's rule still runs once per training step (Keras'
    TensorFlow and PyTorch steps skip everything after the loss for such a model)."""
    x, y = data()
    model = architecture(frozen=True)
    model.get_layer("logits").trainable = False
    model.compile(keras.optimizers.Adam(0.01), loss=losses())
    assert model.trainable_weights == []
    feats = features_of(model, x)
    with warnings.catch_warnings():  # TF and torch: "does not have any trainable weights"
        warnings.simplefilter("ignore", UserWarning)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert_centres(centres(model), replay(np.zeros((CLASSES, FEATURES)), feats, y, 0.5, steps=6))


def test_evaluate_predict_and_compile_apply_no_update(tmp_path):
    x, y = data()
    model = build()
    model.fit(x[: 2 * BATCH], y[: 2 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    trained = centres(model)
    assert np.abs(trained).sum() > 0
    model.evaluate(x, y, batch_size=BATCH, verbose=0)
    np.testing.assert_array_equal(centres(model), trained)
    model.predict(x, batch_size=BATCH, verbose=0)
    np.testing.assert_array_equal(centres(model), trained)
    # Recompiling keeps the term's state and probes the plugin again, on a zero batch
    # whose rule would pull class 0's centre towards 0.
    assert np.abs(trained[0]).sum() > 0
    model.compile(keras.optimizers.Adam(0.01), loss=losses())
    np.testing.assert_array_equal(centres(model), trained)
    # load_weights before compile: the values are placed when the probe creates the
    # variable, and the probe's own rule is not applied on top of them.
    model.save_weights(tmp_path / "w.weights.h5")
    other = architecture()
    other.load_weights(tmp_path / "w.weights.h5")
    other.compile(keras.optimizers.Adam(0.01), loss=losses())
    np.testing.assert_array_equal(centres(other), trained)


# --------------------------------------------------------------------- the gradient side
def test_other_weights_move_as_under_the_gradient_rule_without_centre_gradient():
    """update="paper" changes how the centres move, not what the rest of the model learns.

    gradient rule with alpha = 0: frozen centres, the features get x - c;
    paper rule: the features get x - c for the current centres. So with alpha = 0 both
    train the other weights identically for any number of steps, and with alpha > 0 the
    first step is identical (the same centres, zeros) and later steps differ (the centres
    have moved).
    """
    x, y = data(4 * BATCH)
    runs = {}
    for name, update, alpha, steps in [
        ("frozen", "gradient", 0.0, 4),
        ("paper_0", "paper", 0.0, 4),
        ("frozen_1", "gradient", 0.0, 1),
        ("paper_1", "paper", 0.5, 1),
        ("paper_2", "paper", 0.5, 2),
        ("frozen_2", "gradient", 0.0, 2),
    ]:
        model = build(update, alpha, frozen=False)
        if name == "paper_1":
            first_features = features_of(model, x[:BATCH])
        rows = slice(0, steps * BATCH)
        model.fit(x[rows], y[rows], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        runs[name] = (trainable_of(model), centres(model))
    assert "lossplug_state_center/centers" not in runs["paper_1"][0]  # not the optimizer's
    for a, b in [("frozen", "paper_0"), ("frozen_1", "paper_1")]:
        assert runs[a][0].keys() == runs[b][0].keys()
        for path, value in runs[a][0].items():
            np.testing.assert_allclose(runs[b][0][path], value, rtol=1e-6, atol=1e-7, err_msg=path)
    np.testing.assert_array_equal(runs["paper_0"][1], 0.0)  # alpha = 0: the rule moves nothing
    assert_centres(
        runs["paper_1"][1],
        paper_rule(np.zeros((CLASSES, FEATURES)), first_features, y[:BATCH], 0.5),
    )
    # after the centres moved, the features' gradient x - c differs
    kernel = "features/kernel"
    assert not np.allclose(runs["paper_2"][0][kernel], runs["frozen_2"][0][kernel], rtol=1e-6)


# --------------------------------------------------------------------- the finite guard
@pytest.mark.usefixtures("toy_plugins")
@pytest.mark.parametrize(
    ("steps_per_execution", "trainable"),
    [
        (1, True),
        pytest.param(3, True, marks=SEVERAL),
        (1, False),  # no optimizer step at all: the guard still holds the rule back
    ],
)
def test_a_non_finite_step_applies_no_update(steps_per_execution, trainable):
    """Batch 3's loss is NaN (toy_nan_at) while its features, and so its rule, are finite:
    the guard skips the whole step, the centres are those after batches 0..2 (with 3 steps
    per execution, batches 4 and 5 of the same execution are skipped too)."""
    x, y = data()
    x[3 * BATCH : 4 * BATCH, 0] = 1000.0  # marked for toy_nan_at; tanh keeps features finite
    model = architecture(frozen=True)
    model.get_layer("logits").trainable = trainable
    model.compile(
        keras.optimizers.Adam(0.01),
        loss=losses(extra=[lossplug.use("toy_nan_at", epoch=0)]),
        steps_per_execution=steps_per_execution,
    )
    feats = features_of(model, x)
    assert np.all(np.isfinite(feats))
    with (
        warnings.catch_warnings(),  # "does not have any trainable weights"
        pytest.raises(lossplug.NonFiniteLossError, match="at epoch 0, batch 3"),
    ):
        warnings.simplefilter("ignore", UserWarning)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    if trainable:
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
    got = centres(model)
    assert np.all(np.isfinite(got))
    assert_centres(got, replay(np.zeros((CLASSES, FEATURES)), feats, y, 0.5, steps=3))


# --------------------------------------------------------------------- saved like any state
def test_centres_are_saved_and_keep_following_the_rule_after_load_model(tmp_path):
    x, y = data()
    model = build()
    model.fit(x[: 3 * BATCH], y[: 3 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    saved = centres(model)
    feats = features_of(model, x[3 * BATCH : 4 * BATCH])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x[3 * BATCH : 4 * BATCH])
    np.save(tmp_path / "y.npy", y[3 * BATCH : 4 * BATCH])
    out = ok(
        fresh_python(f"""
        import json, numpy as np, keras, lossplug
        model = keras.models.load_model({str(tmp_path / "m.keras")!r})
        state = model.term_state("center")["centers"]
        loaded = keras.ops.convert_to_numpy(state).tolist()
        x, y = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
        stepped = keras.ops.convert_to_numpy(state).tolist()
        print(json.dumps({{"trainable": state.trainable, "loaded": loaded, "stepped": stepped}}))
        """)
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["trainable"] is False
    np.testing.assert_array_equal(np.array(result["loaded"], np.float32), saved)
    # the loaded term is still update="paper": one more step is one more rule application
    want = paper_rule(saved.astype(np.float64), feats, y[3 * BATCH : 4 * BATCH], 0.5)
    assert_centres(np.array(result["stepped"]), want)


def test_backup_and_restore_resumes_the_centres_exactly(tmp_path):
    x, y = data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    def fit(model, callbacks=()):
        model.fit(x, y, epochs=4, batch_size=32, verbose=0, shuffle=False, callbacks=callbacks)

    reference = build(frozen=False)
    fit(reference)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(build(frozen=False), [backup, Interrupt()])
    resumed = build(frozen=False)
    fit(resumed, [backup])
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 4 * 3
    assert np.abs(centres(reference)).sum() > 0
    assert_centres(centres(resumed), centres(reference))
    for got, want in zip(resumed.weights, reference.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6
        )


# --------------------------------------------------------------------- several replicas
@pytest.mark.e2e
@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize(
    "variant",
    [
        "center",
        "memory",  # + cross_batch_memory(global_batch=True): the ring buffer too
        "frozen",  # no trainable weight: no optimizer step, the rule still runs
    ],
)
def test_mirrored_strategy_agrees_with_one_device_on_the_state(tmp_path, variant):
    from test_distribute import finish, run

    results = {}
    for mode in ("single", "mirrored"):
        out = tmp_path / f"{mode}.npz"
        finish(run(mode, out, {"LOSSPLUG_CENTER_PAPER": variant}))
        results[mode] = dict(np.load(out))
    single, mirrored = results["single"], results["mirrored"]
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    assert np.abs(single["centers"]).sum() > 0
    np.testing.assert_allclose(mirrored["centers"], single["centers"], rtol=1e-4, atol=1e-6)
    compared = [k for k in single if "__" in k or k.startswith("log_")]
    if variant == "memory":
        memory = [k for k in compared if "cross_batch_memory" in k]
        assert memory and any(np.abs(single[k]).sum() > 0 for k in memory), compared
        assert "log_cross_batch_memory" in compared
    for key in compared:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.e2e
@pytest.mark.backends("jax")
@pytest.mark.parametrize("memory", [False, True], ids=["center", "memory"])
def test_jax_data_parallel_agrees_with_one_device_on_the_state(tmp_path, memory):
    from test_distribute_jax import run

    flags = ["--center-paper", *(["--memory"] if memory else [])]
    single = run("single", tmp_path / "single.npz", *flags)
    parallel = run("data_parallel", tmp_path / "parallel.npz", *flags)
    assert int(single["devices"]) == 1 and int(parallel["devices"]) == 2
    assert np.abs(single["centers"]).sum() > 0
    np.testing.assert_allclose(parallel["centers"], single["centers"], rtol=1e-4, atol=1e-6)
    compared = [k for k in single if "__" in k or k.startswith("log_")]
    if memory:
        assert any("cross_batch_memory" in k and np.abs(single[k]).sum() > 0 for k in compared)
        assert "log_cross_batch_memory" in compared
    for key in compared:
        np.testing.assert_allclose(parallel[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)

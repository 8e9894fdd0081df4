"""Term state is model state: every Keras workflow keeps it (issue: nothing is lost).

Each test runs a real workflow (fit, evaluate, save/load_model, save_weights/
load_weights in either order, BackupAndRestore, custom training loops); where
loading is involved the loading side runs in a fresh interpreter, with the same
Keras backend as this one. The plugins are the installed distributions
(``center``, ``margin_softmax``, ``label_smoothing``, ``categorical_true_positives``)
so that a fresh process finds them by their entry points.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import lossplug
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAMP = lossplug.schedules.LinearRamp(0.0, 1.0, begin=0, stop=4)


def fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter with this process's Keras backend."""
    full_env = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = rng.integers(0, 4, n).astype("int32")
    return x, y


def build(seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,), name="x_in")
    features = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    logits = keras.layers.Dense(4, name="logits")(features)
    return lossplug.LossModel(inputs, logits, expose=["features"])


def terms(order=1):
    center = lossplug.use("center", weight=RAMP, num_classes=4, alpha=1.0)
    arcface = lossplug.use("margin_softmax", num_classes=4)
    listed = ["label_smoothing", center, arcface]
    return listed if order == 1 else listed[::-1]


def state_of(model):
    return {
        f"{term}/{name}": keras.ops.convert_to_numpy(v)
        for term in ("center", "margin_softmax")
        for name, v in model.term_state(term).items()
    }


# --------------------------------------------------------------------- save / load
def test_save_load_evaluate_gives_same_loss_and_terms_with_schedule_past_epoch_zero(tmp_path):
    x, y = data()
    model = build()
    model.compile("adam", loss=terms())
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert model.epoch == 2
    before = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert before["center"] > 0  # the ramp is past 0 at epoch 2
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = ok(
        fresh_python(f"""
        import json, numpy as np, keras, lossplug
        model = keras.models.load_model({str(tmp_path / "m.keras")!r})
        x, y = np.load({str(tmp_path / "x.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        r = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
        print(json.dumps({{"epoch": model.epoch, **{{k: float(v) for k, v in r.items()}}}}))
        model.fit(x, y, epochs=4, initial_epoch=3, batch_size=32, verbose=0)
        print(json.dumps({{"after": model.epoch}}))
        """)
    )
    lines = [json.loads(line) for line in out.strip().splitlines()[-2:]]
    after_load, resumed = lines
    assert after_load["epoch"] == 2
    for key, value in before.items():
        assert after_load[key] == pytest.approx(float(value), rel=1e-5, abs=1e-6), key
    assert resumed["after"] == 3  # fit(initial_epoch=3) sets the clock


@pytest.mark.parametrize("order", ["compile_then_load", "load_then_compile"])
def test_weights_restore_plugin_state_in_any_order(tmp_path, order):
    x, y = data()
    model = build()
    model.compile("adam", loss=terms())
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save_weights(tmp_path / "ckpt.weights.h5")
    expected = state_of(model)
    assert all(np.abs(v).sum() > 0 for v in expected.values())
    np.savez(tmp_path / "expected.npz", **{k.replace("/", "__"): v for k, v in expected.items()})
    weights = str(tmp_path / "ckpt.weights.h5")
    steps = [
        "model.compile('adam', loss=test_workflows.terms(order=2))",
        f"model.load_weights({weights!r})",
    ]
    if order == "load_then_compile":
        steps.reverse()
    script = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})",
            "import numpy as np, keras, lossplug, test_workflows",
            "model = test_workflows.build(seed=5)  # other initial values",
            *steps,
            f"expected = np.load({str(tmp_path / 'expected.npz')!r})",
            "got = test_workflows.state_of(model)",
            "for key, value in got.items():",
            "    np.testing.assert_array_equal(value, expected[key.replace('/', '__')], key)",
            "assert model.epoch == 1, model.epoch",
            "print('RESTORED', sorted(got))",
        ]
    )
    out = ok(fresh_python(script))
    assert "RESTORED ['center/centers', 'margin_softmax/class_weights']" in out


def test_weights_for_another_config_fail_naming_term_and_variable(tmp_path):
    model = build()
    model.compile("adam", loss=["label_smoothing", lossplug.use("center", num_classes=4)])
    model.save_weights(tmp_path / "w.weights.h5")
    other = build()
    other.load_weights(tmp_path / "w.weights.h5")
    with pytest.raises(lossplug.CompileError, match=r"'centers' of term 'center'.*\(4, 6\)"):
        other.compile("adam", loss=["label_smoothing", lossplug.use("center", num_classes=3)])


def test_backup_and_restore_resumes_exactly(tmp_path):
    x, y = data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    def fresh():
        model = build()
        model.compile(keras.optimizers.SGD(0.05), loss=terms())
        return model

    reference = fresh()
    reference.fit(x, y, epochs=4, batch_size=32, verbose=0, shuffle=False)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(
            x, y, epochs=4, batch_size=32, verbose=0, shuffle=False, callbacks=[backup, Interrupt()]
        )
    resumed = fresh()
    resumed.fit(x, y, epochs=4, batch_size=32, verbose=0, shuffle=False, callbacks=[backup])
    assert resumed.epoch == reference.epoch == 3
    for got, want in zip(resumed.weights, reference.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6
        )


# --------------------------------------------------------------------- custom loops
def load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_loop_of_the_docs_reproduces_fit():
    """examples/custom_loop.py (shown in docs/custom-loops.md) matches fit(shuffle=False)."""
    loop = load_example("custom_loop")
    x, y = data(n=96)
    via_fit = build()
    via_fit.compile(keras.optimizers.SGD(0.05), loss=terms())
    history = via_fit.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False).history
    via_loop = build()
    via_loop.compile(keras.optimizers.SGD(0.05), loss=terms())
    logs = loop.train(via_loop, x, y, epochs=3, batch_size=32, verbose=0)
    assert history["center"][0] == 0.0 and history["center"][2] > 0  # the ramp moves
    for name in ("loss", "label_smoothing", "center", "margin_softmax"):
        got = [float(epoch[name]) for epoch in logs]
        np.testing.assert_allclose(got, history[name], rtol=2e-5, atol=1e-6, err_msg=name)
    for got, want in zip(via_loop.weights, via_fit.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(want),
            rtol=2e-5,
            atol=1e-6,
            err_msg=got.path,
        )


def test_custom_loop_of_the_docs_raises_bad_labels_its_step_found():
    """The loop's compiled step cannot raise; raise_reported(model) after it does."""
    loop = load_example("custom_loop")
    x, y = data(n=96)
    y[40] = 6  # batch 1 of 32
    model = build()
    model.compile(keras.optimizers.SGD(0.05), loss=terms())
    with pytest.raises(lossplug.InvalidTensorError, match="smallest offending id 6, largest 6"):
        loop.train(model, x, y, epochs=1, batch_size=32, verbose=0)


def test_set_epoch_moves_schedules_and_refuses_nonsense():
    x, y = data()
    model = build()
    model.compile("sgd", loss=["label_smoothing", lossplug.use("center", weight=RAMP)])
    model.set_epoch(2)
    r = model.evaluate(x, y, verbose=0, return_dict=True)
    model.set_epoch(0)
    assert model.evaluate(x, y, verbose=0, return_dict=True)["center"] == 0.0
    assert r["center"] > 0.0
    with pytest.raises(lossplug.FitError, match="epoch number >= 0"):
        model.set_epoch(-1)


# --------------------------------------------------------------------- metrics=
def test_metric_plugin_in_metrics_is_logged_with_val():
    x, y = data()
    model = build()
    model.compile("adam", loss="label_smoothing", metrics=["categorical_true_positives"])
    h = model.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_data=(x, y)).history
    assert {"categorical_true_positives", "val_categorical_true_positives"} <= set(h)
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    correct = float((logits.argmax(-1) == y).sum())
    r = model.evaluate(x, y, verbose=0, return_dict=True)
    assert r["categorical_true_positives"] == correct


def test_loss_plugin_in_metrics_is_shown_but_not_trained():
    x, y = data()
    monitored = build()
    monitored.compile(
        keras.optimizers.SGD(0.1),
        loss="label_smoothing",
        metrics=[lossplug.use("center", num_classes=4), "accuracy"],
    )
    plain = build()
    plain.compile(keras.optimizers.SGD(0.1), loss="label_smoothing")
    h = monitored.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False).history
    plain.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    assert h["center"][0] > 0 and "accuracy" in h
    assert h["loss"] == pytest.approx(h["label_smoothing"])  # center is not part of the loss
    for a, b in zip(monitored.trainable_weights, plain.trainable_weights, strict=False):
        if "center" not in a.path:
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_compile_with_only_metric_terms_is_refused():
    model = build()
    with pytest.raises(lossplug.CompileError, match="no trainable loss term.*loss=\\["):
        model.compile("adam", loss="categorical_true_positives")
    with pytest.raises(lossplug.CompileError, match="categorical_true_positives only monitor"):
        model.compile("adam", metrics=["categorical_true_positives"])


# --------------------------------------------------------------------- term_state
def test_term_state_is_a_read_only_view_of_the_model_variables():
    model = build()
    model.compile("adam", loss=terms())
    state = model.term_state("center")
    assert list(state) == ["centers"]
    assert any(state["centers"] is w for w in model.weights)
    with pytest.raises(TypeError):
        state["centers"] = None
    with pytest.raises(lossplug.UnknownTermError, match="no term 'centre'.*center, margin"):
        model.term_state("centre")


# --------------------------------------------------------------------- import order
def test_import_lossplug_before_keras_then_load_model(tmp_path):
    model = build()
    model.compile("adam", loss=["label_smoothing", lossplug.use("center", num_classes=4)])
    model.save(tmp_path / "m.keras")
    out = ok(
        fresh_python(f"""
        import sys
        import lossplug
        assert not {{"keras", "tensorflow", "jax", "torch"}} & set(sys.modules)
        import keras
        loaded = keras.models.load_model({str(tmp_path / "m.keras")!r})
        print(type(loaded).__name__, [t.name for t in loaded._lossplug_terms_bound()])
        """)
    )
    assert "LossModel ['label_smoothing', 'center']" in out


def test_lossplug_use_before_keras_imports_keras_and_registers_without_warning(tmp_path):
    # lossplug.use imports Keras itself, while lossplug.terms is still being imported: the
    # registration waits for that import to end instead of failing on the circular import.
    model = build()
    model.compile("adam", loss=["label_smoothing", lossplug.use("center", num_classes=4)])
    model.save(tmp_path / "m.keras")
    out = ok(
        fresh_python(f"""
        import warnings
        warnings.filterwarnings("error", message="lossplug could not register")
        import lossplug
        term = lossplug.use("center", num_classes=4)
        import keras
        loaded = keras.models.load_model({str(tmp_path / "m.keras")!r})
        print(type(loaded).__name__, term.name)
        """)
    )
    assert "LossModel center" in out


# --------------------------------------------------------------------- weights given badly
@keras.saving.register_keras_serializable(package="tests")
def none_after_one(epoch):
    return 1.0 if epoch < 2 else None


@keras.saving.register_keras_serializable(package="tests")
def negative_later(epoch):
    return 1.0 - epoch


def test_schedule_returning_non_number_names_term_schedule_and_epoch():
    x, y = data()
    model = build()
    model.compile("sgd", loss=lossplug.use("label_smoothing", weight=none_after_one))
    with pytest.raises(
        lossplug.PluginConfigError,
        match=r"term 'label_smoothing': the weight schedule 'none_after_one' returned None at "
        r"epoch 2; a schedule must return a number",
    ):
        model.fit(x, y, epochs=3, verbose=0)


def test_negative_weight_needs_allow_negative():
    with pytest.raises(lossplug.PluginConfigError, match=r"term 'center'.*negative \(-0.5\).*"):
        lossplug.use("center", weight=-0.5)
    with pytest.raises(lossplug.PluginConfigError, match="allow_negative=True"):
        lossplug.use("center", weight=lossplug.schedules.LinearRamp(1.0, -1.0))
    assert lossplug.use("center", weight=-0.5, allow_negative=True).weight.lowest() == -0.5
    x, y = data()
    model = build()
    model.compile("sgd", loss=["label_smoothing", lossplug.use("center", weight=negative_later)])
    with pytest.raises(lossplug.PluginConfigError, match="negative.*at epoch 2"):
        model.fit(x, y, epochs=3, verbose=0)


def test_class_weight_without_targets_is_explained():
    x, _ = data()
    inputs = keras.Input((12,))
    model = lossplug.LossModel(inputs, keras.layers.Dense(12)(inputs))
    model.compile("adam", loss="reconstruction")
    with pytest.raises(lossplug.FitError, match="class_weight.*needs targets"):
        model.fit(x, class_weight={0: 1.0, 1: 2.0}, verbose=0)


# --------------------------------------------------------------------- disabled plugins
def test_loading_with_a_disabled_plugin_says_so_and_how_to_load_for_inference(tmp_path):
    model = build()
    model.compile("adam", loss=["label_smoothing", lossplug.use("center", num_classes=4)])
    model.save(tmp_path / "m.keras")
    done = fresh_python(
        f"""
        import keras, lossplug
        try:
            keras.models.load_model({str(tmp_path / "m.keras")!r})
        except Exception as exc:
            print("ERROR", exc)
        model = keras.models.load_model({str(tmp_path / "m.keras")!r}, compile=False)
        print("INFERENCE", type(model).__name__)
        """,
        LOSSPLUG_DISABLE="center",
    )
    out = ok(done)
    assert "installed (lossplug-center" in out
    assert "disabled by LOSSPLUG_DISABLE='center'" in out
    assert "compile=False" in out
    assert "INFERENCE LossModel" in out


def test_a_compile_config_naming_a_backend_optimizer_class_loads_on_this_backend() -> None:
    """Files saved on torch by Keras 3.15 name ``keras.src.backend.torch.optimizers...``."""
    from lossplug import backend

    saved = {
        "optimizer": {
            "module": "keras.src.backend.torch.optimizers.torch_adam",
            "class_name": "Adam",
            "config": {"learning_rate": 0.01},
            "registered_name": "Adam",
        },
        "nested": [
            {
                "module": "keras.src.backend.torch.optimizers.torch_sgd",
                "class_name": "SGD",
                "config": {},
                "registered_name": "SGD",
            }
        ],
        "custom": {"module": "my.optimizers", "class_name": "Adam", "config": {}},
    }
    portable = backend.portable_config(saved)
    assert portable["optimizer"]["module"] == "keras.optimizers"
    assert portable["nested"][0]["module"] == "keras.optimizers"
    assert portable["custom"] == saved["custom"]  # not a Keras backend class: left alone
    optimizer = keras.saving.deserialize_keras_object(portable["optimizer"])
    assert isinstance(optimizer, keras.optimizers.Adam)
    foreign = [name for name in backend.SUPPORTED if name != keras.backend.backend()]
    module = type(optimizer).__module__
    assert not any(f".backend.{name}." in module for name in foreign), module
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.01)

"""LossModel: compile, fit, evaluate, predict, save/load with plugin terms."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.terms import reduce_per_sample

pytestmark = pytest.mark.usefixtures("toy_plugins")


def make_data(n=128, d=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, classes, n)
    return x, y


def make_model(d=16, classes=4, expose=("features",)):
    inputs = keras.Input((d,), name="x_in")
    features = keras.layers.Dense(8, activation="relu", name="features")(inputs)
    logits = keras.layers.Dense(classes, name="logits")(features)
    return lossplug.LossModel(inputs, logits, expose=list(expose))


def design_example_model():
    """DESIGN's example: cross-entropy plus 0.2 x center loss (its own metric), accuracy."""
    model = make_model()
    model.compile(
        optimizer="adam",
        loss=["toy_ce", lossplug.use("toy_center", weight=0.2, num_classes=4)],
        metrics=["accuracy"],
    )
    return model


def test_design_example_trains_and_logs_every_term():
    x, y = make_data()
    model = design_example_model()
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_split=0.25)
    keys = set(history.history)
    for name in ("loss", "toy_ce", "toy_center", "toy_center_mean_norm", "accuracy"):
        assert name in keys and f"val_{name}" in keys
    # Terms are weighted contributions that add up to the total loss.
    h = history.history
    for epoch in range(3):
        assert h["loss"][epoch] == pytest.approx(
            h["toy_ce"][epoch] + h["toy_center"][epoch], rel=1e-4
        )
    assert h["loss"][-1] < h["loss"][0]
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(result) >= {"loss", "toy_ce", "toy_center", "accuracy"}


def test_each_metric_and_metric_variable_is_listed_once():
    """The step guard, the terms' means and a plugin's own metric each appear once in
    ``metrics`` (a JAX step carries ``metrics_variables`` in and out of every step)."""
    x, y = make_data()
    model = design_example_model()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    metrics = model.metrics
    assert len({id(m) for m in metrics}) == len(metrics)
    assert model._lossplug_guard in metrics
    variables = model.metrics_variables
    assert len({id(v) for v in variables}) == len(variables)


def test_predict_needs_no_targets_and_returns_only_outputs():
    x, _ = make_data()
    model = make_model()
    model.compile(loss=["toy_ce", lossplug.use("toy_center", num_classes=4)])
    out = model.predict(x, verbose=0)
    assert out.shape == (128, 4)
    np.testing.assert_allclose(out, model.inference_model().predict(x, verbose=0), rtol=1e-6)


def test_term_value_matches_numpy_with_sample_weights():
    x, y = make_data(n=64)
    model = make_model(expose=())
    model.compile(loss="toy_ce")
    weights = np.linspace(0.0, 2.0, 64).astype("float32")
    logits = model.predict(x, verbose=0)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    per_sample = -logp[np.arange(64), y]
    expected = float(np.sum(per_sample * weights) / 64)
    result = model.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0, return_dict=True)
    assert result["toy_ce"] == pytest.approx(expected, rel=1e-5)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


@settings(deadline=None)  # eager JAX compiles each operation for every new shape
@given(
    per_sample=hnp.arrays(
        np.float32,
        st.tuples(st.integers(0, 6), st.integers(1, 3)),
        elements=st.floats(0.0, 100.0, width=32),
    ),
    weighted=st.booleans(),
)
@example(per_sample=np.zeros((0,), np.float32), weighted=False)
@example(per_sample=np.zeros((0,), np.float32), weighted=True)
def test_core_reduction_is_sum_over_batch_size(per_sample, weighted):
    # Keras' "sum_over_batch_size": sum(w * loss) / number of loss elements, and 0 (not
    # 0/0) for an empty batch, which a replica gets from a last batch shorter than the
    # number of replicas.
    batch = per_sample.shape[0]
    weights = np.linspace(0.5, 2.0, batch).astype("float32") if weighted else None
    got = float(reduce_per_sample(per_sample, weights))
    scaled = (
        per_sample * weights.reshape((batch,) + (1,) * (per_sample.ndim - 1))
        if weighted
        else per_sample
    )
    expected = float(np.sum(scaled, dtype=np.float64)) / max(per_sample.size, 1)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_state_is_trained_and_saved(tmp_path):
    x, y = make_data()
    model = make_model()
    model.compile("adam", loss=["toy_ce", lossplug.use("toy_center", weight=0.5, num_classes=4)])
    centers = [w for w in model.weights if w.path.endswith("centers")]
    assert len(centers) == 1 and centers[0].trainable
    before = keras.ops.convert_to_numpy(centers[0]).copy()
    model.fit(x, y, epochs=2, verbose=0)
    after = keras.ops.convert_to_numpy(centers[0])
    assert not np.allclose(before, after)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode stays on
    assert isinstance(loaded, lossplug.LossModel)
    assert loaded.exposed == ["features"]
    loaded_centers = [w for w in loaded.weights if w.path.endswith("centers")][0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded_centers), after)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    r1 = model.evaluate(x, y, verbose=0, return_dict=True)
    r2 = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert r1["toy_center"] == pytest.approx(r2["toy_center"], rel=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)  # optimizer state restored and usable


@keras.saving.register_keras_serializable(package="tests")
def tenth_per_epoch(epoch):
    return 10.0**-epoch


def test_epoch_reaches_plugins_and_schedules_without_retracing(toy_plugins):
    toy_plugins.EpochProbe.calls = 0
    x, y = make_data(n=32)
    model = make_model(expose=())
    ramp = lossplug.schedules.LinearRamp(0.0, 1.0, begin=0, stop=4)
    model.compile(
        "sgd",
        loss=[
            "toy_ce",
            lossplug.use("toy_epoch", weight=2.0, display_name="epoch_term"),
            lossplug.use("toy_epoch", weight=ramp, display_name="ramped"),
            lossplug.use("toy_epoch", weight=tenth_per_epoch, display_name="custom"),
        ],
    )
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    h = history.history
    assert h["epoch_term"] == pytest.approx([2.0 * e for e in range(5)])
    assert h["ramped"] == pytest.approx([e * min(e / 4, 1.0) for e in range(5)])
    assert h["custom"] == pytest.approx([e * 10.0**-e for e in range(5)])
    # Three terms: one probe call each at compile, then one trace of the train step for
    # all five epochs: the epoch reaches the compiled step through variables. PyTorch runs
    # the step eagerly (Keras' default there): one call per term and step, nothing traced.
    steps = 5 if keras.backend.backend() == "torch" else 1
    assert toy_plugins.EpochProbe.calls == 3 + 3 * steps


@pytest.mark.backends("jax")
def test_jax_steps_without_jit_compile_nothing_after_the_first_epoch(toy_plugins):
    """jit_compile=False on JAX runs op by op; the finite guard's branch must not compile
    anything per step (an eager ``lax.cond`` compiles both branches at every call)."""
    import jax

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    x, y = make_data(n=64)
    model = make_model()
    model.compile(
        "adam", loss=["toy_ce", lossplug.use("toy_center", num_classes=4)], jit_compile=False
    )
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # every op compiled once
        first = len(compiles)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert first > 0  # the listener sees compilations
    assert len(compiles) == first


def test_fit_without_targets_for_self_supervised_terms():
    x, _ = make_data()
    inputs = keras.Input((16,), name="x_in")
    recon = keras.layers.Dense(16, name="recon")(keras.layers.Dense(4)(inputs))
    model = lossplug.LossModel(inputs, recon)
    # Keras' mse bound to the input as target: an autoencoder trained with fit(x).
    model.compile("adam", loss=lossplug.use("toy_epoch"))
    history = model.fit(x, epochs=1, verbose=0)
    assert "toy_epoch" in history.history


def test_missing_tensor_names_plugin_and_available_tensors():
    model = make_model(expose=())
    with pytest.raises(lossplug.MissingTensorError) as info:
        model.compile(loss=lossplug.use("toy_center", num_classes=4))
    message = str(info.value)
    assert "'toy_center'" in message and "'features'" in message
    assert "Available" in message and "logits" in message and "expose" in message


def test_missing_targets_in_fit_are_explained():
    x, _ = make_data()
    model = make_model(expose=())
    model.compile(loss="toy_ce")
    with pytest.raises(lossplug.MissingTensorError, match="received no targets"):
        model.fit(x, epochs=1, verbose=0)


def test_bind_maps_plugin_tensor_to_model_tensor():
    x, y = make_data()
    inputs = keras.Input((16,), name="x_in")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(4, name="logits")(hidden)
    model = lossplug.LossModel(inputs, logits, expose=["hidden"])
    model.compile(loss=lossplug.use("toy_center", num_classes=4, bind={"features": "hidden"}))
    assert "toy_center" in model.fit(x, y, epochs=1, verbose=0).history
    with pytest.raises(lossplug.MissingTensorError, match="does not read"):
        lossplug.use("toy_center", bind={"embeddings": "hidden"})


def test_multi_output_dict_losses_and_names():
    x, y = make_data()
    inputs = keras.Input((16,), name="x_in")
    h = keras.layers.Dense(8, activation="relu", name="features")(inputs)
    a = keras.layers.Dense(4, name="a")(h)
    b = keras.layers.Dense(4, name="b")(h)
    model = lossplug.LossModel(inputs, {"a": a, "b": b}, expose=["features"])
    model.compile(
        "adam",
        loss={
            "a": "toy_ce",
            "b": ["toy_ce", keras.losses.SparseCategoricalCrossentropy(from_logits=True)],
        },
        loss_weights={"a": 1.0, "b": 0.5},
    )
    h = model.fit(x, {"a": y, "b": y}, epochs=1, verbose=0).history
    assert {"a_toy_ce", "b_toy_ce", "b_sparse_categorical_crossentropy"} <= set(h)
    assert h["loss"][0] == pytest.approx(
        h["a_toy_ce"][0] + h["b_toy_ce"][0] + h["b_sparse_categorical_crossentropy"][0], rel=1e-4
    )
    with pytest.raises(lossplug.CompileError, match="not an output"):
        model.compile(loss={"c": "toy_ce"})
    with pytest.raises(lossplug.CompileError, match="3 entries"):
        model.compile(loss=["toy_ce", "toy_ce", "toy_ce"])


def test_unknown_loss_name_in_compile():
    model = make_model()
    with pytest.raises(lossplug.UnknownPluginError, match="Did you mean 'toy_ce'"):
        model.compile(loss="toy_cee")


def test_expose_errors():
    inputs = keras.Input((4,))
    out = keras.layers.Dense(2, name="out")(inputs)
    dead_end = keras.layers.Dense(2, name="dead_end")(inputs)
    with pytest.raises(lossplug.CompileError, match="no layer named 'nope'"):
        lossplug.LossModel(inputs, out, expose=["nope"])
    with pytest.raises(lossplug.CompileError, match="leads to none of the model's outputs"):
        lossplug.LossModel(inputs, out, expose={"dead": dead_end})
    with pytest.raises(lossplug.CompileError, match="already an output"):
        lossplug.LossModel(inputs, out, expose=["out"])


def test_non_finite_first_step_names_plugin():
    x, y = make_data()
    x[0, 0] = np.nan
    inputs = keras.Input((16,))
    model = lossplug.LossModel(inputs, keras.layers.Dense(4)(inputs))
    model.compile(loss="toy_ce")
    with pytest.raises(lossplug.NonFiniteLossError, match="'toy_ce'"):
        model.fit(x, y, epochs=1, batch_size=128, verbose=0)


def test_get_returns_keras_loss_for_any_model(tmp_path):
    x, y = make_data()
    loss = lossplug.get("toy_ce")
    assert isinstance(loss, keras.losses.Loss)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
    model.compile("adam", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "seq.keras")
    loaded = keras.models.load_model(tmp_path / "seq.keras")
    assert loaded.loss.plugin == "toy_ce"
    with pytest.raises(lossplug.MissingTensorError, match="LossModel"):
        lossplug.get("toy_center")


def segmentation_data():
    """(B, H, W, 2) images and (B, H, W) class ids of 3 classes."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4, 4, 2)).astype("float32"), rng.integers(0, 3, size=(8, 4, 4))


def segmenter(model_class):
    """A 1x1 convolution to (B, H, W, 3) softmax probabilities, compiled with Keras' sparse
    cross-entropy."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2))
    model = model_class(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs))
    model.compile(keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    return model


def test_keras_sparse_cross_entropy_of_image_probabilities_trains():
    """The loss is Keras' mean over pixels of -log p_y, and it backpropagates on every backend
    (on PyTorch Keras' own backward of it fails: the canary below)."""
    x, ids = segmentation_data()
    model = segmenter(lossplug.LossModel)
    history = model.fit(x, ids, epochs=3, batch_size=8, shuffle=False, verbose=0).history
    p = model.predict(x, verbose=0)
    expected = -np.mean(np.log(np.take_along_axis(p, ids[..., None], axis=-1)))
    loss = model.evaluate(x, ids, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(expected, rel=1e-5)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.backends("torch")
def test_canary_plain_keras_cannot_backpropagate_sparse_cross_entropy_of_images_on_torch():
    """Canary for pytorch/pytorch#175084: Keras 3.15's torch sparse cross-entropy of (B, H, W, C)
    probabilities hands a strided view to ``nll_loss``, whose 4-D backward refuses it. When this
    fails, the bug is fixed and ``keras_loss_prediction`` can go (docs/decisions.md)."""
    x, ids = segmentation_data()
    with pytest.raises(RuntimeError, match="grad_input must be contiguous"):
        segmenter(keras.Model).fit(x, ids, epochs=1, batch_size=8, verbose=0)


@pytest.mark.backends("torch")
def test_canary_plain_keras_cannot_export_a_saved_model_on_torch(tmp_path):
    """Canary: Keras 3.15's torch SavedModel export passes ``torch.export`` dynamic shapes that
    do not match its sample inputs, for any model. When this fails, upstream exports and the
    quickstart's torch branch (``format="torch"``) can go (docs/decisions.md)."""
    inputs = keras.Input((4,), name="pixels")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(Exception, match="structure of `inputs` and `dynamic_shapes`"):
        model.export(str(tmp_path / "served"))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"jit_compile": True}, id="jit"),
        # Keras' torch trainer refuses steps_per_execution > 1 itself, with a clear error.
        pytest.param(
            {"steps_per_execution": 3},
            id="steps_per_execution",
            marks=pytest.mark.backends("tensorflow", "jax"),
        ),
        pytest.param({"run_eagerly": True}, id="eager"),
    ],
)
def test_execution_modes_agree(options):
    x, y = make_data(n=96)
    results = []
    for opts in ({}, options):
        keras.utils.set_random_seed(1)
        model = make_model()
        model.compile(
            keras.optimizers.SGD(0.05),
            loss=["toy_ce", lossplug.use("toy_center", weight=0.1, num_classes=4)],
            **opts,
        )
        h = model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0).history
        results.append(h)
    for key in ("loss", "toy_ce", "toy_center"):
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=2e-4)


def test_mixed_precision_losses_in_float32():
    x, y = make_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = make_model()
        model.compile("adam", loss=["toy_ce", lossplug.use("toy_center", num_classes=4)])
        assert model.output.dtype == "float16"
        h = model.fit(x, y, epochs=2, verbose=0).history
        assert all(np.isfinite(h["loss"]))
        assert h["loss"][-1] < h["loss"][0]
        centers = [w for w in model.weights if w.path.endswith("centers")][0]
        assert centers.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_recompile_keeps_trained_state():
    x, y = make_data()
    model = make_model()
    model.compile("adam", loss=["toy_ce", lossplug.use("toy_center", num_classes=4)])
    model.fit(x, y, epochs=1, verbose=0)
    centers = next(w for w in model.weights if w.path.endswith("centers"))
    trained = keras.ops.convert_to_numpy(centers).copy()
    model.compile("sgd", loss=["toy_ce", lossplug.use("toy_center", weight=0.1, num_classes=4)])
    again = [w for w in model.weights if w.path.endswith("centers")]
    assert len(again) == 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again[0]), trained)
    assert "toy_center" in model.fit(x, y, epochs=1, verbose=0).history


def test_unsaveable_schedule_is_refused_when_given():
    """A lambda weight would train for the whole run and then fail in save(): refuse it now."""
    with pytest.raises(
        lossplug.PluginConfigError, match=r"term 'toy_ce': .*register_keras_serializable"
    ):
        lossplug.use("toy_ce", weight=lambda epoch: 1.0 / (1 + epoch))


def test_registered_callable_schedule_round_trips(tmp_path):
    @keras.saving.register_keras_serializable(package="tests")
    def halving(epoch):
        return 0.5**epoch

    x, y = make_data()
    model = make_model(expose=())
    model.compile(loss=lossplug.use("toy_ce", weight=halving))
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    h = loaded.fit(x, y, epochs=2, verbose=0).history
    ratio = h["toy_ce"][1] / h["toy_ce"][0]
    assert 0.3 < ratio < 0.6  # weight halves from epoch 0 to epoch 1


def test_in_process_plugin_missing_on_load(tmp_path, toy_plugins):
    x, y = make_data()
    model = make_model(expose=())
    model.compile(loss="toy_ce")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    lossplug.unregister("toy_ce")
    try:
        with pytest.raises(lossplug.PluginNotInstalledError, match="lossplug.register"):
            keras.models.load_model(tmp_path / "m.keras")
    finally:
        lossplug.register(toy_plugins.SparseCE())


def test_extra_targets_reach_plugins_by_name(tmp_path):
    x, y = make_data()
    masks = (x[:, :4] > 0).astype("float32")
    inputs = keras.Input((16,), name="x_in")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    mask_logits = keras.layers.Dense(4, name="mask_logits")(hidden)
    both = keras.layers.Concatenate()([hidden, mask_logits])
    logits = keras.layers.Dense(4, name="logits")(both)
    model = lossplug.LossModel(inputs, logits, expose=["mask_logits"])
    mask_term = lossplug.use(
        "toy_center", num_classes=4, bind={"features": "mask_logits", "y_true": "mask_label"}
    )
    with pytest.raises(lossplug.MissingTensorError, match=r"targets=\{'mask_label': shape\}"):
        model.compile("adam", loss=["toy_ce", mask_term])
    model.compile("adam", loss=["toy_ce", mask_term], targets={"mask_label": ((), "int32")})
    labels = masks.sum(axis=1).astype("int32") % 4
    h = model.fit(x, {"logits": y, "mask_label": labels}, epochs=1, verbose=0).history
    assert {"toy_ce", "toy_center"} <= set(h)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    r = loaded.evaluate(x, {"logits": y, "mask_label": labels}, verbose=0, return_dict=True)
    assert r["toy_center"] == pytest.approx(
        model.evaluate(x, {"logits": y, "mask_label": labels}, verbose=0, return_dict=True)[
            "toy_center"
        ],
        rel=1e-5,
    )


def test_recompile_with_renamed_term_drops_old_state(tmp_path):
    x, y = make_data()
    model = make_model()
    model.compile("adam", loss=["toy_ce", lossplug.use("toy_center", num_classes=4)])
    model.compile(
        "adam", loss=["toy_ce", lossplug.use("toy_center", num_classes=4, display_name="c2")]
    )
    paths = [w.path for w in model.weights if w.path.endswith("centers")]
    assert paths == ["lossplug_state_c2/centers"]
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)


def test_fit_keeps_user_callbacks_given_by_keyword_or_position():
    x, y = make_data(n=32)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    model = make_model(expose=())
    model.compile(loss=lossplug.use("toy_epoch"))
    h1 = model.fit(x, y, epochs=2, verbose=0, callbacks=[Record()]).history
    h2 = model.fit(x, y, 32, 2, 0, [Record()]).history  # positional, as Keras allows
    assert seen == [0, 1, 0, 1]
    assert h1["toy_epoch"] == pytest.approx([0.0, 1.0]) == h2["toy_epoch"]


@pytest.mark.backends("tensorflow")  # export() writes a TensorFlow SavedModel
def test_serving_artifacts_carry_no_loss_machinery(tmp_path):
    """``inference_model()`` and ``export`` serve the outputs without lossplug or plugins."""
    x, y = make_data()
    model = make_model()
    model.compile("adam", loss=["toy_ce", lossplug.use("toy_center", num_classes=4)])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    expected = model.predict(x, verbose=0)

    serving = model.inference_model()
    assert not isinstance(serving, lossplug.LossModel)
    assert {w.path for w in serving.weights} < {w.path for w in model.weights}  # no centres
    serving.save(tmp_path / "serving.keras")
    model.export(tmp_path / "saved_model", verbose=False)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)

    # A fresh interpreter with lossplug's entry points disabled and the toy plugins
    # (registered in-process here) absent loads and serves both artifacts.
    script = f"""
import numpy as np, keras, tensorflow as tf
x = np.load({str(tmp_path / "x.npy")!r}); expected = np.load({str(tmp_path / "expected.npy")!r})
served = keras.models.load_model({str(tmp_path / "serving.keras")!r}).predict(x, verbose=0)
np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
reloaded = tf.saved_model.load({str(tmp_path / "saved_model")!r})
exported = reloaded.serve(x).numpy()
np.testing.assert_allclose(exported, expected, rtol=1e-5, atol=1e-6)
import sys
assert not any(name == "lossplug" or name.startswith("lossplug.") for name in sys.modules)
print("SERVED")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOSSPLUG_DISABLE_AUTOLOAD": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SERVED" in done.stdout

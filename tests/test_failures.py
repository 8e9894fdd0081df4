"""Training-time failures are caught and named, first and deterministically.

* A NaN or infinite term at any step stops ``fit`` with a ``NonFiniteLossError``
  naming the term, the epoch and the batch, in eager, compiled and jit-compiled
  steps; the step is not applied, so the weights are those from before it.
* Class ids out of range raise an error that starts with the plugin's sentence and
  names the offending ids, before any gather can fail, the same on every run.
* A plugin reading logits from a softmax output (or probabilities from a linear
  one) warns at compile time.
* Hints name the right fix (multi-output models, plain Keras models).
"""

from __future__ import annotations

import warnings

import keras
import lossplug
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("toy_plugins")

MODES = {
    "eager": {"run_eagerly": True},
    "compiled": {},
    "jit": {"jit_compile": True},
}
if keras.backend.backend() == "torch":
    # Keras' torch trainer compiles with torch.compile (minutes on CPU for these tiny
    # steps); its default, eager, is the mode torch users run.
    MODES.pop("jit")


def marked_data(n=128, d=8, bad_batch=2, batch_size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, 4, n).astype("int32")
    x[bad_batch * batch_size : (bad_batch + 1) * batch_size, 0] = 1000.0  # marked samples
    return x, y


def model_for(**compile_args):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    logits = keras.layers.Dense(4, name="logits")(inputs)
    model = lossplug.LossModel(inputs, logits)
    model.compile(keras.optimizers.Adam(1e-3), **compile_args)
    return model


class Snapshot(keras.callbacks.Callback):
    """The weights after a given batch of a given epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0
        self.weights = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.weights = [keras.ops.convert_to_numpy(w).copy() for w in self.model.weights]


def weights_of(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_plugin_term_at_a_later_batch_stops_before_that_step(mode, value):
    x, y = marked_data(bad_batch=2)
    model = model_for(
        loss=["toy_ce", lossplug.use("toy_nan_at", epoch=1, value=value)], **MODES[mode]
    )
    snapshot = Snapshot(epoch=1, batch=1)
    with pytest.raises(lossplug.NonFiniteLossError) as info:
        model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0, callbacks=[snapshot])
    message = str(info.value)
    assert message.startswith(
        "loss plugin 'toy_nan_at' (term 'toy_nan_at') produced a non-finite loss (toy_nan_at="
    )
    assert "at epoch 1, batch 2" in message
    assert "those from before batch 2" in message
    assert "`lossplug check toy_nan_at`" in message
    for got, want in zip(weights_of(model), snapshot.weights, strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)  # the bad step was not applied


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_non_finite_gradient_with_finite_terms_is_named_at_its_batch(mode):
    """Every term finite, a gradient NaN at epoch 1, batch 2: the guard names that batch
    (read after the fact from its in-graph record) and leaves the weights of batch 1."""
    x, y = marked_data(bad_batch=2)
    model = model_for(loss=["toy_ce", "toy_nan_gradient_at"], **MODES[mode])
    snapshot = Snapshot(epoch=1, batch=1)
    with pytest.raises(lossplug.NonFiniteLossError) as info:
        model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0, callbacks=[snapshot])
    message = str(info.value)
    assert message.startswith(
        "the training step at epoch 1, batch 2 had a non-finite gradient (every loss term "
        "was finite). Training stopped and that step was not applied"
    ), message
    assert "those from before batch 2" in message
    assert "lossplug check NAME" in message
    for got, want in zip(weights_of(model), snapshot.weights, strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_non_finite_keras_loss_term_is_named_too(mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = rng.normal(size=(96, 4)).astype("float32")
    y[70, 1] = np.nan  # batch 2 of 32
    model = model_for(loss=["mse"], **MODES[mode])
    snapshot = Snapshot(epoch=0, batch=1)
    with pytest.raises(
        lossplug.NonFiniteLossError,
        match=r"^Keras loss 'mse' \(term 'mse'\) produced a non-finite loss \(mse=nan\) at "
        r"epoch 0, batch 2\..*Check the targets and outputs Keras loss 'mse' receives",
    ):
        model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[snapshot])
    for got, want in zip(weights_of(model), snapshot.weights, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.backends("tensorflow", "jax")  # Keras' torch trainer runs one step at a time
def test_several_steps_per_execution_name_the_first_bad_batch():
    x, y = marked_data(n=192, bad_batch=4)
    model = model_for(loss=["toy_ce", "toy_nan_at"], steps_per_execution=3)
    with pytest.raises(lossplug.NonFiniteLossError, match="at epoch 1, batch 4"):
        model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    # batch 4 is the second of the execution 3..5: 3 was applied, 4 and 5 were not
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 6 + 4
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("failure", ["non-finite", "class ids"])
def test_a_failure_in_the_last_batch_is_found_before_the_epochs_validation(mode, failure):
    """Keras resets every metric (the step guard too) when fit's validation begins, before
    the epoch's end: a step that failed after the epoch's last poll is read before that."""
    x, y = marked_data(n=128, bad_batch=3)  # the last of 4 batches
    if failure == "class ids":
        y = y % 3
        y[100] = 9
        model, terms = class_id_model("label_smoothing", {})
        model.compile("adam", loss=terms, **MODES[mode])
        expected, match = lossplug.InvalidTensorError, "smallest offending id 9, largest 9"
    else:
        model = model_for(loss=["toy_ce", lossplug.use("toy_nan_at", epoch=0)], **MODES[mode])
        expected, match = lossplug.NonFiniteLossError, "at epoch 0, batch 3"
    snapshot = Snapshot(epoch=0, batch=2)
    with pytest.raises(expected, match=match) as info:
        model.fit(
            x,
            y,
            epochs=2,
            batch_size=32,
            shuffle=False,
            verbose=0,
            validation_data=(x[:32], y[:32]),
            callbacks=[snapshot],
        )
    assert "found in training epoch 0, batch 3; the step was not applied" in "".join(
        info.value.__notes__
    )
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3
    for got, want in zip(weights_of(model), snapshot.weights, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_check_finite_false_still_raises_bad_class_ids_after_their_batch(mode):
    """Without the guard nothing skips the step, and the note says so, except eagerly,
    where the check raises inside the step before anything is applied. The error names
    its batch although the steps may run ahead of the callbacks (no per-batch end hook)."""
    x, y = marked_data(n=128, bad_batch=10)
    y = y % 3
    y[40] = 7  # batch 1
    model, terms = class_id_model("label_smoothing", {})
    model.compile("adam", loss=terms, check_finite=False, **MODES[mode])
    begun = BatchesBegun()
    with pytest.raises(lossplug.InvalidTensorError, match="smallest offending id 7") as info:
        model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[begun])
    notes = "".join(info.value.__notes__)
    eager = mode == "eager" or keras.backend.backend() == "torch"  # torch: no jit mode
    if eager:
        assert "found in training epoch 0, batch 1; the step was not applied" in notes
    else:
        assert (
            "found in training epoch 0, batch 1; compile(check_finite=False) skips no step: "
            "that step was applied"
        ) in notes
    applied = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if eager:
        assert begun.begun == {0: [0, 1]} and applied == 1
    else:  # raised when a later batch began: exactly the next one where steps wait for
        assert begun.begun[0][:2] == [0, 1] and applied >= 2  # each other (TensorFlow)
        if keras.backend.backend() == "tensorflow":
            assert begun.begun == {0: [0, 1]} and applied == 2
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))


@pytest.mark.parametrize("check_finite", [True, False])
def test_fits_callback_keeps_the_steps_of_an_epoch_asynchronous(check_finite):
    """No per-batch end hook in LossModel's callbacks, guarded or not: Keras then dispatches
    the steps of an epoch without waiting for each (JAX, PyTorch)."""
    model = model_for(loss=["toy_ce"], check_finite=check_finite)
    callbacks = keras.callbacks.CallbackList([model._lossplug_callback()], model=model)
    assert callbacks._async_train == keras.src.backend.IS_THREAD_SAFE


class BatchesBegun(keras.callbacks.Callback):
    """The batches each epoch began; no per-batch end hook, so JAX and PyTorch keep
    dispatching the steps of an epoch without waiting for each."""

    def __init__(self):
        super().__init__()
        self.begun = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.begun[epoch] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.begun[self.epoch].append(batch)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_poll_during_the_epoch_stops_at_the_next_batch(mode, monkeypatch):
    """The guard read between batches (every batch here) sees the failed step of batch 2
    when batch 3 is about to start (LossModel's callback comes first, so no other callback
    sees batch 3 begin), also while the steps are dispatched asynchronously."""
    monkeypatch.setattr("lossplug.guard.POLL_SECONDS", 0.0)
    x, y = marked_data(n=256, bad_batch=2)
    model = model_for(loss=["toy_ce", lossplug.use("toy_nan_at", epoch=1)], **MODES[mode])
    begun = BatchesBegun()
    with pytest.raises(lossplug.NonFiniteLossError, match="at epoch 1, batch 2"):
        model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, callbacks=[begun])
    assert begun.begun == {0: list(range(8)), 1: [0, 1, 2]}
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8 + 2
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))


@pytest.mark.backends("jax")
def test_polls_of_a_finite_run_write_no_state_back(monkeypatch):
    """On JAX a poll peeks at the guard's flag in fit's state: writing the whole state back
    (and gathering it again for the next step) would cost every poll a pass over it."""
    monkeypatch.setattr("lossplug.guard.POLL_SECONDS", 0.0)
    x, y = marked_data(n=256, bad_batch=10)  # no marked batch
    model = model_for(loss=["toy_ce"], jit_compile=True)
    writes = []  # the syncs that had a state to write back (Keras' flag says which)
    keras_sync = model.jax_state_sync

    def counted_sync():
        writes.append(not model._jax_state_synced)
        keras_sync()

    monkeypatch.setattr(model, "jax_state_sync", counted_sync)
    begun = BatchesBegun()
    model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, callbacks=[begun])
    assert begun.begun == {0: list(range(8)), 1: list(range(8))}  # 14 polls
    assert sum(writes) == 2  # Keras' own, at the end of each epoch


def test_check_finite_false_trains_through():
    x, y = marked_data()
    model = model_for(loss=["toy_ce", "toy_nan_at"], check_finite=False)
    history = model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0).history
    assert np.isnan(history["toy_nan_at"][1])


def test_a_finite_run_is_untouched_by_the_guard():
    """The guard never skips a good step: the same weights as without it."""
    x, y = marked_data(bad_batch=10)  # no marked batch
    guarded = model_for(loss=["toy_ce"])
    unguarded = model_for(loss=["toy_ce"], check_finite=False)
    guarded.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    unguarded.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(weights_of(guarded), weights_of(unguarded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(keras.ops.convert_to_numpy(guarded.optimizer.iterations)) == 8


# --------------------------------------------------------------------- class ids
CLASS_ID_PLUGINS = {
    # plugin: (config, how the error names the bound, extra compile arguments)
    "center": ({"num_classes": 3}, "num_classes=3", {"expose": ["features"]}),
    "margin_softmax": ({"num_classes": 3}, "num_classes=3", {"expose": ["features"]}),
    "label_smoothing": ({}, "(the predictions have 3 classes)", {}),
    "focal": ({}, "(the predictions have 3 classes)", {}),
}


def class_id_model(plugin, config, expose=()):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    features = keras.layers.Dense(4, name="features")(inputs)
    logits = keras.layers.Dense(3, name="logits")(features)
    model = lossplug.LossModel(inputs, logits, expose=list(expose))
    terms = [lossplug.use(plugin, **config)]
    if plugin in ("center", "margin_softmax"):  # a term for the logits that reads no labels
        terms.insert(0, lossplug.use("toy_nan_at", epoch=99))
    return model, terms


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("plugin", sorted(CLASS_ID_PLUGINS))
@pytest.mark.parametrize(("labels", "lo", "hi"), [((7, 5, 1), 5, 7), ((-1, 0, 2), -1, -1)])
def test_bad_class_ids_raise_the_plugins_sentence_first(plugin, mode, labels, lo, hi):
    config, bound, extra = CLASS_ID_PLUGINS[plugin]
    model, terms = class_id_model(plugin, config, **extra)
    model.compile("adam", loss=terms, **MODES[mode])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = rng.integers(0, 3, 96).astype("int32")
    y[40:43] = labels  # batch 1 of 32
    messages = []
    for _ in range(2):  # the same error every time: no race between check and gather
        with pytest.raises(lossplug.InvalidTensorError) as info:
            model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
        messages.append(str(info.value))
        assert "found in training epoch 0, batch 1" in "".join(info.value.__notes__)
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"loss plugin {plugin!r}: y_true holds class ids outside [0, ")
    assert bound in messages[0]
    assert f"smallest offending id {lo}, largest {hi}" in messages[0]
    if plugin in ("center", "margin_softmax"):
        assert f"lossplug.use({plugin!r}, num_classes=<the number of classes>)" in messages[0]
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2  # batch 0, twice


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("check_finite", [True, False])
def test_bad_class_ids_in_evaluate_are_named(mode, check_finite):
    """Also where the compiled step keeps the failed check in the step guard (XLA on
    TensorFlow calls no host), guarded or not."""
    model, terms = class_id_model("center", {"num_classes": 3}, expose=["features"])
    model.compile("adam", loss=terms, check_finite=check_finite, **MODES[mode])
    x = np.zeros((16, 8), "float32")
    y = np.array([0, 1, 2, 1, 0, 1, 2, 0, 0, 1, 2, 9, 0, 1, 2, 0], "int32")
    with pytest.raises(
        lossplug.InvalidTensorError, match="smallest offending id 9, largest 9"
    ) as info:
        model.evaluate(x, y, batch_size=8, verbose=0)
    assert "found in evaluation, batch 1" in "".join(info.value.__notes__)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_custom_loop_raises_what_its_compiled_step_found(jit_compile):
    """XLA cannot call the host: the step keeps the check in the model's step guard, and
    raise_reported(model) rebuilds the error from it (tf.function alone calls the host)."""
    import tensorflow as tf

    model, terms = class_id_model("label_smoothing", {})
    model.compile("sgd", loss=terms)

    @tf.function(jit_compile=jit_compile)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=True), training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(gradients, model.trainable_variables)

    x = np.zeros((8, 8), "float32")
    good, bad = np.zeros(8, "int32"), np.array([0, 1, 2, 4, 0, 1, 2, 0], "int32")
    train_step(x, good)
    lossplug.runtime.raise_reported(model)  # nothing recorded
    train_step(x, bad)
    with pytest.raises(lossplug.InvalidTensorError, match="smallest offending id 4, largest 4"):
        lossplug.runtime.raise_reported(model)


# --------------------------------------------------------------------- logits vs probabilities
def output_with(activation):
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, activation=activation, name="scores")(inputs)
    return lossplug.LossModel(inputs, outputs)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_logits_plugin_on_a_normalised_output_warns(activation):
    model = output_with(activation)
    with pytest.warns(UserWarning) as caught:
        model.compile("adam", loss="label_smoothing")
    (message,) = [str(w.message) for w in caught if "logits" in str(w.message)]
    assert message == (
        f"loss plugin 'label_smoothing' (term 'label_smoothing') reads 'y_pred' as logits, but "
        f"'scores' is produced by a {activation} activation, so it holds probabilities: set "
        "lossplug.use('label_smoothing', from_logits=False)."
    )


def test_probabilities_plugin_on_a_linear_output_warns():
    model = output_with(None)
    with pytest.warns(UserWarning, match=r"reads 'y_pred' as probabilities.*from_logits=True"):
        model.compile("adam", loss=lossplug.use("focal", from_logits=False))


@pytest.mark.parametrize(
    ("activation", "term"),
    [(None, "label_smoothing"), ("softmax", lossplug.use("label_smoothing", from_logits=False))],
)
def test_matching_activation_does_not_warn(activation, term):
    model = output_with(activation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile("adam", loss=term)
    assert not [w for w in caught if "activation, so it holds" in str(w.message)]


# --------------------------------------------------------------------- hints
def test_single_loss_on_a_multi_output_model_says_attach_it_to_an_output():
    inputs = keras.Input((8,))
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(2, name="b")(inputs)
    model = lossplug.LossModel(inputs, [a, b])
    with pytest.raises(lossplug.MissingTensorError) as info:
        model.compile("adam", loss="label_smoothing")
    message = str(info.value)
    assert "several outputs" in message
    assert "compile(loss={output_name: 'label_smoothing'})" in message
    assert "targets=" not in message


def test_get_of_a_plugin_needing_more_than_y_says_use_loss_model():
    with pytest.raises(lossplug.MissingTensorError, match="Use lossplug.LossModel"):
        lossplug.get("triplet")


def test_an_error_inside_a_term_starts_with_the_term():
    """Sparse labels for a one-hot Keras loss: Keras' rank error, led by the plugin and term."""
    inputs = keras.Input((8,))
    model = lossplug.LossModel(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.compile("adam", loss=lossplug.use("bind", loss="categorical_crossentropy"))
    x, y = np.zeros((8, 8), "float32"), np.array([0, 1, 2, 0, 1, 2, 0, 1])
    with pytest.raises(
        ValueError, match=r"^loss plugin 'bind' \(term 'bind'\), in build_loss_graph: "
    ):
        model.fit(x, y, verbose=0)


def test_a_step_record_takes_the_finite_flag_or_the_loss():
    """Exactly one of ``finite=`` and ``loss=``; the flag of a loss is computed when read."""
    from lossplug.guard import StepRecord

    for kwargs in ({}, {"finite": keras.ops.convert_to_tensor(True), "loss": 1.0}):
        with pytest.raises(TypeError, match=r"StepRecord takes one of finite= and loss="):
            StepRecord(**kwargs)
    assert not bool(StepRecord(loss=keras.ops.convert_to_tensor(float("nan"))).finite)
    assert bool(StepRecord(loss=keras.ops.convert_to_tensor(2.0)).finite)

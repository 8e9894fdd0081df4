"""Subprocess body for the tf.distribute tests (TF devices must be set before first use).

Usage: python strategy_worker.py single|mirrored|multiworker OUT.npz
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import tensorflow as tf

mode, out_path = sys.argv[1], sys.argv[2]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

import keras  # noqa: E402
import lossplug  # noqa: E402
import toy_plugins as tp  # noqa: E402
from shared_terms import global_memory_term  # noqa: E402

for plugin in (tp.SparseCE(), tp.ToyCenter(), tp.BatchSpread(), tp.NanAt()):
    lossplug.register(plugin)

keras.config.disable_traceback_filtering()
GLOBAL_BATCH, STEPS = 32, 6
rng = np.random.default_rng(0)
x = rng.normal(size=(GLOBAL_BATCH * STEPS, 10)).astype("float32")
y = rng.integers(0, 3, GLOBAL_BATCH * STEPS)
sample_weight = rng.uniform(0.5, 1.5, GLOBAL_BATCH * STEPS).astype("float32")

if mode == "single":
    strategy = tf.distribute.get_strategy()
elif mode == "mirrored":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

steps_per_execution = int(os.environ.get("LOSSPLUG_STEPS_PER_EXECUTION", "1"))
if os.environ.get("LOSSPLUG_PLAIN_KERAS"):
    # Upstream canary: the same training with a plain keras.Sequential.
    with strategy.scope():
        plain = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)])
        plain.compile(
            "sgd", loss="sparse_categorical_crossentropy", steps_per_execution=steps_per_execution
        )
    plain.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
    print("DONE plain")
    sys.exit(0)

nan_batch = os.environ.get("LOSSPLUG_NAN_AT_BATCH")
if nan_batch is not None:
    # The finite guard under the strategy: a NaN term first appearing at batch k of
    # epoch 1 stops fit naming it; that step is applied on no replica.
    k = int(nan_batch)
    x[k * GLOBAL_BATCH : (k + 1) * GLOBAL_BATCH, 0] = 1000.0  # marked for toy_nan_at
    with strategy.scope():
        keras.utils.set_random_seed(7)
        inputs = keras.Input((10,))
        logits = keras.layers.Dense(3, name="logits")(inputs)
        model = lossplug.LossModel(inputs, logits)
        model.compile(keras.optimizers.Adam(1e-2), loss=["toy_ce", "toy_nan_at"])
    before: list[np.ndarray] = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == k - 1:
                before[:] = [keras.ops.convert_to_numpy(w).copy() for w in self.model.weights]

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    try:
        model.fit(dataset, epochs=2, verbose=0, callbacks=[Snapshot()])
    except lossplug.NonFiniteLossError as error:
        message = str(error)
    else:
        raise AssertionError("fit did not raise NonFiniteLossError")
    assert message.startswith("loss plugin 'toy_nan_at' (term 'toy_nan_at')"), message
    assert f"at epoch 1, batch {k}" in message, message
    after = [keras.ops.convert_to_numpy(w) for w in model.weights]
    for got, want in zip(after, before, strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == STEPS + k, iterations  # epoch 0 whole, epoch 1 up to batch k
    print("DONE nan", mode, strategy.num_replicas_in_sync)
    sys.exit(0)

variant = os.environ.get("LOSSPLUG_CENTER_PAPER")
if variant:
    # State updated by a plugin's own rule under the strategy: center(update="paper")
    # computes the rule from the global batch (extras.all_gather) on every replica; the
    # trainer applies it once per step. Variants: "memory" adds a cross-batch memory mined
    # over the global batch (its ring buffer is state written by the same mechanism);
    # "frozen" leaves the model no trainable weight (no optimizer step, the rule still
    # runs). Saves every weight, state included.
    frozen = variant == "frozen"
    with strategy.scope():
        keras.utils.set_random_seed(7)
        inputs = keras.Input((10,))
        layer = keras.layers.Dense(6, activation="tanh", name="features", trainable=not frozen)
        features = layer(inputs)
        logits = keras.layers.Dense(3, name="logits", trainable=not frozen)(features)
        model = lossplug.LossModel(inputs, logits, expose=["features"])
        center = lossplug.use("center", weight=0.5, num_classes=3, alpha=0.5, update="paper")
        terms = ["toy_ce", center]
        if variant == "memory":
            terms.append(global_memory_term())
        model.compile(keras.optimizers.Adam(1e-2), loss=terms)
    assert not frozen or not model.trainable_weights
    stateful = ["center", "cross_batch_memory"] if variant == "memory" else ["center"]
    states = [v for name in stateful for v in model.term_state(name).values()]
    dataset = tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=2, verbose=0).history
    values = [keras.ops.convert_to_numpy(v) for v in states]
    model.evaluate(dataset, verbose=0)  # applies no update
    for variable, value in zip(states, values, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
        copies = strategy.experimental_local_results(variable.value)
        assert len(copies) == strategy.num_replicas_in_sync, copies
        for copy in copies:  # every replica holds the same state
            np.testing.assert_array_equal(copy.numpy(), value)
    weights = {w.path.replace("/", "__"): keras.ops.convert_to_numpy(w) for w in model.weights}
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == (0 if frozen else 2 * STEPS), iterations
    logs = {f"log_{key}": np.array(value) for key, value in history.items()}
    centers = keras.ops.convert_to_numpy(model.term_state("center")["centers"])
    replicas = np.array(strategy.num_replicas_in_sync)
    np.savez(out_path, centers=centers, replicas=replicas, **weights, **logs)
    print("DONE center_paper", variant, mode, strategy.num_replicas_in_sync)
    sys.exit(0)

with strategy.scope():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((10,))
    features = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    logits = keras.layers.Dense(3, name="logits")(features)
    model = lossplug.LossModel(inputs, logits, expose=["features"])
    model.compile(
        keras.optimizers.SGD(0.1),
        loss=[
            "toy_ce",
            lossplug.use("toy_center", weight=0.5, num_classes=3),
            # Scalar and batch-coupled, mined over the global batch.
            lossplug.use("toy_spread", weight=0.3, global_batch=True),
        ],
        steps_per_execution=steps_per_execution,
    )

dataset = tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(GLOBAL_BATCH)
if mode == "multiworker":
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
history = model.fit(dataset, epochs=2, verbose=0, validation_data=dataset)
evaluated = model.evaluate(dataset, verbose=0, return_dict=True)
predictions = model.predict(x, batch_size=GLOBAL_BATCH, verbose=0)
# Each process saves its own copy and loads it back (outside the strategy).
saved = out_path[: -len(".npz")] + ".keras"
model.save(saved)
restored = keras.models.load_model(saved)
np.testing.assert_allclose(restored.predict(x, verbose=0), predictions, rtol=1e-5, atol=1e-6)
assert [w.path for w in restored.weights] == [w.path for w in model.weights]
# Every weight, incl. the plugin's centres.
for loaded, trained in zip(restored.weights, model.weights, strict=True):
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(trained)
    )
weights = {w.path.replace("/", "__"): keras.ops.convert_to_numpy(w) for w in model.weights}
np.savez(
    out_path,
    loss=np.array(history.history["loss"]),
    toy_ce=np.array(history.history["toy_ce"]),
    toy_center=np.array(history.history["toy_center"]),
    toy_spread=np.array(history.history["toy_spread"]),
    val_loss=np.array(history.history["val_loss"]),
    val_toy_center=np.array(history.history["val_toy_center"]),
    evaluated=np.array([evaluated[k] for k in sorted(evaluated)]),
    predictions=predictions,
    replicas=np.array(strategy.num_replicas_in_sync),
    **weights,
)
print("DONE", mode, strategy.num_replicas_in_sync)

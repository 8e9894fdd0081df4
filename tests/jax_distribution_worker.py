"""Subprocess body of the JAX ``keras.distribution`` tests (devices are fixed at JAX's start).

Usage: python jax_distribution_worker.py single|data_parallel OUT.npz [--local-mining]
       python jax_distribution_worker.py single|data_parallel OUT.npz --center-paper [--memory]

Trains a LossModel with a per-sample term, a stateful term and a scalar batch-coupled term
on the same global batches, on one CPU device or with ``keras.distribution.DataParallel``
over two, and saves the logs, evaluate(), predict() and every weight. With
``--center-paper`` the model trains ``center(update="paper")`` instead (state updated by
the plugin's own rule) and saves the centres and every weight; ``--memory`` adds a
``cross_batch_memory`` term mined over the global batch (a ring buffer of state).
"""

from __future__ import annotations

import os
import sys

mode, out_path = sys.argv[1], sys.argv[2]
local_mining = "--local-mining" in sys.argv
center_paper = "--center-paper" in sys.argv
with_memory = "--memory" in sys.argv  # with --center-paper
os.environ["KERAS_BACKEND"] = "jax"
if mode == "data_parallel":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import keras  # noqa: E402
import lossplug  # noqa: E402
import numpy as np  # noqa: E402
import toy_plugins as tp  # noqa: E402
from shared_terms import global_memory_term  # noqa: E402

for plugin in (tp.SparseCE(), tp.ToyCenter(), tp.BatchSpread()):
    lossplug.register(plugin)

GLOBAL_BATCH, STEPS = 32, 6
rng = np.random.default_rng(0)
x = rng.normal(size=(GLOBAL_BATCH * STEPS, 10)).astype("float32")
y = rng.integers(0, 3, GLOBAL_BATCH * STEPS).astype("int32")
sample_weight = rng.uniform(0.5, 1.5, GLOBAL_BATCH * STEPS).astype("float32")

if mode == "data_parallel":
    assert len(jax.devices()) == 2, jax.devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel())

if center_paper:
    # The rule sees the global batch (one SPMD program) and is applied once per step.
    keras.utils.set_random_seed(7)
    inputs = keras.Input((10,))
    features = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
    logits = keras.layers.Dense(3, name="logits")(features)
    model = lossplug.LossModel(inputs, logits, expose=["features"])
    center = lossplug.use("center", weight=0.5, num_classes=3, alpha=0.5, update="paper")
    terms = ["toy_ce", center]
    stateful = ["center"]
    if with_memory:
        terms.append(global_memory_term())
        stateful.append("cross_batch_memory")
    model.compile(keras.optimizers.Adam(1e-2), loss=terms)
    fit_args = {"batch_size": GLOBAL_BATCH, "shuffle": False, "verbose": 0}
    history = model.fit(x, y, sample_weight=sample_weight, epochs=2, **fit_args).history
    states = [v for name in stateful for v in model.term_state(name).values()]
    values = [keras.ops.convert_to_numpy(v) for v in states]
    model.evaluate(x, y, batch_size=GLOBAL_BATCH, verbose=0)  # applies no update
    for variable, value in zip(states, values, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == 2 * STEPS, iterations
    weights = {w.path.replace("/", "__"): keras.ops.convert_to_numpy(w) for w in model.weights}
    logs = {f"log_{key}": np.array(value) for key, value in history.items()}
    centers = keras.ops.convert_to_numpy(model.term_state("center")["centers"])
    devices = np.array(len(jax.devices()))
    np.savez(out_path, centers=centers, devices=devices, **weights, **logs)
    print("DONE center_paper", mode, len(jax.devices()))
    sys.exit(0)

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
        # Scalar and batch-coupled: over the global batch, or (local mining) each device's.
        lossplug.use("toy_spread", weight=0.3, global_batch=not local_mining),
    ],
)
history = model.fit(
    x,
    y,
    sample_weight=sample_weight,
    batch_size=GLOBAL_BATCH,
    epochs=2,
    shuffle=False,
    verbose=0,
    validation_data=(x, y),
)
evaluated = model.evaluate(x, y, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)
predictions = model.predict(x, batch_size=GLOBAL_BATCH, verbose=0)
weights = {w.path.replace("/", "__"): keras.ops.convert_to_numpy(w) for w in model.weights}
np.savez(
    out_path,
    **{key: np.array(values) for key, values in history.history.items()},
    evaluated=np.array([evaluated[k] for k in sorted(evaluated)]),
    predictions=predictions,
    devices=np.array(len(jax.devices())),
    **weights,
)
print("DONE", mode, len(jax.devices()))

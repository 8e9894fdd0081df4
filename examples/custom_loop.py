"""Custom training loops with a LossModel, on TensorFlow, JAX and PyTorch.

``fit`` does three things a custom loop must do itself: it moves the epoch
clock (``model.set_epoch``), resets the metrics at each epoch
(``model.reset_metrics``), and shows the running value of every term
(``model.get_metrics_result``). ``model.compute_loss`` does the rest: it
evaluates, weighs and logs every term and applies the plugins' own state
updates. Each ``train_*`` function below trains ``model`` (compiled with an
optimizer and lossplug terms) on ``x, y`` in batches, in order, and returns the
per-epoch logs, as ``fit(..., shuffle=False)`` would.

Unlike ``fit``, a custom loop has no finite guard: check the loss yourself if a
non-finite step must not be applied.

Run: KERAS_BACKEND=jax python examples/custom_loop.py [--smoke]
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np


# --8<-- [start:helpers]
def batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def progress_bar(model: lossplug.LossModel, steps: int, verbose: int) -> keras.utils.Progbar:
    """A progress bar showing the loss and every term; their values are running means."""
    names = [m.name for m in model.metrics]
    return keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=names)


def show(bar: keras.utils.Progbar, step: int, logs: dict) -> None:
    bar.update(step, values=[(name, float(value)) for name, value in logs.items()])


# --8<-- [end:helpers]


# --8<-- [start:tensorflow]
def train_tensorflow(model, x, y, *, epochs, batch_size, verbose=1):
    import tensorflow as tf

    optimizer = model.optimizer

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    history = []
    steps = math.ceil(len(x) / batch_size)
    for epoch in range(epochs):
        model.set_epoch(epoch)  # schedules and plugins see the epoch
        model.reset_metrics()  # every term's mean starts over
        bar = progress_bar(model, steps, verbose)
        for step, (xb, yb) in enumerate(batches(x, y, batch_size)):
            train_step(tf.constant(xb), tf.constant(yb))
            lossplug.runtime.raise_reported(model)  # bad data the compiled step found
            show(bar, step + 1, model.get_metrics_result())
        history.append(model.get_metrics_result())
    return history


# --8<-- [end:tensorflow]


# --8<-- [start:jax]
def train_jax(model, x, y, *, epochs, batch_size, verbose=1):
    import jax

    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, metrics, x, y):
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        loss, (_, non_trainable, metrics) = model.stateless_compute_loss(
            trainable, non_trainable, metrics, x=x, y=y, y_pred=y_pred, training=True
        )
        return loss, (non_trainable, metrics)  # plugin state updates are in non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def train_step(state, x, y):
        trainable, non_trainable, optimizer_state, metrics = state
        (loss, (non_trainable, metrics)), grads = grad_fn(trainable, non_trainable, metrics, x, y)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_state, metrics)

    def results(metrics):
        mapping = list(zip(model.metrics_variables, metrics, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            return model.get_metrics_result()

    groups = (
        model.trainable_variables,
        model.non_trainable_variables,
        optimizer.variables,
        model.metrics_variables,
    )
    history = []
    steps = math.ceil(len(x) / batch_size)
    for epoch in range(epochs):
        model.set_epoch(epoch)  # the clock is a non-trainable variable: set it, then read the state
        model.reset_metrics()
        state = tuple([v.value for v in group] for group in groups)
        bar = progress_bar(model, steps, verbose)
        for step, (xb, yb) in enumerate(batches(x, y, batch_size)):
            _, state = train_step(state, xb, yb)
            lossplug.runtime.raise_reported(model)  # bad data the compiled step found
            show(bar, step + 1, results(state[3]))
        for group, values in zip(groups, state, strict=True):  # write the state back to the model
            for variable, value in zip(group, values, strict=True):
                variable.assign(value)
        history.append(model.get_metrics_result())
    return history


# --8<-- [end:jax]


# --8<-- [start:torch]
def train_torch(model, x, y, *, epochs, batch_size, verbose=1):
    import torch

    optimizer = model.optimizer
    history = []
    steps = math.ceil(len(x) / batch_size)
    for epoch in range(epochs):
        model.set_epoch(epoch)
        model.reset_metrics()
        bar = progress_bar(model, steps, verbose)
        for step, (xb, yb) in enumerate(batches(x, y, batch_size)):
            xb, yb = keras.ops.convert_to_tensor(xb), keras.ops.convert_to_tensor(yb)
            y_pred = model(xb, training=True)
            loss = model.compute_loss(xb, yb, y_pred, training=True)
            model.zero_grad()
            loss.backward()
            variables = model.trainable_variables
            with torch.no_grad():
                optimizer.apply([v.value.grad for v in variables], variables)
            show(bar, step + 1, model.get_metrics_result())
        history.append(model.get_metrics_result())
    return history


# --8<-- [end:torch]

TRAIN = {"tensorflow": train_tensorflow, "jax": train_jax, "torch": train_torch}


def train(model, x, y, *, epochs, batch_size, verbose=1):
    """The custom loop of the current Keras backend."""
    return TRAIN[keras.backend.backend()](
        model, x, y, epochs=epochs, batch_size=batch_size, verbose=verbose
    )


def build_model() -> lossplug.LossModel:
    inputs = keras.Input((64,))
    features = keras.layers.Dense(16, activation="relu", name="features")(inputs)
    logits = keras.layers.Dense(10, name="logits")(features)
    model = lossplug.LossModel(inputs, logits, expose=["features"])
    warmup = lossplug.schedules.LinearRamp(0.0, 0.1, begin=0, stop=2)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=["label_smoothing", lossplug.use("center", weight=warmup, num_classes=10)],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short epoch")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    if args.smoke:
        x, y = x[:256], y[:256]
    keras.utils.set_random_seed(0)
    model = build_model()
    history = train(model, x, y, epochs=1 if args.smoke else 3, batch_size=64)
    for epoch, logs in enumerate(history):
        print(f"epoch {epoch}: " + ", ".join(f"{k}={float(v):.4f}" for k, v in logs.items()))
    centres = keras.ops.convert_to_numpy(model.term_state("center")["centers"])
    print(f"backend {keras.backend.backend()}: centre norms {np.linalg.norm(centres, axis=1)[:3]}")


if __name__ == "__main__":
    main()

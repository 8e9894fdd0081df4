"""Median train-step time of a LossModel against a hand-written Keras 3 equivalent.

Both models compute the same thing: sparse cross-entropy on the logits plus
0.2 * center loss on an intermediate layer with trainable centres. The
hand-written one is the best Keras 3 recipe: a functional model whose
``compute_loss`` override reads the intermediate layer from a second output.
Both run in one process and take turns step by step, so the ratio is robust to
machine noise; the quartiles of the per-round ratios show what noise remains.

    python benchmarks/bench_train_step.py            # full run (~3 minutes)
    python benchmarks/bench_train_step.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import keras
import lossplug
import numpy as np
import tensorflow as tf
import toy_plugins
from keras import ops

D_IN, D_FEAT, CLASSES, BATCH = 256, 128, 100, 256


class HandWritten(keras.Model):
    """Functional model with a features output; compute_loss adds CE + 0.2 * center."""

    def __init__(self, inputs, outputs, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self.centers = self.add_weight(shape=(CLASSES, D_FEAT), initializer="zeros", name="centers")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.center_tracker = keras.metrics.Mean(name="center")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        logits, features = y_pred
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        diff = features - ops.take(self.centers, ops.cast(y, "int32"), axis=0)
        center = 0.2 * ops.mean(ops.sum(diff * diff, axis=-1))
        self.ce_tracker.update_state(ce)
        self.center_tracker.update_state(center)
        return ce + center


def build(kind: str, jit: bool):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D_IN,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    features = keras.layers.Dense(D_FEAT, activation="relu", name="features")(h)
    logits = keras.layers.Dense(CLASSES, name="logits")(features)
    if kind == "lossplug":
        model = lossplug.LossModel(inputs, logits, expose=["features"])
        model.compile(
            "adam",
            loss=[
                lossplug.use("toy_ce", display_name="ce"),
                lossplug.use(
                    "toy_center",
                    weight=0.2,
                    num_classes=CLASSES,
                    with_metric=False,
                    display_name="center",
                ),
            ],
            jit_compile=jit,
        )
    else:
        model = HandWritten(inputs, [logits, features])
        model.compile("adam", jit_compile=jit)
    return model


def warm_up(model, x, y, steps: int = 5) -> None:
    """Trace the train function and run a few steps."""
    for i in range(steps):
        model.train_on_batch(x[i % len(x)], y[i % len(y)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 20)
    steps = 20 if args.quick else 100
    lossplug.register(toy_plugins.SparseCE())
    lossplug.register(toy_plugins.ToyCenter())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, BATCH, D_IN)).astype("float32")
    y = rng.integers(0, CLASSES, size=(8, BATCH))
    print(
        f"tensorflow {tf.__version__}, keras {keras.__version__}, batch {BATCH}, "
        f"{rounds} rounds x {steps} steps, medians in ms"
    )
    print(
        f"{'jit_compile':>12} {'hand-written':>13} {'LossModel':>10} {'ratio':>7}"
        "   [quartiles of per-round ratios]"
    )
    for jit in (False, True):
        models = {kind: build(kind, jit) for kind in ("hand", "lossplug")}
        for model in models.values():
            warm_up(model, x, y)
        samples = {kind: [] for kind in models}
        order = list(models)
        for round_ in range(rounds):
            # Steps alternate between the two models (in alternating order), so both
            # share the machine's drift and noise at the scale of milliseconds.
            for step in range(steps):
                for kind in order:
                    batch = (round_ * steps + step) % len(x)
                    start = time.perf_counter()
                    models[kind].train_on_batch(x[batch], y[batch])
                    samples[kind].append(time.perf_counter() - start)
                order.reverse()
        hand = statistics.median(samples["hand"]) * 1e3
        ours = statistics.median(samples["lossplug"]) * 1e3
        # Spread: the ratio of medians within each round.
        per_round = sorted(
            statistics.median(samples["lossplug"][r * steps : (r + 1) * steps])
            / statistics.median(samples["hand"][r * steps : (r + 1) * steps])
            for r in range(rounds)
        )
        low, high = per_round[len(per_round) // 4], per_round[(3 * len(per_round)) // 4]
        print(f"{jit!s:>12} {hand:13.3f} {ours:10.3f} {ours / hand:7.3f}   [{low:.3f}, {high:.3f}]")


if __name__ == "__main__":
    main()

"""How fast the ``center`` plugin's centres move for alpha = 0.1 against alpha = 1, under Adam.

The same model (Dense(16, relu) features, 10 logits; cross-entropy plus 0.2 * center
loss; Adam(0.01), batch 32) is trained from the same initial weights on the same
synthetic data (10 Gaussian classes in 64 dimensions) for ``--steps`` steps, once per
(update rule, alpha). After every step the centres C_t are read; a *centre step* is the
Frobenius norm ||C_{t+1} - C_t||. The table gives the first step, the mean step over
the run, and for each rule the ratio alpha = 0.1 / alpha = 1.0 of both:

- ``gradient``: the optimizer trains the centres, alpha scales their gradient. Adam
  divides each gradient by its running magnitude, so a constant factor cancels and
  the ratio is close to 1 whatever alpha is.
- ``paper``: Wen et al.'s rule c_j -= alpha * sum_{y_i=j} (c_j - x_i) / (1 + n_j), applied
  once per step outside the optimizer; the first step is exactly alpha times as long.

    python benchmarks/bench_center_rate.py              # 64 steps (~40 s on 2 CPUs)
    python benchmarks/bench_center_rate.py --steps 4    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np

CLASSES, D_IN, D_FEAT, BATCH, WEIGHT, LR = 10, 64, 16, 32, 0.2, 0.01
ALPHAS = (0.1, 1.0)
RULES = ("gradient", "paper")


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(CLASSES, D_IN)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    x = means[y] + 0.5 * rng.normal(size=(n, D_IN)).astype("float32")
    return x.astype("float32"), y.astype("int32")


class CentreTrace(keras.callbacks.Callback):
    """The centres after every training step."""

    def __init__(self, state: object) -> None:
        super().__init__()
        self.state = state
        self.trace = [self._read()]

    def _read(self) -> np.ndarray:
        return np.array(keras.ops.convert_to_numpy(self.state), dtype=np.float64)

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.trace.append(self._read())


def centre_steps(update: str, alpha: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """||C_{t+1} - C_t|| for every step of one run."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D_IN,))
    features = keras.layers.Dense(D_FEAT, activation="relu", name="features")(inputs)
    logits = keras.layers.Dense(CLASSES, name="logits")(features)
    model = lossplug.LossModel(inputs, logits, expose=["features"])
    center = lossplug.use("center", weight=WEIGHT, num_classes=CLASSES, alpha=alpha, update=update)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(LR), loss=[ce, center])
    trace = CentreTrace(model.term_state("center")["centers"])
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[trace])
    moves = np.diff(np.stack(trace.trace), axis=0)
    return np.linalg.norm(moves.reshape(len(moves), -1), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="training steps per run")
    args = parser.parse_args()
    x, y = make_data(args.steps * BATCH)
    results = {(u, a): centre_steps(u, a, x, y) for u in RULES for a in ALPHAS}

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {now}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, Keras {keras.__version__} "
        f"({keras.backend.backend()} backend)"
    )
    print(
        f"setup: {args.steps} steps of batch {BATCH}, Adam({LR}), center weight {WEIGHT}, "
        f"{CLASSES} classes, {D_FEAT} features"
    )
    print()
    print("| update | alpha | first step | mean step | ratio 0.1/1.0 first | ratio 0.1/1.0 mean |")
    print("|---|---|---|---|---|---|")
    for update in RULES:
        slow, fast = results[(update, ALPHAS[0])], results[(update, ALPHAS[1])]
        for alpha in ALPHAS:
            steps = results[(update, alpha)]
            ratios = ("", "")
            if alpha == ALPHAS[0]:
                ratios = (f"{slow[0] / fast[0]:.3f}", f"{slow.mean() / fast.mean():.3f}")
            print(
                f"| {update} | {alpha} | {steps[0]:.4f} | {steps.mean():.4f} | "
                f"{ratios[0]} | {ratios[1]} |"
            )


if __name__ == "__main__":
    main()

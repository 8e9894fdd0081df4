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

Each run (``--runs``, default 3) uses another seed for the data and the initial
weights; the table gives the median over the runs and, for the ratios, their range.

    python benchmarks/bench_center_rate.py --write      # 64 steps, 3 runs (~2 minutes on 2 CPUs)
    python benchmarks/bench_center_rate.py --quick      # 16 steps, 2 runs

Without ``--write`` (docs/generated/center_rate.md) or ``--out DIR`` the table is only
printed. The model runs on the Keras backend of ``KERAS_BACKEND`` (default TensorFlow).
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import benchlib
import keras
import lossplug
import numpy as np

CLASSES, D_IN, D_FEAT, BATCH, WEIGHT, LR = 10, 64, 16, 32, 0.2, 0.01
ALPHAS = (0.1, 1.0)
RULES = ("gradient", "paper")


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
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


def centre_steps(
    update: str, alpha: float, x: np.ndarray, y: np.ndarray, seed: int = 0
) -> np.ndarray:
    """||C_{t+1} - C_t|| for every step of one run."""
    keras.utils.set_random_seed(seed)
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
    parser.add_argument("--quick", action="store_true", help="16 steps, 2 runs")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (64)")
    parser.add_argument("--runs", type=int, default=None, help="seeds (default 3; quick 2)")
    benchlib.add_output_arguments(parser)
    args = parser.parse_args()
    report = benchlib.Report(args, benchlib.run_kind(parser, args, ("steps", "runs")))
    steps = args.steps or (16 if args.quick else 64)
    runs = args.runs or (2 if args.quick else 3)
    results = {(u, a): [] for u in RULES for a in ALPHAS}
    for seed in range(runs):
        x, y = make_data(steps * BATCH, seed)
        for update, alpha in results:
            results[update, alpha].append(centre_steps(update, alpha, x, y, seed))

    rows = []
    for update in RULES:
        slow, fast = results[(update, ALPHAS[0])], results[(update, ALPHAS[1])]
        for alpha in ALPHAS:
            per_run = results[(update, alpha)]
            ratios = ["", ""]
            if alpha == ALPHAS[0]:
                first = [s[0] / f[0] for s, f in zip(slow, fast, strict=True)]
                mean = [s.mean() / f.mean() for s, f in zip(slow, fast, strict=True)]
                ratios = [benchlib.fmt_ratio(r, 3, unit="") for r in (first, mean)]
            rows.append(
                [
                    update,
                    alpha,
                    f"{statistics.median(r[0] for r in per_run):.4f}",
                    f"{statistics.median(r.mean() for r in per_run):.4f}",
                    *ratios,
                ]
            )
    report.add(
        "center_rate",
        f"{steps} steps of batch {BATCH}, Adam({LR}), center weight {WEIGHT}, {CLASSES} "
        f"classes, {D_FEAT} features, Keras backend {keras.backend.backend()}; {runs} runs "
        "(seeds). Centre steps: median over the runs; ratios: median over the runs (range in "
        "brackets).",
        benchlib.table(
            [
                "update",
                "alpha",
                "first step",
                "mean step",
                "ratio 0.1/1.0 first",
                "ratio 0.1/1.0 mean",
            ],
            "lrrrrr",
            rows,
        ),
    )
    report.finish()


if __name__ == "__main__":
    main()

"""Train-step time of a LossModel against a hand-written Keras 3 equivalent, per backend.

Both models compute the same thing: sparse cross-entropy on the logits plus
0.2 * center loss on an intermediate layer with trainable centres. The
hand-written one is the best Keras 3 recipe: a functional model whose
``compute_loss`` override reads the intermediate layer from a second output.

The Keras backend is fixed per process, so each backend of ``--backends`` runs in a
fresh process (``KERAS_BACKEND`` set) that builds both models for each ``jit_compile``
setting and times them there; this process collects the results and writes one table,
a row per backend x jit_compile. Within a process the two models take turns step by
step (in alternating order), so both share the machine's drift and noise: each round
gives the ratio of the two median step times, and the table reports the median ratio
over the rounds with its quartiles and range. A round runs ``--steps`` steps of each
model, fewer where a step is slow (JAX without jit runs op by op): at most about
``--round-seconds`` per model and round, at least 5 steps.

    python benchmarks/bench_train_step.py --write            # full run (~4 minutes)
    python benchmarks/bench_train_step.py --quick            # a smoke run (~1 minute)
    python benchmarks/bench_train_step.py --backends tensorflow,jax,torch --write

Without ``--write`` (docs/generated/train_step.md) or ``--out DIR`` the table is only
printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import benchlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")

D_IN, D_FEAT, CLASSES, BATCH = 256, 128, 100, 256
JIT = (False, True)


# ----------------------------------------------------------------------------- the models
def build(kind: str, jit: bool):
    """The hand-written model ("hand") or the LossModel ("lossplug"), compiled."""
    import keras
    import lossplug
    from keras import ops

    class HandWritten(keras.Model):
        """Functional model with a features output; compute_loss adds CE + 0.2 * center."""

        def __init__(self, inputs, outputs, **kwargs):
            super().__init__(inputs, outputs, **kwargs)
            self.centers = self.add_weight(
                shape=(CLASSES, D_FEAT), initializer="zeros", name="centers"
            )
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


def time_models(jit: bool, rounds: int, max_steps: int, round_seconds: float) -> dict:
    """Per-round median step times of both models, interleaved step by step."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, BATCH, D_IN)).astype("float32")
    y = rng.integers(0, CLASSES, size=(8, BATCH))
    models = {kind: build(kind, jit) for kind in ("hand", "lossplug")}
    estimate = 0.0
    for model in models.values():
        for i in range(5):  # traces the train function, then warms up
            model.train_on_batch(x[i % len(x)], y[i % len(y)])
        start = time.perf_counter()
        for i in range(3):
            model.train_on_batch(x[i % len(x)], y[i % len(y)])
        estimate = max(estimate, (time.perf_counter() - start) / 3)
    steps = max(5, min(max_steps, int(round_seconds / estimate)))
    samples: dict[str, list[list[float]]] = {kind: [] for kind in models}
    order = list(models)
    for round_ in range(rounds):
        for kind in models:
            samples[kind].append([])
        for step in range(steps):
            for kind in order:
                batch = (round_ * steps + step) % len(x)
                start = time.perf_counter()
                models[kind].train_on_batch(x[batch], y[batch])
                samples[kind][-1].append(time.perf_counter() - start)
            order.reverse()
    return {
        "steps": steps,
        "hand_ms": 1e3 * statistics.median(t for r in samples["hand"] for t in r),
        "lossplug_ms": 1e3 * statistics.median(t for r in samples["lossplug"] for t in r),
        "round_ratios": [
            statistics.median(ours) / statistics.median(hand)
            for ours, hand in zip(samples["lossplug"], samples["hand"], strict=True)
        ],
    }


def worker(spec: dict) -> dict:
    """In a fresh process of one Keras backend: both jit_compile settings."""
    sys.path.insert(0, TESTS)
    import keras
    import lossplug
    import toy_plugins

    lossplug.register(toy_plugins.SparseCE())
    lossplug.register(toy_plugins.ToyCenter())
    results = {}
    for jit in spec["jit"]:
        try:
            results[str(jit)] = time_models(
                jit, spec["rounds"], spec["steps"], spec["round_seconds"]
            )
        except Exception as error:  # one setting failing (torch.compile) keeps the other
            results[str(jit)] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    return {"backend": keras.backend.backend(), "results": results}


# ----------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 rounds x 20 steps")
    parser.add_argument(
        "--runs", "--rounds", type=int, default=None, help="rounds (default 20; quick 4)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per round (default 100; quick 20)"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=1.0,
        help="fewer steps per round where a step is slow: about this long per model",
    )
    parser.add_argument(
        "--backends",
        default="tensorflow,jax",
        help="comma-separated Keras backends, each in its own process (default tensorflow,jax)",
    )
    parser.add_argument(
        "--jit", default="false,true", help="jit_compile settings (default false,true)"
    )
    benchlib.add_output_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if benchlib.worker_main({"train_step": worker}):
        return
    kind = benchlib.run_kind(parser, args, ("runs", "steps", "round_seconds", "jit"))
    report = benchlib.Report(args, kind)
    rounds = args.runs or (4 if args.quick else 20)
    steps = args.steps or (20 if args.quick else 100)
    jits = [{"false": False, "true": True}[j.strip().lower()] for j in args.jit.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = []
    for backend in backends:
        if backend == "torch":
            report.used.add("torch")
        spec = {
            "task": "train_step",
            "jit": jits,
            "rounds": rounds,
            "steps": steps,
            "round_seconds": args.round_seconds,
        }
        started = time.perf_counter()
        result = benchlib.run_worker(__file__, spec, backend=backend, timeout=3600)
        print(
            f"  {backend}: {time.perf_counter() - started:.0f} s: {result}",
            file=sys.stderr,
            flush=True,
        )
        for jit in jits:
            cell = result if isinstance(result, str) else result["results"][str(jit)]
            if isinstance(cell, str):
                rows.append([backend, jit, cell, "-", "-", "-", "-", "-"])
                continue
            ratios = cell["round_ratios"]
            q1, q3 = benchlib.quartiles(ratios)
            rows.append(
                [
                    backend,
                    jit,
                    f"{rounds} x {cell['steps']}",
                    f"{cell['hand_ms']:.3f}",
                    f"{cell['lossplug_ms']:.3f}",
                    f"{statistics.median(ratios):.3f}",
                    benchlib.fmt_range(q1, q3),
                    benchlib.fmt_range(min(ratios), max(ratios)),
                ]
            )
    report.add(
        "train_step",
        f"Batch {BATCH}, Adam; step times are medians over all timed steps (ms); the ratio "
        "(LossModel / hand-written) is the median over the rounds of each round's ratio of "
        "median step times, with the quartiles and the range of those per-round ratios.",
        benchlib.table(
            [
                "backend",
                "jit_compile",
                "rounds x steps",
                "hand-written (ms)",
                "LossModel (ms)",
                "ratio",
                "per-round quartiles",
                "per-round range",
            ],
            "llrrrrrr",
            rows,
        ),
    )
    report.finish()


if __name__ == "__main__":
    main()

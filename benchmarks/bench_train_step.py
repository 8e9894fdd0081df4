"""Train-step time of a LossModel against a hand-written Keras 3 equivalent, per backend.

The models compute the same thing: sparse cross-entropy on the logits plus
0.2 * center loss on an intermediate layer with trainable centres. The
hand-written one is the best Keras 3 recipe: a functional model whose
``compute_loss`` override reads the intermediate layer from a second output. The
LossModel is timed twice: as compiled by default (with the finite guard) and with
``compile(check_finite=False)``, which shows the guard's share of the difference.

The Keras backend is fixed per process, so each backend of ``--backends`` runs in a
fresh process (``KERAS_BACKEND`` set) that builds the models for each ``jit_compile``
setting and times them there; this process collects the results and writes one table,
a row per backend x jit_compile. Within a process the models take turns (in
alternating order), so they share the machine's drift and noise: each round gives the
ratio of each LossModel's time to the hand-written model's, and the table reports the
median ratio over the rounds with its quartiles (and range).

Two ways to time a step (``--mode``):

- ``fit`` (the default, what users run): one round is one ``model.fit`` epoch of
  ``--steps`` batches per model; the step time is the epoch's time over its steps. Keras
  dispatches steps asynchronously here (on JAX and PyTorch when no callback needs every
  batch), so this is the throughput a user sees.
- ``train_on_batch``: every step is a separate call that waits for its result; a round
  is ``--steps`` such calls per model, and its ratio is that of the median step times.
  This adds Keras' per-call cost (it grows with the number of variables) to both models.

A round runs fewer steps where a step is slow (JAX without jit runs op by op): at most
about ``--round-seconds`` per model and round, at least 5 steps. Each ``fit`` call also
has a fixed cost (its iterator, callbacks, metric resets, the state written back at the
epoch's end: a few milliseconds, more for a model with more variables and metrics), which
a round of a few dozen steps would count as a share of every step; rounds of about 1.5 s
keep it a small one, as in a user's epochs of hundreds of steps.

    python benchmarks/bench_train_step.py --write            # full run (~8 minutes)
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
#: the models timed: the hand-written one, the LossModel as compiled by default, and the
#: LossModel with ``compile(check_finite=False)`` (no finite guard), which shows the guard's
#: share of the difference
KINDS = ("hand", "lossplug", "unguarded")


def build(kind: str, jit: bool):
    """One of :data:`KINDS`, compiled."""
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
    if kind in ("lossplug", "unguarded"):
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
            check_finite=kind == "lossplug",
        )
    else:
        model = HandWritten(inputs, [logits, features])
        model.compile("adam", jit_compile=jit)
    return model


def time_models(jit: bool, mode: str, rounds: int, max_steps: int, round_seconds: float) -> dict:
    """Per-round step times of both models, taking turns, in ``mode`` (fit or train_on_batch)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, BATCH, D_IN)).astype("float32")
    y = rng.integers(0, CLASSES, size=(8, BATCH))
    models = {kind: build(kind, jit) for kind in KINDS}
    estimate = 0.0
    for model in models.values():
        for i in range(5):  # traces the train function, then warms up
            model.train_on_batch(x[i % len(x)], y[i % len(y)])
        start = time.perf_counter()
        for i in range(3):
            model.train_on_batch(x[i % len(x)], y[i % len(y)])
        estimate = max(estimate, (time.perf_counter() - start) / 3)
    steps = max(5, min(max_steps, int(round_seconds / estimate)))
    if mode == "fit":
        samples = _time_fit(models, x, y, rounds, steps)
    else:
        samples = _time_train_on_batch(models, x, y, rounds, steps)
    result: dict = {"steps": steps}
    for kind in KINDS:
        result[f"{kind}_ms"] = 1e3 * statistics.median(t for r in samples[kind] for t in r)
        result[f"{kind}_best_ms"] = 1e3 * min(statistics.median(r) for r in samples[kind])
        if kind != "hand":
            result[f"{kind}_ratios"] = [
                statistics.median(ours) / statistics.median(hand)
                for ours, hand in zip(samples[kind], samples["hand"], strict=True)
            ]
    return result


def _time_train_on_batch(models: dict, x, y, rounds: int, steps: int) -> dict:
    """Per round and model, the time of each of ``steps`` synchronous calls."""
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
    return samples


def _time_fit(models: dict, x, y, rounds: int, steps: int) -> dict:
    """Per round and model, one ``fit`` epoch of ``steps`` batches: its time per step."""
    import numpy as np

    repeats = -(-steps // len(x))
    xs = np.concatenate([x] * repeats)[:steps].reshape(steps * BATCH, D_IN)
    ys = np.concatenate([y] * repeats)[:steps].reshape(steps * BATCH)

    def epoch(model) -> None:
        model.fit(xs, ys, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    for model in models.values():
        epoch(model)  # the first fit builds its iterator and callbacks once
    samples: dict[str, list[list[float]]] = {kind: [] for kind in models}
    order = list(models)
    for _ in range(rounds):
        for kind in order:
            start = time.perf_counter()
            epoch(models[kind])
            samples[kind].append([(time.perf_counter() - start) / steps])
        order.reverse()
    return samples


def xla_cost(model) -> dict:
    """XLA's cost analysis of one compiled JAX train step: flops and bytes accessed.

    Independent of the machine's load: what the step asks of the CPU, counted by the
    compiler (the step is lowered as Keras' trainer runs it, on the model's current state).
    """
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, D_IN)).astype("float32")
    y = rng.integers(0, CLASSES, size=(BATCH,))
    model.train_on_batch(x, y)  # builds the optimizer and metrics variables
    state = tuple(
        [v.value for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    # donated, as Keras' JAX trainer compiles it: the new state may reuse the old buffers
    compiled = jax.jit(model.train_step, donate_argnums=0).lower(state, (x, y)).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {"flops": float(analysis["flops"]), "bytes": float(analysis["bytes accessed"])}


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
                jit, spec["mode"], spec["rounds"], spec["steps"], spec["round_seconds"]
            )
        except Exception as error:  # one setting failing (torch.compile) keeps the other
            results[str(jit)] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    costs = None
    if keras.backend.backend() == "jax":
        costs = {kind: xla_cost(build(kind, True)) for kind in KINDS}
    return {"backend": keras.backend.backend(), "results": results, "xla_cost": costs}


# ----------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 rounds x 20 steps")
    parser.add_argument(
        "--runs", "--rounds", type=int, default=None, help="rounds (default 20; quick 4)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per round (default 400; quick 20)"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=1.5,
        help="fewer steps per round where a step is slow: about this long per model "
        "(long enough that fit's fixed cost per call is a small share of a round)",
    )
    parser.add_argument(
        "--backends",
        default="tensorflow,jax",
        help="comma-separated Keras backends, each in its own process (default tensorflow,jax)",
    )
    parser.add_argument(
        "--jit", default="false,true", help="jit_compile settings (default false,true)"
    )
    parser.add_argument(
        "--mode",
        choices=("fit", "train_on_batch"),
        default="fit",
        help="time fit epochs (default) or synchronous train_on_batch calls",
    )
    benchlib.add_output_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if benchlib.worker_main({"train_step": worker}):
        return
    kind = benchlib.run_kind(parser, args, ("runs", "steps", "round_seconds", "jit", "mode"))
    report = benchlib.Report(args, kind)
    rounds = args.runs or (4 if args.quick else 20)
    steps = args.steps or (20 if args.quick else 400)
    jits = [{"false": False, "true": True}[j.strip().lower()] for j in args.jit.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = []
    cost_rows = []
    for backend in backends:
        if backend == "torch":
            report.used.add("torch")
        spec = {
            "task": "train_step",
            "mode": args.mode,
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
        costs = None if isinstance(result, str) else result.get("xla_cost")
        if costs:
            hand = costs["hand"]
            row = [backend]
            for measure, unit, digits in (("flops", 1e6, 1), ("bytes", 1e6, 2)):
                row.append(f"{hand[measure] / unit:.{digits}f}")
                for kind in KINDS[1:]:
                    ours = costs[kind][measure]
                    row += [f"{ours / unit:.{digits}f}", f"{ours / hand[measure]:.3f}"]
            cost_rows.append(row)
        for jit in jits:
            cell = result if isinstance(result, str) else result["results"][str(jit)]
            if isinstance(cell, str):
                rows.append([backend, jit, cell, *["-"] * 10])
                continue
            ratios = cell["lossplug_ratios"]
            unguarded = cell["unguarded_ratios"]
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
                    f"{cell['lossplug_best_ms'] / cell['hand_best_ms']:.3f}",
                    f"{cell['unguarded_ms']:.3f}",
                    f"{statistics.median(unguarded):.3f}",
                    benchlib.fmt_range(*benchlib.quartiles(unguarded)),
                    f"{cell['unguarded_best_ms'] / cell['hand_best_ms']:.3f}",
                ]
            )
    if args.mode == "fit":
        timing = (
            "each round is one `fit` epoch per model; step times are the medians over the "
            "rounds of epoch time / steps (ms), and the ratio (LossModel / hand-written) is "
            "the median over the rounds of each round's ratio of epoch times"
        )
    else:
        timing = (
            "each step is a synchronous `train_on_batch` call; step times are medians over all "
            "timed steps (ms), and the ratio (LossModel / hand-written) is the median over the "
            "rounds of each round's ratio of median step times"
        )
    report.add(
        "train_step",
        f"Batch {BATCH}, Adam, mode `{args.mode}`: {timing}; the quartiles and the range are "
        "those of the per-round ratios; the fastest rounds' ratio is that of each model's "
        "fastest round (the least disturbed by other load on a shared machine). *LossModel* is "
        "compiled as by default (with the finite guard), *unguarded* with "
        "`check_finite=False`; all ratios are to the hand-written model in the same rounds.",
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
                "fastest rounds' ratio",
                "unguarded (ms)",
                "unguarded ratio",
                "its quartiles",
                "its fastest rounds' ratio",
            ],
            "llrrrrrrrrrrr",
            rows,
        ),
    )
    if cost_rows:
        report.add(
            "train_step",
            "XLA's own count of the work in one compiled JAX train step (the same step as "
            "`jit_compile=True`; independent of the machine's load):",
            benchlib.table(
                [
                    "backend",
                    "hand-written MFLOP",
                    "LossModel MFLOP",
                    "ratio",
                    "unguarded MFLOP",
                    "ratio",
                    "hand-written MB accessed",
                    "LossModel MB accessed",
                    "ratio",
                    "unguarded MB accessed",
                    "ratio",
                ],
                "lrrrrrrrrrr",
                cost_rows,
            ),
        )
    report.finish()


if __name__ == "__main__":
    main()

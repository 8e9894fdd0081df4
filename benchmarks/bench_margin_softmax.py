"""ArcFace: the ``margin_softmax`` plugin against the layer a user would write.

For C classes (batch 256, dim 128, s = 64, m = 0.5), one forward + backward pass
(per-sample losses, mean, gradients with respect to the features and the
class weights W, in a ``tf.function``) is timed and its memory measured, for

- ``plugin``: ``lossplug_margin_softmax.margin_softmax_loss`` (target-only margin:
  one (B, C) cosine matrix and the logits, O(B dim) for the angle);
- ``naive``: the usual ArcMarginProduct port: cosines clipped to [-1 + 1e-7, 1 - 1e-7],
  sine = sqrt(1 - cos^2), cos(theta + m) with the threshold fallback for the whole
  (B, C) matrix, a one-hot blend, and ``tf.nn.softmax_cross_entropy_with_logits``.

Time is the median of the repeats, both implementations interleaved in one
process so that the ratio is robust to other load on the machine. Memory is
measured in a fresh subprocess per (implementation, C) (TensorFlow's CPU
allocator keeps memory it once used): after a warm-up with 8 samples (which
traces the function) the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), one pass runs, and the reported value is the peak
RSS during the pass minus the RSS before it (Linux only). W (C x 128 float32)
exists before; its gradient (the same size) is part of both working sets.

    python benchmarks/bench_margin_softmax.py --quick   # C = 1,000 and 10,000 (~40 s)
    python benchmarks/bench_margin_softmax.py           # C = 1,000 ... 100,000 (~1-2 minutes)

``--sample-rate R`` adds ``sampled``: the plugin with ``sample_rate=R`` (Partial FC:
the batch's classes plus random others, max(#positives, ceil(R C)) classes, a gather of
their columns of W; its logits are (B, R C)).

``--train scale`` and ``--train compare`` time real ``fit`` steps of a
``lossplug.LossModel`` (an MLP encoder, 64 -> 256 -> D, then ``margin_softmax``
ArcFace), each configuration in a fresh process (the Keras backend of
``KERAS_BACKEND``): the median time of a training step (forward, backward and
the optimizer's update of the encoder and of W; after one warm-up step that traces
it) and two memory figures: the peak RSS growth from the compiled model (W and the
data exist) to the end of training (W's gradient, the optimizer's slots, the
step's temporaries) and the peak RSS of the whole process.

- ``scale``: 1,000,000 classes, D = 512, batch 256, the sampled loss (rate
  ``--sample-rate``, default 0.1); ``--with-full`` adds the full loss.
- ``compare``: 100,000 classes, D = 512, batch 256, full and sampled, trained on a
  synthetic identity task generated here (identity centres in a 32-dimensional
  latent space, a fixed random map to 64 inputs, Gaussian noise;
  ``--samples-per-class`` training samples per identity), then the accuracy of
  the nearest class weight on fresh samples of ``--eval-samples`` identities
  (and of the nearest true centre: the task's ceiling).

    python benchmarks/bench_margin_softmax.py --classes 100000 --sample-rate 0.1
    python benchmarks/bench_margin_softmax.py --train scale --sample-rate 0.1
    python benchmarks/bench_margin_softmax.py --train compare --sample-rate 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from peak_memory import peak_rss, reset_peak_rss

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH, DIM, SCALE, MARGIN = 256, 128, 64.0, 0.5


def naive_loss(tf, features, labels, weights):
    x = tf.math.l2_normalize(features, axis=1)
    w = tf.math.l2_normalize(weights, axis=0)
    cosine = tf.clip_by_value(tf.matmul(x, w), -1.0 + 1e-7, 1.0 - 1e-7)
    sine = tf.sqrt(1.0 - tf.square(cosine))
    phi = cosine * math.cos(MARGIN) - sine * math.sin(MARGIN)
    phi = tf.where(cosine > math.cos(math.pi - MARGIN), phi, cosine - MARGIN * math.sin(MARGIN))
    one_hot = tf.one_hot(labels, tf.shape(weights)[1])
    logits = SCALE * (one_hot * phi + (1.0 - one_hot) * cosine)
    return tf.nn.softmax_cross_entropy_with_logits(labels=one_hot, logits=logits)


def plugin_loss(tf, features, labels, weights):
    import lossplug_margin_softmax as plugin

    config = plugin.SPEC.make_config(
        {"num_classes": int(weights.shape[1]), "scale": SCALE, "margin": MARGIN}
    )
    return plugin.margin_softmax_loss(features, labels, weights, config)


def sampled_loss(tf, features, labels, weights, rate: float):
    import lossplug_margin_softmax as plugin

    config = plugin.SPEC.make_config(
        {
            "num_classes": int(weights.shape[1]),
            "scale": SCALE,
            "margin": MARGIN,
            "sample_rate": rate,
        }
    )
    seed, step = tf.constant(12345, tf.int32), tf.constant(1, tf.int32)
    return plugin.sampled_margin_softmax_loss(features, labels, weights, config, seed, step)


def make_step(tf, impl: str, weights, rate: float = 1.0):
    if impl == "sampled":

        def fn(tf, features, labels, weights):
            return sampled_loss(tf, features, labels, weights, rate)

    else:
        fn = plugin_loss if impl == "plugin" else naive_loss

    @tf.function(
        input_signature=[tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None], tf.int32)]
    )
    def step(features, labels):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_mean(fn(tf, features, labels, weights))
        g_features, g_weights = tape.gradient(loss, [features, weights])
        return loss, g_features, g_weights

    return step


def setup(np, tf, classes: int, size: int):
    rng = np.random.default_rng(classes)
    weights = tf.Variable(rng.normal(size=(DIM, classes)).astype("float32") * 0.05)
    features = tf.constant(rng.normal(size=(size, DIM)).astype("float32"))
    labels = tf.constant(rng.integers(0, classes, size).astype("int32"))
    return weights, features, labels


def run_once(step, features, labels) -> tuple[float, bool]:
    start = time.perf_counter()
    _, _, g_weights = step(features, labels)
    finite = bool(all_finite(g_weights.numpy()))
    return time.perf_counter() - start, finite


def all_finite(array) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())


def implementations(rate: float | None) -> tuple[str, ...]:
    return ("plugin", "naive") if rate is None else ("plugin", "naive", "sampled")


def time_both(classes: int, repeats: int, rate: float | None = None) -> dict:
    """Median times, the implementations interleaved in this process (robust ratios)."""
    import numpy as np
    import tensorflow as tf

    weights, features, labels = setup(np, tf, classes, BATCH)
    steps = {impl: make_step(tf, impl, weights, rate or 1.0) for impl in implementations(rate)}
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for step in steps.values():
        run_once(step, features, labels)
    for _ in range(repeats):
        for impl, step in steps.items():
            elapsed, finite = run_once(step, features, labels)
            assert finite, f"{impl}: non-finite gradient"
            times[impl].append(elapsed)
    return {impl: statistics.median(values) for impl, values in times.items()}


def memory_worker(impl: str, classes: int, rate: float = 1.0) -> float:
    """Peak RSS growth (MB) of one pass, in this fresh process, after a warm-up with 8 samples."""
    import numpy as np
    import tensorflow as tf

    weights, features, labels = setup(np, tf, classes, BATCH)
    step = make_step(tf, impl, weights, rate)
    run_once(step, features[:8], labels[:8])
    before = reset_peak_rss()
    run_once(step, features, labels)
    return peak_rss() - before


def measure_memory(impl: str, classes: int, rate: float = 1.0) -> float | str:
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-worker", impl, str(classes), str(rate)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_mb(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.1f} MB"


# ----------------------------------------------------------------------------- training
LATENT, INPUTS, HIDDEN, NOISE = 32, 64, 256, 0.3
TRAIN_DEFAULTS = {"scale": 1_000_000, "compare": 100_000}


def identity_task(np, classes: int, seed: int = 0):
    """Identity centres in a LATENT-dimensional space and a fixed random map to INPUTS.

    ``draw(ids)`` returns (latent, x) for fresh samples of the identities ``ids``: latent =
    centre + NOISE * N(0, I), x = latent @ mixing (float32).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, LATENT)).astype("float32")
    mixing = (rng.normal(size=(LATENT, INPUTS)) / math.sqrt(LATENT)).astype("float32")

    def draw(ids):
        latent = centres[ids] + NOISE * rng.normal(size=(len(ids), LATENT)).astype("float32")
        return latent, (latent @ mixing).astype("float32")

    return centres, draw


def nearest_rows(np, queries, keys, *, cosine: bool, chunk: int = 256):
    """argmax over the rows of ``keys`` of the cosine (or -distance) to each query, chunked."""
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True) if cosine else keys
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        if cosine:
            scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ keys.T
        else:
            scores = 2.0 * q @ keys.T - np.sum(keys**2, axis=1)[None, :]
        out.append(scores.argmax(axis=1))
    return np.concatenate(out)


def train_worker(spec: dict) -> dict:
    """One training run in this fresh process: time per step, memory, accuracy."""
    import keras
    import lossplug
    import numpy as np

    classes, dim, batch, rate = spec["classes"], spec["dim"], spec["batch"], spec["rate"]
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    if spec["mode"] == "compare":
        centres, draw = identity_task(np, classes)
        y = np.repeat(np.arange(classes, dtype="int32"), spec["samples_per_class"])
        rng.shuffle(y)
        x = draw(y)[1]
    else:  # timing only: random inputs and labels
        y = rng.integers(0, classes, spec["steps"] * batch).astype("int32")
        x = rng.normal(size=(len(y), INPUTS)).astype("float32")
    steps = len(y) // batch
    x, y = x[: steps * batch], y[: steps * batch]
    inputs = keras.Input((INPUTS,))
    hidden = keras.layers.Dense(HIDDEN, activation="relu")(inputs)
    features = keras.layers.Dense(dim, name="features")(hidden)
    model = lossplug.LossModel(inputs, features)
    if spec["optimizer"] == "adam":
        optimizer = keras.optimizers.Adam(spec["lr"])
    else:
        optimizer = keras.optimizers.SGD(spec["lr"], momentum=0.9)
    term = lossplug.use(
        "margin_softmax", num_classes=classes, scale=SCALE, margin=MARGIN, sample_rate=rate
    )
    model.compile(optimizer=optimizer, loss=term)
    setup_peak = peak_rss()
    before = reset_peak_rss()  # the model, W and the data exist; no step has run
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # traces the step
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=batch, epochs=spec["epochs"], verbose=0, shuffle=True)
    elapsed = time.perf_counter() - start
    during = peak_rss()
    result = {
        "step_ms": 1e3 * elapsed / (steps * spec["epochs"]),
        "total_s": elapsed,
        "step_memory": during - before,
        "process_memory": max(setup_peak, during),
        "final_loss": float(history.history["margin_softmax"][-1]),
    }
    if spec["mode"] == "compare":
        ids = rng.choice(classes, size=min(spec["eval_samples"], classes), replace=False)
        latent, fresh = draw(ids)
        embedded = model.predict(fresh, batch_size=1024, verbose=0)
        weights = keras.ops.convert_to_numpy(model.term_state("margin_softmax")["class_weights"])
        result["accuracy"] = float(
            np.mean(nearest_rows(np, embedded, weights.T, cosine=True) == ids)
        )
        result["ceiling"] = float(np.mean(nearest_rows(np, latent, centres, cosine=False) == ids))
    return result


def measure_training(spec: dict) -> dict | str:
    proc = subprocess.run(
        [sys.executable, __file__, "--train-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=24 * 3600,
    )
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_main(args: argparse.Namespace) -> None:
    import keras

    rate = args.sample_rate if args.sample_rate is not None else 0.1
    classes = (args.classes or [TRAIN_DEFAULTS[args.train]])[0]
    base = {
        "mode": args.train,
        "classes": classes,
        "dim": args.dim,
        "batch": args.batch,
        "steps": args.steps,
        "epochs": args.epochs if args.train == "compare" else 1,
        "samples_per_class": args.samples_per_class,
        "eval_samples": args.eval_samples,
        "optimizer": args.optimizer,
        "lr": args.lr,
    }
    rates = [rate] + ([1.0] if args.train == "compare" or args.with_full else [])
    started = time.perf_counter()
    rows = []
    for r in rates:
        result = measure_training({**base, "rate": r})
        rows.append((r, result))
        print(f"  trained sample_rate={r}: {result}", file=sys.stderr, flush=True)
    used = max(1, math.ceil(round(rate * classes, 6)))
    print(
        f"\nArcFace (s={SCALE:g}, m={MARGIN}) training steps of a LossModel (MLP {INPUTS} -> "
        f"{HIDDEN} -> {args.dim}), {classes:,} classes, batch {args.batch}, "
        f"{args.optimizer} (lr {args.lr}), Keras backend {keras.backend.backend()}, "
        f"{os.cpu_count()} CPU cores; W is {args.dim} x {classes:,} float32 "
        f"({fmt_mb(args.dim * classes * 4 / 2**20)}). sample_rate {rate}: at least "
        f"{used:,} classes per step. Time: wall time of the fit / its steps. Memory: peak RSS "
        "growth from the compiled model (W exists) to the end of training (gradients, optimizer "
        "slots, the step's temporaries); peak RSS of the whole process. One process per row.\n"
    )
    header = "| sample_rate | time per step | training memory | process peak memory |"
    rule = "|---:|---:|---:|---:|"
    if args.train == "compare":
        header += " final training loss | accuracy (nearest class weight) | task ceiling |"
        rule += "---:|---:|---:|"
        print(
            f"Synthetic identities: {args.samples_per_class} training samples per identity, "
            f"{args.epochs} epochs; accuracy on fresh samples of "
            f"{min(args.eval_samples, classes):,} identities (the ceiling: nearest true centre "
            "in the latent space).\n"
        )
    print(header)
    print(rule)
    for r, result in rows:
        if isinstance(result, str):
            print(f"| {r:g} | {result} |")
            continue
        line = (
            f"| {r:g} | {result['step_ms']:,.1f} ms | {fmt_mb(result['step_memory'])} | "
            f"{fmt_mb(result['process_memory'])} |"
        )
        if args.train == "compare":
            line += (
                f" {result['final_loss']:.3f} | {result['accuracy']:.3f} | "
                f"{result['ceiling']:.3f} |"
            )
        print(line)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="C = 1,000 and 10,000 only")
    parser.add_argument("--classes", type=int, nargs="*")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--sample-rate",
        type=float,
        help="add the plugin with this sample_rate (the rate of --train, default 0.1)",
    )
    parser.add_argument(
        "--train",
        choices=("scale", "compare"),
        help="time training steps: scale (1M classes, sampled), compare (100k, full vs sampled)",
    )
    parser.add_argument("--dim", type=int, default=512, help="--train: embedding dimension D")
    parser.add_argument("--batch", type=int, default=256, help="--train: batch size")
    parser.add_argument("--steps", type=int, default=20, help="--train scale: timed steps")
    parser.add_argument("--with-full", action="store_true", help="--train scale: full loss too")
    parser.add_argument("--epochs", type=int, default=2, help="--train compare: epochs")
    parser.add_argument("--samples-per-class", type=int, default=4, help="--train compare")
    parser.add_argument("--eval-samples", type=int, default=5000, help="--train compare")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--lr", type=float, default=0.1, help="--train: learning rate")
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        impl, classes, rate = args.memory_worker
        print(json.dumps(memory_worker(impl, int(classes), float(rate))))
        return
    if args.train_worker:
        print(json.dumps(train_worker(json.loads(args.train_worker))))
        return
    if args.train:
        train_main(args)
        return
    rate = args.sample_rate
    impls = implementations(rate)
    sizes = args.classes or ([1000, 10000] if args.quick else [1000, 10000, 100000])
    started = time.perf_counter()
    rows = []
    for classes in sizes:
        times = time_both(classes, args.repeats, rate)
        memory = {impl: measure_memory(impl, classes, rate or 1.0) for impl in impls}
        rows.append((classes, times, memory))
        print(f"  measured C={classes}: {times} {memory}", file=sys.stderr, flush=True)

    print(
        f"\nArcFace (s={SCALE:g}, m={MARGIN}), forward + backward (gradients for the features "
        f"and W), batch {BATCH}, dim {DIM}, float32, {os.cpu_count()} CPU cores. Time: median "
        "of repeats, the implementations interleaved in one process. Memory: peak RSS growth "
        "of one pass in a fresh process per cell."
        + ("" if rate is None else f" sampled: sample_rate={rate:g}.")
        + "\n"
    )
    header = (
        "| classes | plugin time | naive time | time ratio (naive / plugin) | plugin memory | "
        "naive memory | memory ratio | one (B, C) float32 matrix |"
    )
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|"
    if rate is not None:
        header += " sampled time | sampled memory | time ratio (plugin / sampled) |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for classes, times, memory in rows:
        matrix = f"{BATCH * classes * 4 / 2**20:,.1f} MB"
        ours, naive = memory["plugin"], memory["naive"]
        if isinstance(ours, str) or isinstance(naive, str):
            mem_cells = (str(ours), str(naive), "-")
        else:
            mem_cells = (fmt_mb(ours), fmt_mb(naive), f"{naive / max(ours, 1.0):.1f}x")
        line = (
            f"| {classes:,} | {times['plugin'] * 1e3:,.1f} ms | {times['naive'] * 1e3:,.1f} ms | "
            f"{times['naive'] / times['plugin']:.2f}x | {mem_cells[0]} | {mem_cells[1]} | "
            f"{mem_cells[2]} | {matrix} |"
        )
        if rate is not None:
            sampled = memory["sampled"]
            sampled_mem = sampled if isinstance(sampled, str) else fmt_mb(sampled)
            line += (
                f" {times['sampled'] * 1e3:,.1f} ms | {sampled_mem} | "
                f"{times['plugin'] / times['sampled']:.2f}x |"
            )
        print(line)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""ArcFace: the ``margin_softmax`` plugin against the layer a user would write, on every
Keras backend, and against pytorch-metric-learning when it is installed.

s = 64, m = 0.5, features of dimension 128; one forward + backward pass is the
per-sample losses, their mean, and the gradients with respect to the features and
the class weights W (128 x C). Three tables (files in docs/generated/):

``margin_softmax.md``: for C classes (batch 256), on TensorFlow (``tf.function``):

- ``plugin``: ``lossplug_margin_softmax.margin_softmax_loss`` (target-only margin:
  one (B, C) cosine matrix and the logits, O(B dim) for the angle);
- ``naive``: the usual ArcMarginProduct port: cosines clipped to [-1 + 1e-7, 1 - 1e-7],
  sine = sqrt(1 - cos^2), cos(theta + m) with the threshold fallback for the whole
  (B, C) matrix, a one-hot blend, and ``tf.nn.softmax_cross_entropy_with_logits``.

Time: ``--runs`` passes of each implementation taking turns in one process, so the
ratio is robust to other load on the machine; the table gives the median time and the
median and range of the per-run ratios. Memory is measured in a fresh subprocess per
(implementation, C) (TensorFlow's CPU allocator keeps memory it once used): after a
warm-up with 8 samples (which traces the function) the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), one pass runs, and the reported value is the peak RSS
during the pass minus the RSS before it (Linux only). W (C x 128 float32) exists
before; its gradient (the same size) is part of both working sets. Every gradient is
checked to be finite (outside the timed region).

``margin_softmax_backends.md``: the plugin's pass on each Keras backend of
``--backends`` (default: those installed), each in a fresh process (TensorFlow: this
one): ``tf.function`` on TensorFlow, ``jax.jit`` of ``jax.value_and_grad`` on JAX, eager
autograd on PyTorch.

``margin_softmax_pml.md``: batch 512, C = 10,000 and 100,000 (``--pml-classes``): the
plugin (PyTorch backend, eager) against pytorch-metric-learning's ``ArcFaceLoss``
(``margin`` in degrees: 0.5 rad = 28.65 degrees; ``scale=64``; its W set to the same
values), taking turns in one torch process; memory in a fresh process per
implementation and C. Skipped (and said so) when PML is not installed.

    python benchmarks/bench_margin_softmax.py --quick    # C = 1,000 and 10,000 (~3 minutes)
    python benchmarks/bench_margin_softmax.py --write    # C = 1,000 ... 100,000 (~8 minutes)

Without ``--write`` (docs/generated/) or ``--out DIR`` the tables are only printed.

``--sample-rate R`` adds ``sampled`` to the TensorFlow table (written as
``margin_softmax_sampled.md``): the plugin with ``sample_rate=R`` (Partial FC: the
batch's classes plus random others, max(#positives, ceil(R C)) classes, a gather of
their columns of W; its logits are (B, R C)).

``--train scale`` and ``--train compare`` time real ``fit`` steps of a
``lossplug.LossModel`` (an MLP encoder, 64 -> 256 -> D, then ``margin_softmax``
ArcFace), each configuration in a fresh process (the Keras backend of
``KERAS_BACKEND``), written as ``margin_softmax_train_scale.md`` /
``margin_softmax_train_compare.md``: the median time of a training step (forward,
backward and the optimizer's update of the encoder and of W; after one warm-up step
that traces it) and two memory figures: the peak RSS growth from the compiled model
(W and the data exist) to the end of training (W's gradient, the optimizer's slots,
the step's temporaries) and the peak RSS of the whole process.

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
import math
import os
import sys
import time

import benchlib
from benchlib import fmt_mb, fmt_ms, fmt_ratio
from peak_memory import peak_rss, reset_peak_rss

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH, DIM, SCALE, MARGIN = 256, 128, 64.0, 0.5
PML_BATCH = 512


# ----------------------------------------------------------------------------- implementations
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


def _config(classes: int, rate: float = 1.0):
    import lossplug_margin_softmax as plugin

    return plugin.SPEC.make_config(
        {"num_classes": classes, "scale": SCALE, "margin": MARGIN, "sample_rate": rate}
    )


def plugin_loss(features, labels, weights):
    """Per-sample losses of the plugin (keras.ops: any backend)."""
    import lossplug_margin_softmax as plugin

    return plugin.margin_softmax_loss(features, labels, weights, _config(int(weights.shape[1])))


def sampled_loss(tf, features, labels, weights, rate: float):
    import lossplug_margin_softmax as plugin

    config = _config(int(weights.shape[1]), rate)
    seed, step = tf.constant(12345, tf.int32), tf.constant(1, tf.int32)
    return plugin.sampled_margin_softmax_loss(features, labels, weights, config, seed, step)


def mean_plugin_loss(features, labels, weights):
    import keras

    return keras.ops.mean(plugin_loss(features, labels, weights))


def pml_step(classes: int, weights):
    """PML's ArcFaceLoss with W = ``weights`` (a torch tensor): step(features, labels)."""
    import torch
    from pytorch_metric_learning import losses

    loss = losses.ArcFaceLoss(
        num_classes=classes, embedding_size=DIM, margin=math.degrees(MARGIN), scale=SCALE
    )
    loss.W.data = weights.clone()

    def step(features, labels):
        features = features.detach().requires_grad_(True)
        value = loss(features, labels.long())
        return value, list(torch.autograd.grad(value, [features, loss.W]))

    return step


def data(classes: int, size: int):
    """(W (DIM, C), features (size, DIM), labels (size,)) as NumPy arrays."""
    import numpy as np

    rng = np.random.default_rng(classes)
    weights = rng.normal(size=(DIM, classes)).astype("float32") * 0.05
    features = rng.normal(size=(size, DIM)).astype("float32")
    return weights, features, rng.integers(0, classes, size).astype("int32")


# ----------------------------------------------------------------------------- TensorFlow
def make_step(tf, impl: str, weights, rate: float = 1.0):
    if impl == "sampled":

        def fn(features, labels, weights):
            return sampled_loss(tf, features, labels, weights, rate)

    elif impl == "plugin":
        fn = plugin_loss
    else:

        def fn(features, labels, weights):
            return naive_loss(tf, features, labels, weights)

    @tf.function(
        input_signature=[tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None], tf.int32)]
    )
    def step(features, labels):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_mean(fn(features, labels, weights))
        g_features, g_weights = tape.gradient(loss, [features, weights])
        return loss, g_features, g_weights

    return step


def tf_setup(tf, classes: int, size: int):
    weights, features, labels = data(classes, size)
    return tf.Variable(weights), tf.constant(features), tf.constant(labels)


def implementations(rate: float | None) -> tuple[str, ...]:
    return ("plugin", "naive") if rate is None else ("plugin", "naive", "sampled")


def time_both(classes: int, runs: int, rate: float | None = None) -> dict[str, list[float]]:
    """Times of the implementations, taking turns in this process (robust ratios)."""
    import numpy as np
    import tensorflow as tf

    weights, features, labels = tf_setup(tf, classes, BATCH)
    steps = {impl: make_step(tf, impl, weights, rate or 1.0) for impl in implementations(rate)}

    def finite(impl, result):
        assert np.isfinite(result[2].numpy()).all(), f"{impl}: non-finite gradient of W"

    passes = {impl: (lambda step=step: step(features, labels)) for impl, step in steps.items()}
    return benchlib.interleaved(passes, runs, check=finite)


# ----------------------------------------------------------------------------- workers
def memory_worker(spec: dict) -> float:
    """Peak RSS growth (MB) of one pass, in this fresh process, after a warm-up with 8 samples.

    ``impl``: "plugin", "naive" or "sampled" (TensorFlow, tf.function), or "lossplug" or
    "pml" (PyTorch, eager; the process runs the torch backend).
    """
    impl, classes, size = spec["impl"], spec["classes"], spec["batch"]
    if impl in ("plugin", "naive", "sampled"):
        import tensorflow as tf

        weights, features, labels = tf_setup(tf, classes, size)
        step = make_step(tf, impl, weights, spec["rate"])

        def one_pass(n):
            return step(features[:n], labels[:n])[2].numpy()
    else:
        import torch

        weights, features, labels = (torch.from_numpy(a) for a in data(classes, size))
        if impl == "pml":
            step = pml_step(classes, weights)
        else:
            ours = benchlib.value_and_grad(mean_plugin_loss, wrt=(0, 2))

            def step(features, labels):
                return ours(features, labels, weights)

        def one_pass(n):
            return benchlib.finish(step(features[:n], labels[:n]))

    one_pass(8)
    before = reset_peak_rss()
    one_pass(size)
    return peak_rss() - before


def backend_worker(spec: dict) -> dict[str, list[float] | str]:
    """The plugin's pass on this process's Keras backend, for every C."""
    import keras
    import numpy as np

    step = benchlib.value_and_grad(mean_plugin_loss, wrt=(0, 2))
    out: dict[str, list[float] | str] = {}
    for classes in spec["classes"]:
        weights, features, labels = (
            keras.ops.convert_to_tensor(a) for a in data(classes, spec["batch"])
        )

        def run(weights=weights, features=features, labels=labels):
            return benchlib.finish(step(features, labels, weights))

        def finite(impl, result):
            assert all(np.isfinite(g).all() for g in result[1]), "non-finite gradient"

        try:
            times = benchlib.interleaved({"plugin": run}, spec["runs"], check=finite)
            out[str(classes)] = times["plugin"]
        except Exception as error:
            out[str(classes)] = f"failed: {type(error).__name__}: {str(error)[:120]}"
    return out


def pml_worker(spec: dict) -> dict[str, dict | str]:
    """lossplug (torch backend) and PML taking turns, for every C."""
    import torch

    ours = benchlib.value_and_grad(mean_plugin_loss, wrt=(0, 2))
    out: dict[str, dict | str] = {}
    for classes in spec["classes"]:
        weights, features, labels = (torch.from_numpy(a) for a in data(classes, spec["batch"]))
        steps = {
            "lossplug": lambda f, y, w=weights: ours(f, y, w),
            "pml": pml_step(classes, weights),
        }
        values = {}

        def run(impl, features=features, labels=labels, values=values, steps=steps):
            values[impl] = float(benchlib.finish(steps[impl](features, labels))[0])

        try:
            times = benchlib.interleaved(
                {impl: (lambda impl=impl: run(impl)) for impl in steps}, spec["runs"]
            )
            out[str(classes)] = {"times": times, "loss": values}
        except Exception as error:
            out[str(classes)] = f"failed: {type(error).__name__}: {str(error)[:120]}"
        print(f"  PML C={classes}: {out[str(classes)]}", file=sys.stderr, flush=True)
    return out


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
    return benchlib.run_worker(__file__, {"task": "train", **spec}, timeout=24 * 3600)


def train_main(args: argparse.Namespace, report: benchlib.Report) -> None:
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
    rows = []
    for r in rates:
        result = measure_training({**base, "rate": r})
        rows.append((r, result))
        print(f"  trained sample_rate={r}: {result}", file=sys.stderr, flush=True)
    used = max(1, math.ceil(round(rate * classes, 6)))
    blocks = [
        f"ArcFace (s={SCALE:g}, m={MARGIN}) training steps of a LossModel (MLP {INPUTS} -> "
        f"{HIDDEN} -> {args.dim}), {classes:,} classes, batch {args.batch}, "
        f"{args.optimizer} (lr {args.lr}), Keras backend {keras.backend.backend()}; W is "
        f"{args.dim} x {classes:,} float32 ({fmt_mb(args.dim * classes * 4 / 2**20)}). "
        f"sample_rate {rate}: at least {used:,} classes per step. Time: wall time of the fit / "
        "its steps. Memory: peak RSS growth from the compiled model (W exists) to the end of "
        "training (gradients, optimizer slots, the step's temporaries); peak RSS of the whole "
        "process. One process per row."
    ]
    header = ["sample_rate", "time per step", "training memory", "process peak memory"]
    if args.train == "compare":
        header += ["final training loss", "accuracy (nearest class weight)", "task ceiling"]
        blocks.append(
            f"Synthetic identities: {args.samples_per_class} training samples per identity, "
            f"{args.epochs} epochs; accuracy on fresh samples of "
            f"{min(args.eval_samples, classes):,} identities (the ceiling: nearest true centre "
            "in the latent space)."
        )
    lines = []
    for r, result in rows:
        if isinstance(result, str):
            lines.append([f"{r:g}", result, *["-"] * (len(header) - 2)])
            continue
        line = [
            f"{r:g}",
            f"{result['step_ms']:,.1f} ms",
            fmt_mb(result["step_memory"]),
            fmt_mb(result["process_memory"]),
        ]
        if args.train == "compare":
            line += [
                f"{result['final_loss']:.3f}",
                f"{result['accuracy']:.3f}",
                f"{result['ceiling']:.3f}",
            ]
        lines.append(line)
    blocks.append(benchlib.table(header, "r" * len(header), lines))
    report.add(f"margin_softmax_train_{args.train}", *blocks)


# ----------------------------------------------------------------------------- one pass
def plugin_table(args, report, sizes, rate) -> None:
    impls = implementations(rate)
    rows = []
    for classes in sizes:
        times = time_both(classes, args.runs, rate)
        memory = {}
        for impl in impls:
            spec = {
                "task": "memory",
                "impl": impl,
                "classes": classes,
                "batch": BATCH,
                "rate": rate or 1.0,
            }
            memory[impl] = benchlib.run_worker(__file__, spec, backend="tensorflow", timeout=900)
        medians = {impl: fmt_ms(t) for impl, t in times.items()}
        print(f"  measured C={classes}: {medians} {memory}", file=sys.stderr, flush=True)
        matrix = f"{BATCH * classes * 4 / 2**20:,.1f} MB"
        ours, naive = memory["plugin"], memory["naive"]
        if isinstance(ours, str) or isinstance(naive, str):
            mem_cells = [str(ours), str(naive), "-"]
        else:
            mem_cells = [fmt_mb(ours), fmt_mb(naive), f"{naive / max(ours, 1.0):.1f}x"]
        row = [
            f"{classes:,}",
            fmt_ms(times["plugin"]),
            fmt_ms(times["naive"]),
            fmt_ratio(benchlib.ratios(times["naive"], times["plugin"])),
            *mem_cells,
            matrix,
        ]
        if rate is not None:
            sampled = memory["sampled"]
            row += [
                fmt_ms(times["sampled"]),
                sampled if isinstance(sampled, str) else fmt_mb(sampled),
                fmt_ratio(benchlib.ratios(times["plugin"], times["sampled"])),
            ]
        rows.append(row)
    header = [
        "classes",
        "plugin time",
        "naive time",
        "time ratio (naive / plugin)",
        "plugin memory",
        "naive memory",
        "memory ratio",
        "one (B, C) float32 matrix",
    ]
    if rate is not None:
        header += ["sampled time", "sampled memory", "time ratio (plugin / sampled)"]
    report.add(
        "margin_softmax" if rate is None else "margin_softmax_sampled",
        f"ArcFace (s={SCALE:g}, m={MARGIN}), forward + backward (gradients for the features "
        f"and W) on TensorFlow (`tf.function`), batch {BATCH}, dim {DIM}, float32. Time: "
        f"median of {args.runs} runs, the implementations taking turns in one process; the "
        "ratio is the median of the per-run ratios (range in brackets). Memory: peak RSS "
        "growth of one pass in a fresh process per cell."
        + ("" if rate is None else f" sampled: sample_rate={rate:g}."),
        benchlib.table(header, "r" * len(header), rows),
    )


def backends_table(args, report, sizes, backends) -> None:
    name = "margin_softmax_backends"
    if not backends:
        report.add(name, "Per-backend times were not requested (`--backends ''`).")
        return
    spec = {"task": "backend", "classes": sizes, "batch": BATCH, "runs": args.runs}
    results = {}
    for backend in backends:
        if backend == "torch":
            report.used.add("torch")
        if backend == "tensorflow":  # this process's backend
            results[backend] = backend_worker(spec)
        else:
            results[backend] = benchlib.run_worker(__file__, spec, backend=backend)
        print(f"  backend {backend}: {results[backend]}", file=sys.stderr, flush=True)
    rows = []
    for classes in sizes:
        cells = []
        for backend in backends:
            got = results[backend]
            got = got if isinstance(got, str) else got[str(classes)]
            cells.append(got if isinstance(got, str) else benchlib.fmt_times(got))
        rows.append([f"{classes:,}", *cells])
    report.add(
        name,
        f"The plugin's forward + backward (batch {BATCH}, dim {DIM}; gradients for the "
        "features and W) per Keras backend (one process each): `tf.function` on TensorFlow, "
        "`jax.jit` of `jax.value_and_grad` on JAX, eager autograd on PyTorch. Median of "
        f"{args.runs} runs after a warm-up pass (range in brackets).",
        benchlib.table(["classes", *backends], "r" * (1 + len(backends)), rows),
    )


def pml_table(args, report, sizes) -> None:
    name = "margin_softmax_pml"
    skipped = benchlib.pml_skipped(sizes, "--pml-classes")
    if skipped:
        report.add(name, skipped)
        return
    report.used.update({"torch", "pytorch-metric-learning"})
    spec = {"task": "pml", "classes": sizes, "batch": PML_BATCH, "runs": args.runs}
    timed = benchlib.run_worker(__file__, spec, backend="torch")
    rows = []
    for classes in sizes:
        memory = {}
        for impl in ("lossplug", "pml"):
            spec = {"task": "memory", "impl": impl, "classes": classes, "batch": PML_BATCH}
            memory[impl] = benchlib.run_worker(__file__, spec, backend="torch", timeout=900)
        print(f"  PML memory C={classes}: {memory}", file=sys.stderr, flush=True)
        cell = timed if isinstance(timed, str) else timed[str(classes)]
        rows.append([f"{classes:,}", *benchlib.pml_cells(cell, memory["lossplug"], memory["pml"])])
    report.add(
        name,
        f"The plugin (PyTorch backend, eager) against pytorch-metric-learning's "
        f"`ArcFaceLoss(margin={math.degrees(MARGIN):.2f}, scale={SCALE:g})` (PML's margin is "
        f"in degrees: {MARGIN} rad), the same W, batch {PML_BATCH}, dim {DIM}; forward + "
        "backward (gradients for the features and W). Time: median of "
        f"{args.runs} runs taking turns in one process; ratio: median of the per-run ratios "
        "lossplug / PML (below 1: lossplug is faster; range in brackets). Memory: peak RSS "
        "growth of one pass, one fresh process per implementation and C.",
        benchlib.table(
            ["classes", *benchlib.PML_COLUMNS, "mean loss lossplug / PML"],
            "rrrrrrrr",
            rows,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="C = 1,000 and 10,000, 5 runs")
    parser.add_argument("--classes", type=int, nargs="*")
    parser.add_argument(
        "--runs", "--repeats", type=int, default=None, help="timed runs (default 9; quick 5)"
    )
    parser.add_argument(
        "--sample-rate",
        type=float,
        help="add the plugin with this sample_rate (the rate of --train, default 0.1)",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated Keras backends for margin_softmax_backends.md (default: the "
        "installed ones of tensorflow, jax, torch; empty: skip)",
    )
    parser.add_argument(
        "--pml-classes",
        type=int,
        nargs="*",
        default=None,
        help="class counts of the PML comparison (default 10000 100000; quick 10000; empty: skip)",
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
    benchlib.add_output_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    handlers = {
        "memory": memory_worker,
        "backend": backend_worker,
        "pml": pml_worker,
        "train": train_worker,
    }
    if benchlib.worker_main(handlers):
        return
    sizing = ["classes", "runs", "sample_rate", "pml_classes"]
    if args.train:
        sizing = [
            "classes",
            "dim",
            "batch",
            "steps",
            "epochs",
            "samples_per_class",
            "eval_samples",
            "optimizer",
            "lr",
        ]
    report = benchlib.Report(args, benchlib.run_kind(parser, args, sizing))
    if args.train:
        train_main(args, report)
        report.finish()
        return
    os.environ["KERAS_BACKEND"] = "tensorflow"  # this process: the TensorFlow table
    args.runs = args.runs or (5 if args.quick else 9)
    sizes = args.classes or ([1000, 10000] if args.quick else [1000, 10000, 100000])
    if args.pml_classes is None:
        args.pml_classes = [10000] if args.quick else [10000, 100000]
    if args.backends is None:
        backends = benchlib.installed_backends()
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    started = time.perf_counter()
    plugin_table(args, report, sizes, args.sample_rate)
    if args.sample_rate is None:  # the sampled variant is a table of its own, nothing else
        backends_table(args, report, sizes, backends)
        pml_table(args, report, args.pml_classes)
    report.finish()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

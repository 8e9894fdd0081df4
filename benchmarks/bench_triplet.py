"""Triplet mining: the ``triplet`` plugin against the B x B x B code a user would write,
on every Keras backend, and against pytorch-metric-learning when it is installed.

Embeddings of dimension 128, 4 samples per identity (P x K batches, K = 4), margin 0.5,
Euclidean distance; one forward + backward pass is the loss and its gradient with
respect to the embeddings. Three tables (files in docs/generated/):

``triplet.md``: the plugin against ``naive``, on TensorFlow (``tf.function``), for each
strategy (batch_all, batch_hard, semi_hard) and batch size B. ``naive`` is the
straightforward TensorFlow version: the float32 Gram-matrix distances, then for
batch_all and semi_hard the (B, B, B) broadcast of every (anchor, positive, negative)
hinge and mask (as in the widely copied blog recipe and TF Addons'
TripletSemiHardLoss, which tiles to (B^2, B)); batch_hard needs only (B, B) masks in
any implementation. Time: ``--runs`` passes of each implementation, taking turns in
one process (so the ratio is robust to other load on the machine); the table gives
the median time and the median and range of the per-run ratios. Memory is measured in
fresh processes, one per implementation and strategy (TensorFlow's CPU allocator keeps
memory it once used, and the naive B^3 runs must not inflate the plugin's numbers):
after a warm-up on a batch of 8 (which traces the function), for each batch size the
kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), one pass runs, and the
value is the peak RSS during the pass minus the RSS before it: the transient working
set of the pass (Linux only). Naive batch_all / semi_hard runs are skipped where one
(B, B, B) float32 tensor would exceed ``--naive-limit-gb`` (the analytic size of the
largest tensor is given for every cell).

``triplet_backends.md``: the plugin's pass on each Keras backend of ``--backends``
(default: those installed), each in a fresh process (TensorFlow: this one):
``tf.function`` on TensorFlow, ``jax.jit`` of ``jax.value_and_grad`` on JAX, eager
autograd on PyTorch. Sizes run in increasing order, and once one pass takes longer than
``--max-pass-seconds`` the larger sizes of that strategy are skipped (the cell says so);
fewer runs are timed where they would take over 6 times that.

``triplet_pml.md``: the plugin (PyTorch backend, eager) against pytorch-metric-learning
(PML; ``TripletMarginLoss`` with ``BatchHardMiner`` / ``TripletMarginMiner``, both with
``LpDistance(normalize_embeddings=False)``), in one torch process, taking turns;
memory in a fresh process per implementation and strategy. The plugin uses
``average="active"`` here, PML's ``AvgNonZeroReducer``; the same rule for slow passes.
Skipped (and said so) when PML is not installed.

    python benchmarks/bench_triplet.py --quick     # B = 256, 512; PML 256, 512 (~10 minutes)
    python benchmarks/bench_triplet.py --write     # B = 256 ... 4096; PML 1024, 4096 (~20 min)

Most of that time is PyTorch: Keras 3.15's ``ops.scatter`` is a Python loop over the
indices on that backend, and ``lossplug.pairs`` scatters B x 8 refined distances, so
batch_all and semi_hard take seconds per pass there. ``--backends tensorflow,jax`` and
``--pml-sizes`` (empty) leave PyTorch out.

Without ``--write`` (docs/generated/) or ``--out DIR`` the tables are only printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import benchlib
from benchlib import fmt_bytes, fmt_mb, fmt_ms, fmt_ratio
from peak_memory import peak_rss, reset_peak_rss

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DIM = 128
PER_CLASS = 4
MARGIN = 0.5
STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
CUBIC = {"batch_all", "semi_hard"}
PML_MINERS = {
    "batch_hard": "BatchHardMiner()",
    "batch_all": 'TripletMarginMiner(type_of_triplets="all")',
    "semi_hard": 'TripletMarginMiner(type_of_triplets="semihard")',
}


# ----------------------------------------------------------------------------- implementations
def naive_loss(tf, embeddings, labels, strategy):
    """The version a user writes: Gram distances in float32, then B^3 broadcasts."""
    sq = tf.reduce_sum(tf.square(embeddings), axis=1)
    d2 = sq[:, None] - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True) + sq[None, :]
    d2 = tf.maximum(d2, 0.0)
    zero = tf.cast(tf.equal(d2, 0.0), d2.dtype)
    d = tf.sqrt(d2 + zero * 1e-16) * (1.0 - zero)
    n = tf.shape(labels)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    pos = tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool)))
    neg = tf.logical_not(same)
    if strategy == "batch_hard":
        hp = tf.reduce_max(tf.where(pos, d, tf.zeros_like(d)), axis=1)
        hn = tf.reduce_min(tf.where(neg, d, tf.fill(tf.shape(d), tf.reduce_max(d) + 1.0)), 1)
        ok = tf.cast(tf.logical_and(tf.reduce_any(pos, 1), tf.reduce_any(neg, 1)), d.dtype)
        return tf.reduce_sum(tf.nn.relu(MARGIN + hp - hn) * ok) / tf.maximum(tf.reduce_sum(ok), 1)
    valid = tf.logical_and(pos[:, :, None], neg[:, None, :])  # (B, B, B)
    if strategy == "batch_all":
        hinge = tf.nn.relu(MARGIN + d[:, :, None] - d[:, None, :]) * tf.cast(valid, d.dtype)
        return tf.reduce_sum(hinge) / tf.maximum(tf.reduce_sum(tf.cast(valid, d.dtype)), 1.0)
    big = tf.reduce_max(d) + MARGIN + 1.0
    farther = tf.logical_and(valid, d[:, None, :] > d[:, :, None])
    outside = tf.reduce_min(tf.where(farther, d[:, None, :], big), axis=2)
    inside = tf.reduce_max(tf.where(neg, d, -1.0), axis=1)[:, None]
    chosen = tf.where(tf.reduce_any(farther, axis=2), outside, inside)
    pair = tf.cast(tf.logical_and(pos, tf.reduce_any(neg, axis=1)[:, None]), d.dtype)
    return tf.reduce_sum(tf.nn.relu(MARGIN + d - chosen) * pair) / tf.maximum(
        tf.reduce_sum(pair), 1.0
    )


def plugin_loss(embeddings, labels, strategy, average="valid"):
    """The plugin's mined loss (keras.ops: any backend)."""
    import lossplug_triplet

    config = lossplug_triplet.SPEC.make_config(
        {"mining": strategy, "margin": MARGIN, "average": average}
    )
    return lossplug_triplet.triplet_loss(
        {"y_true": labels}, {"embeddings": embeddings}, config
    ).loss


def pml_loss(strategy):
    """PML's TripletMarginLoss with the miner of ``strategy`` (Euclidean, not normalised)."""
    from pytorch_metric_learning import distances, losses, miners

    distance = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    loss = losses.TripletMarginLoss(margin=MARGIN, distance=distance)
    if strategy == "batch_hard":
        miner = miners.BatchHardMiner(distance=distance)
    else:
        kind = {"batch_all": "all", "semi_hard": "semihard"}[strategy]
        miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets=kind, distance=distance)

    def fn(embeddings, labels):
        return loss(embeddings, labels, miner(embeddings, labels))

    return fn


def largest_tensor_bytes(impl: str, strategy: str, batch: int) -> int:
    """Analytic size of the largest single intermediate tensor of one pass."""
    if impl == "naive" and strategy in CUBIC:
        return 4 * batch**3  # float32 (B, B, B) hinge / candidates
    return 4 * batch**2  # float32 (B, B) distances


def data(size: int):
    """(embeddings (B, DIM) float32, labels (B,) int32) as NumPy arrays, P x K batches."""
    import numpy as np

    rng = np.random.default_rng(size)
    embeddings = rng.normal(size=(size, DIM)).astype("float32")
    return embeddings, (np.arange(size) // PER_CLASS).astype("int32")


# ----------------------------------------------------------------------------- TensorFlow
def make_step(tf, impl: str, strategy: str):
    if impl == "plugin":

        def fn(embeddings, labels):
            return plugin_loss(embeddings, labels, strategy)
    else:

        def fn(embeddings, labels):
            return naive_loss(tf, embeddings, labels, strategy)

    @tf.function(
        input_signature=[tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None], tf.int32)]
    )
    def step(embeddings, labels):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = fn(embeddings, labels)
        return loss, tape.gradient(loss, embeddings)

    return step


def run_once(step, embeddings, labels) -> None:
    _, grad = step(embeddings, labels)
    grad.numpy()


def time_both(strategy: str, size: int, runs: int, with_naive: bool) -> dict[str, list[float]]:
    """Times of the implementations, taking turns in this process (robust ratios)."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one tf.function per configuration: retracing is expected
    embeddings, labels = (tf.constant(a) for a in data(size))
    impls = ["plugin", "naive"] if with_naive else ["plugin"]
    steps = {impl: make_step(tf, impl, strategy) for impl in impls}
    passes = {
        impl: (lambda step=step: run_once(step, embeddings, labels)) for impl, step in steps.items()
    }
    return benchlib.interleaved(passes, runs)


def distance_accuracy() -> tuple[float, float, float]:
    """Max absolute error of float32 Gram distances vs lossplug.pairs', on close pairs.

    256 embeddings of norm 10 in dim 128, in pairs 1e-3 apart (positives late in
    training); the reference is float64 arithmetic on the same float32 values.
    """
    import numpy as np
    import tensorflow as tf
    from lossplug.pairs import pairwise_distances

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, DIM))
    x = 10.0 * x / np.linalg.norm(x, axis=1, keepdims=True)
    x[1::2] = x[0::2] + rng.normal(size=(128, DIM)) * 1e-3 / np.sqrt(DIM)
    x = x.astype(np.float32)
    wide = x.astype(np.float64)
    exact = np.sqrt(((wide[:, None, :] - wide[None, :, :]) ** 2).sum(-1))
    e = tf.constant(x)
    sq = tf.reduce_sum(e * e, axis=1)
    gram = tf.maximum(sq[:, None] - 2.0 * tf.matmul(e, e, transpose_b=True) + sq[None, :], 0.0)
    naive = tf.sqrt(gram).numpy()
    ours = np.asarray(pairwise_distances(e, metric="euclidean"))
    first, second = np.arange(0, 256, 2), np.arange(1, 256, 2)
    return (
        float(exact[first, second].mean()),
        float(np.abs(naive - exact)[first, second].max()),
        float(np.abs(ours - exact)[first, second].max()),
    )


# ----------------------------------------------------------------------------- workers
def memory_worker(spec: dict) -> list[float]:
    """Peak RSS growth (MB) of one pass per size, in this fresh process.

    ``impl``: "plugin" or "naive" (TensorFlow, tf.function), or "lossplug" or "pml"
    (PyTorch, eager; the process runs the torch backend).
    """
    impl, strategy = spec["impl"], spec["strategy"]
    if impl in ("plugin", "naive"):
        import tensorflow as tf

        step = make_step(tf, impl, strategy)

        def one_pass(size):
            return run_once(step, *(tf.constant(a) for a in data(size)))
    else:
        import torch

        fn = pml_loss(strategy) if impl == "pml" else _active_plugin(strategy)
        step = benchlib.value_and_grad(fn, wrt=(0,))

        def one_pass(size):
            return benchlib.finish(step(*(torch.from_numpy(a) for a in data(size))))

    one_pass(8)  # traces (TensorFlow), warms up
    growth = []
    for size in spec["sizes"]:
        before = reset_peak_rss()
        one_pass(size)
        growth.append(peak_rss() - before)
    return growth


def _active_plugin(strategy: str):
    def fn(embeddings, labels):
        return plugin_loss(embeddings, labels, strategy, average="active")

    return fn


def _too_slow(times: dict[str, list[float]], limit: float) -> tuple[str, float] | None:
    """(implementation, median seconds per pass) of the first one slower than ``limit``."""
    for impl, values in times.items():
        if statistics.median(values) > limit:
            return impl, statistics.median(values)
    return None


def backend_worker(spec: dict) -> dict[str, list[float] | str]:
    """The plugin's pass on this process's Keras backend, for every strategy and size.

    Sizes run in increasing order; once a pass takes longer than ``max_pass_seconds``, the
    larger sizes of that strategy are skipped (and said so).
    """
    import keras

    limit = spec["max_pass_seconds"]
    out: dict[str, list[float] | str] = {}
    for strategy in spec["strategies"]:

        def fn(embeddings, labels, strategy=strategy):
            return plugin_loss(embeddings, labels, strategy)

        step = benchlib.value_and_grad(fn, wrt=(0,))
        slow = None
        for size in sorted(spec["sizes"]):
            key = f"{strategy}:{size}"
            if slow is not None:
                out[key] = f"skipped ({slow})"
                continue
            embeddings, labels = (keras.ops.convert_to_tensor(a) for a in data(size))
            try:
                one = (lambda s=step, e=embeddings, y=labels: benchlib.finish(s(e, y)),)
                times = benchlib.interleaved({"plugin": one[0]}, spec["runs"], budget=6 * limit)
            except Exception as error:
                out[key] = f"failed: {type(error).__name__}"
                continue
            out[key] = times["plugin"]
            if _too_slow(times, limit):
                slow = f"B={size}: {statistics.median(times['plugin']):,.0f} s per pass"
    return out


def pml_worker(spec: dict) -> dict[str, dict | str]:
    """lossplug (torch backend) and PML taking turns, for every strategy and size (in
    increasing order; the larger sizes are skipped once a pass exceeds the limit)."""
    import torch

    limit = spec["max_pass_seconds"]
    out: dict[str, dict | str] = {}
    for strategy in spec["strategies"]:
        steps = {
            "lossplug": benchlib.value_and_grad(_active_plugin(strategy), wrt=(0,)),
            "pml": benchlib.value_and_grad(pml_loss(strategy), wrt=(0,)),
        }
        slow = None
        for size in sorted(spec["sizes"]):
            key = f"{strategy}:{size}"
            if slow is not None:
                out[key] = f"skipped ({slow})"
                continue
            embeddings, labels = (torch.from_numpy(a) for a in data(size))
            values = {}

            def run(impl, embeddings=embeddings, labels=labels, values=values, steps=steps):
                values[impl] = float(benchlib.finish(steps[impl](embeddings, labels))[0])

            try:
                times = benchlib.interleaved(
                    {impl: (lambda impl=impl: run(impl)) for impl in steps},
                    spec["runs"],
                    budget=6 * limit,
                )
            except Exception as error:
                out[key] = f"failed: {type(error).__name__}: {str(error)[:120]}"
                continue
            out[key] = {"times": times, "loss": values}
            if found := _too_slow(times, limit):
                slow = f"{found[0]} at B={size}: {found[1]:,.0f} s per pass"
            print(f"  PML {strategy} B={size}: {out[key]}", file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------- report
def plugin_table(args, report, sizes) -> None:
    def naive_runs(strategy: str, size: int) -> bool:
        return strategy not in CUBIC or 4 * size**3 <= args.naive_limit_gb * 2**30

    timings = {}
    for strategy in args.strategies:
        for size in sizes:
            with_naive = naive_runs(strategy, size)
            timings[strategy, size] = time_both(strategy, size, args.runs, with_naive)
            medians = {impl: fmt_ms(t) for impl, t in timings[strategy, size].items()}
            print(f"  timed {strategy} B={size}: {medians}", file=sys.stderr, flush=True)
    memory = {}
    for strategy in args.strategies:
        for impl in ("plugin", "naive"):
            chosen = [s for s in sizes if impl == "plugin" or naive_runs(strategy, s)]
            measure_memory(memory, impl, strategy, chosen, "tensorflow", "memory")
    rows = []
    for strategy in args.strategies:
        for size in sizes:
            t = timings[strategy, size]
            ours_m = memory["plugin", strategy, size]
            largest = (
                f"{fmt_bytes(largest_tensor_bytes('plugin', strategy, size))} / "
                f"{fmt_bytes(largest_tensor_bytes('naive', strategy, size))}"
            )
            ours_m_text = ours_m if isinstance(ours_m, str) else fmt_mb(ours_m)
            if "naive" not in t:
                cells = ["not run", "-", ours_m_text, "not run (B^3 tensors too large)", "-"]
            else:
                naive_m = memory["naive", strategy, size]
                if isinstance(naive_m, str) or isinstance(ours_m, str):
                    ratio_m, naive_text = "-", str(naive_m)
                else:
                    ratio_m, naive_text = f"{naive_m / max(ours_m, 1.0):.1f}x", fmt_mb(naive_m)
                ratio = fmt_ratio(benchlib.ratios(t["naive"], t["plugin"]))
                cells = [fmt_ms(t["naive"]), ratio, ours_m_text, naive_text, ratio_m]
            rows.append([strategy, size, fmt_ms(t["plugin"]), *cells, largest])
    true, naive_error, ours_error = distance_accuracy()
    report.add(
        "triplet",
        f"Forward + backward on TensorFlow (`tf.function`), dim {DIM}, {PER_CLASS} samples per "
        f"identity, margin {MARGIN}, float32. Time: median of {args.runs} runs, the "
        "implementations taking turns in one process; the ratio is the median of the per-run "
        "ratios (range in brackets). Memory: peak RSS growth of one pass (one fresh process per "
        "implementation and strategy). Naive batch_all / semi_hard are not run where one "
        f"(B, B, B) float32 tensor exceeds {args.naive_limit_gb:g} GB.",
        benchlib.table(
            [
                "strategy",
                "B",
                "plugin time",
                "naive time",
                "time ratio (naive / plugin)",
                "plugin memory",
                "naive memory",
                "memory ratio",
                "largest tensor plugin / naive",
            ],
            "lrrrrrrrr",
            rows,
        ),
        f"Distance accuracy (pairs {true:.2e} apart, embedding norm 10, dim {DIM}; reference: "
        f"float64 arithmetic on the same float32 values): max absolute error "
        f"**{naive_error:.2e}** with the float32 Gram matrix, **{ours_error:.2e}** with "
        "`lossplug.pairs.pairwise_distances`.",
    )


def backends_table(args, report, sizes, backends) -> None:
    results = {}
    for backend in backends:
        if backend == "torch":
            report.used.add("torch")
        spec = {
            "task": "backend",
            "strategies": args.strategies,
            "sizes": sizes,
            "runs": args.runs,
            "max_pass_seconds": args.max_pass_seconds,
        }
        if backend == "tensorflow":  # this process's backend
            results[backend] = backend_worker(spec)
        else:
            results[backend] = benchlib.run_worker(__file__, spec, backend=backend)
        print(f"  backend {backend}: {results[backend]}", file=sys.stderr, flush=True)
    rows = []
    for strategy in args.strategies:
        for size in sizes:
            cells = []
            for backend in backends:
                got = results[backend]
                got = got if isinstance(got, str) else got[f"{strategy}:{size}"]
                cells.append(got if isinstance(got, str) else benchlib.fmt_times(got))
            rows.append([strategy, size, *cells])
    report.add(
        "triplet_backends",
        "The plugin's forward + backward per Keras backend (one fresh process each): "
        "`tf.function` on TensorFlow, `jax.jit` of `jax.value_and_grad` on JAX, eager autograd "
        f"on PyTorch. Median of {args.runs} runs after a warm-up pass (range in brackets). "
        + _slow_rule(args),
        benchlib.table(["strategy", "B", *backends], "lr" + "r" * len(backends), rows),
    )


def _slow_rule(args) -> str:
    limit = args.max_pass_seconds
    return (
        f"Fewer runs where they would take over {6 * limit:g} s; once a pass takes over "
        f"{limit:g} s (`--max-pass-seconds`) the larger batches of that strategy are skipped."
    )


def measure_memory(
    memory: dict, impl: str, strategy: str, sizes: list[int], backend: str, label: str
) -> None:
    """memory[impl, strategy, size] for each of ``sizes``: one fresh worker process."""
    if not sizes:
        return
    spec = {"task": "memory", "impl": impl, "strategy": strategy, "sizes": sizes}
    result = benchlib.run_worker(__file__, spec, backend=backend)
    print(f"  {label} {impl} {strategy}: {result}", file=sys.stderr, flush=True)
    for i, size in enumerate(sizes):
        memory[impl, strategy, size] = result if isinstance(result, str) else result[i]


def pml_table(args, report, sizes) -> None:
    name = "triplet_pml"
    skipped = benchlib.pml_skipped(sizes, "--pml-sizes")
    if skipped:
        report.add(name, skipped)
        return
    report.used.update({"torch", "pytorch-metric-learning"})
    spec = {
        "task": "pml",
        "strategies": args.strategies,
        "sizes": sizes,
        "runs": args.runs,
        "max_pass_seconds": args.max_pass_seconds,
    }
    timed = benchlib.run_worker(__file__, spec, backend="torch")
    memory = {}
    for strategy in args.strategies:
        # memory of the sizes that were timed (a pass too slow to time is not measured)
        chosen = [
            size
            for size in sizes
            if not isinstance(timed, str) and isinstance(timed[f"{strategy}:{size}"], dict)
        ]
        for impl in ("lossplug", "pml"):
            measure_memory(memory, impl, strategy, chosen, "torch", "PML memory")
    rows = []
    for strategy in args.strategies:
        for size in sizes:
            cell = timed if isinstance(timed, str) else timed[f"{strategy}:{size}"]
            cells = benchlib.pml_cells(
                cell,
                memory.get(("lossplug", strategy, size), "-"),
                memory.get(("pml", strategy, size), "-"),
            )
            rows.append([strategy, PML_MINERS[strategy], size, *cells])
    report.add(
        name,
        f'The plugin (`average="active"`, PyTorch backend, eager) against '
        f"pytorch-metric-learning's `TripletMarginLoss(margin={MARGIN})` with the miner shown, "
        "both with `LpDistance(normalize_embeddings=False)` (Euclidean), dim "
        f"{DIM}, {PER_CLASS} samples per identity; forward + backward (gradient of the "
        f"embeddings). Time: median of {args.runs} runs taking turns in one process; ratio: "
        "median of the per-run ratios lossplug / PML (below 1: lossplug is faster; range in "
        "brackets). Memory: peak RSS growth of one pass, one fresh process per implementation "
        f"and strategy. {_slow_rule(args)} PML's semihard miner keeps every semi-hard "
        "triplet, the plugin one negative per (anchor, positive) pair (FaceNet's rule), so "
        "their semi_hard losses differ by definition; batch_all and batch_hard compute the "
        "same loss.",
        benchlib.table(
            [
                "strategy",
                "PML miner",
                "B",
                *benchlib.PML_COLUMNS,
                "loss lossplug / PML",
            ],
            "llrrrrrrrr",
            rows,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 256 and 512, 3 runs")
    parser.add_argument("--sizes", type=int, nargs="*", help="batch sizes (default 256..4096)")
    parser.add_argument(
        "--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES), help="(all)"
    )
    parser.add_argument(
        "--runs", "--repeats", type=int, default=None, help="timed runs (default 5; quick 3)"
    )
    parser.add_argument(
        "--naive-limit-gb",
        type=float,
        default=1.0,
        help="skip naive B^3 runs whose (B, B, B) float32 tensor exceeds this",
    )
    parser.add_argument(
        "--max-pass-seconds",
        type=float,
        default=10.0,
        help="per-backend and PML tables: skip the larger batches of a strategy once one pass "
        "takes longer than this, and run fewer runs where they would take 6x as long",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated Keras backends for triplet_backends.md (default: the installed "
        "ones of tensorflow, jax, torch; empty: skip)",
    )
    parser.add_argument(
        "--pml-sizes",
        type=int,
        nargs="*",
        default=None,
        help="batch sizes of the PML comparison (default 1024 4096; quick 256 512; empty: skip)",
    )
    benchlib.add_output_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    handlers = {"memory": memory_worker, "backend": backend_worker, "pml": pml_worker}
    if benchlib.worker_main(handlers):
        return
    os.environ["KERAS_BACKEND"] = "tensorflow"  # this process: the TensorFlow table
    kind = benchlib.run_kind(
        parser,
        args,
        ("sizes", "strategies", "runs", "naive_limit_gb", "pml_sizes", "max_pass_seconds"),
    )
    report = benchlib.Report(args, kind)
    args.runs = args.runs or (3 if args.quick else 5)
    sizes = sorted(args.sizes or ([256, 512] if args.quick else [256, 512, 1024, 2048, 4096]))
    if args.pml_sizes is None:
        args.pml_sizes = [256, 512] if args.quick else [1024, 4096]
    if args.backends is None:
        backends = benchlib.installed_backends()
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    started = time.perf_counter()
    plugin_table(args, report, sizes)
    print(f"  (plugin table: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if backends:
        backends_table(args, report, sizes, backends)
        print(f"  (backends: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    else:
        report.add("triplet_backends", "Per-backend times were not requested (`--backends ''`).")
    pml_table(args, report, sorted(args.pml_sizes))
    report.finish()
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

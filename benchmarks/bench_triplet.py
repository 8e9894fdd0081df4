"""Triplet mining: the ``triplet`` plugin against the B x B x B code a user would write.

For each strategy (batch_all, batch_hard, semi_hard) and batch size B (dim 128,
4 samples per identity), one forward + backward pass (loss and its gradient
with respect to the embeddings, in a ``tf.function``) is timed and its memory
measured, for

- ``plugin``: ``lossplug_triplet`` (sorted negatives + cumulative sums, O(B^2) memory);
- ``naive``: the straightforward TensorFlow version: the float32 Gram-matrix
  distances, then for batch_all and semi_hard the (B, B, B) broadcast of every
  (anchor, positive, negative) hinge and mask (as in the widely copied
  blog recipe and TF Addons' TripletSemiHardLoss, which tiles to (B^2, B));
  batch_hard needs only (B, B) masks in any implementation.

Time is the median of the repeats, the two implementations interleaved in one
process so that their ratio is robust to other load on the machine. Memory is
measured in fresh subprocesses, one per implementation and strategy (the
naive B^3 runs must not inflate the plugin's numbers: TensorFlow's CPU
allocator keeps memory it once used): after a warm-up on a batch of 8 (which
traces the function), for each batch size the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), one pass runs, and the reported value is the peak
RSS during the pass minus the RSS before it: the transient working set of the
pass (Linux only). Naive batch_all /
semi_hard runs are skipped where one (B, B, B) float32 tensor would exceed
``--naive-limit-gb`` (the analytic size of the largest tensor is printed for
every cell).

    python benchmarks/bench_triplet.py --quick     # B = 256, 512 (~1 minute)
    python benchmarks/bench_triplet.py             # B = 256 ... 4096 (~4-5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from peak_memory import peak_rss, reset_peak_rss

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DIM = 128
PER_CLASS = 4
MARGIN = 0.5
STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
CUBIC = {"batch_all", "semi_hard"}


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


def plugin_loss(tf, embeddings, labels, strategy):
    import lossplug_triplet

    config = lossplug_triplet.SPEC.make_config({"mining": strategy, "margin": MARGIN})
    return lossplug_triplet.triplet_loss(
        {"y_true": labels}, {"embeddings": embeddings}, config
    ).loss


def largest_tensor_bytes(impl: str, strategy: str, batch: int) -> int:
    """Analytic size of the largest single intermediate tensor of one pass."""
    if impl == "naive" and strategy in CUBIC:
        return 4 * batch**3  # float32 (B, B, B) hinge / candidates
    return 4 * batch**2  # float32 (B, B) distances


# ----------------------------------------------------------------------------- measurements
def make_step(tf, impl: str, strategy: str):
    fn = plugin_loss if impl == "plugin" else naive_loss

    @tf.function(
        input_signature=[tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None], tf.int32)]
    )
    def step(embeddings, labels):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = fn(tf, embeddings, labels, strategy)
        return loss, tape.gradient(loss, embeddings)

    return step


def batch(np, tf, size: int):
    rng = np.random.default_rng(size)
    embeddings = tf.constant(rng.normal(size=(size, DIM)).astype("float32"))
    labels = tf.constant((np.arange(size) // PER_CLASS).astype("int32"))
    return embeddings, labels


def run_once(step, embeddings, labels) -> float:
    start = time.perf_counter()
    _, grad = step(embeddings, labels)
    grad.numpy()
    return time.perf_counter() - start


def time_both(strategy: str, size: int, repeats: int, with_naive: bool) -> dict:
    """Median times, the two implementations interleaved in this process (robust ratios)."""
    import numpy as np
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one tf.function per configuration: retracing is expected
    embeddings, labels = batch(np, tf, size)
    impls = ["plugin", "naive"] if with_naive else ["plugin"]
    steps = {impl: make_step(tf, impl, strategy) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for impl in impls:
        run_once(steps[impl], embeddings, labels)  # trace and warm up
    for _ in range(repeats):
        for impl in impls:
            times[impl].append(run_once(steps[impl], embeddings, labels))
    return {impl: statistics.median(values) for impl, values in times.items()}


def distance_accuracy() -> tuple[float, float, float]:
    """Max absolute error of float32 Gram distances vs the plugin's, on close pairs.

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
    ours = pairwise_distances(e, metric="euclidean").numpy()
    first, second = np.arange(0, 256, 2), np.arange(1, 256, 2)
    return (
        float(exact[first, second].mean()),
        float(np.abs(naive - exact)[first, second].max()),
        float(np.abs(ours - exact)[first, second].max()),
    )


def memory_worker(impl: str, strategy: str, sizes: list[int]) -> list[float]:
    """Peak RSS growth (MB) of one pass per size, in this fresh process."""
    import numpy as np
    import tensorflow as tf

    step = make_step(tf, impl, strategy)
    run_once(step, *batch(np, tf, 8))  # trace
    growth = []
    for size in sizes:
        embeddings, labels = batch(np, tf, size)
        before = reset_peak_rss()
        run_once(step, embeddings, labels)
        growth.append(peak_rss() - before)
    return growth


def measure_memory(impl: str, strategy: str, sizes: list[int]) -> list[float] | str:
    if not sizes:
        return []
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-worker", impl, strategy, *map(str, sizes)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def fmt_mb(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.1f} MB"


def fmt_bytes(value: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 256 and 512 only")
    parser.add_argument("--sizes", type=int, nargs="*", help="batch sizes (default 256..4096)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--naive-limit-gb",
        type=float,
        default=1.0,
        help="skip naive B^3 runs whose (B, B, B) float32 tensor exceeds this",
    )
    parser.add_argument("--memory-worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        impl, strategy, *sizes = args.memory_worker
        print(json.dumps(memory_worker(impl, strategy, [int(s) for s in sizes])))
        return
    sizes = sorted(args.sizes or ([256, 512] if args.quick else [256, 512, 1024, 2048, 4096]))
    started = time.perf_counter()

    def naive_runs(strategy: str, size: int) -> bool:
        return strategy not in CUBIC or 4 * size**3 <= args.naive_limit_gb * 2**30

    timings = {}
    for strategy in STRATEGIES:
        for size in sizes:
            repeats = args.repeats or (5 if size <= 1024 else 3)
            timings[strategy, size] = time_both(strategy, size, repeats, naive_runs(strategy, size))
            print(
                f"  timed {strategy} B={size}: {timings[strategy, size]}",
                file=sys.stderr,
                flush=True,
            )
    memory = {}
    for strategy in STRATEGIES:
        for impl in ("plugin", "naive"):
            chosen = [s for s in sizes if impl == "plugin" or naive_runs(strategy, s)]
            result = measure_memory(impl, strategy, chosen)
            print(f"  memory {impl} {strategy}: {result}", file=sys.stderr, flush=True)
            for i, size in enumerate(chosen):
                memory[impl, strategy, size] = result if isinstance(result, str) else result[i]

    print(
        f"\nTriplet mining, forward + backward, dim {DIM}, {PER_CLASS} samples per identity, "
        f"margin {MARGIN}, float32, {os.cpu_count()} CPU cores. Time: median of repeats, both "
        "implementations interleaved in one process. Memory: peak RSS growth of one pass "
        "(one fresh process per implementation and strategy).\n"
    )
    print(
        "| strategy | B | plugin time | naive time | time ratio (naive / plugin) | "
        "plugin memory | naive memory | memory ratio | largest tensor plugin / naive |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy in STRATEGIES:
        for size in sizes:
            t = timings[strategy, size]
            ours_m = memory["plugin", strategy, size]
            largest = (
                f"{fmt_bytes(largest_tensor_bytes('plugin', strategy, size))} / "
                f"{fmt_bytes(largest_tensor_bytes('naive', strategy, size))}"
            )
            ours_m_text = ours_m if isinstance(ours_m, str) else fmt_mb(ours_m)
            if "naive" not in t:
                cells = ("not run", "-", ours_m_text, "not run (B^3 tensors too large)", "-")
            else:
                naive_m = memory["naive", strategy, size]
                if isinstance(naive_m, str) or isinstance(ours_m, str):
                    ratio_m, naive_text = "-", str(naive_m)
                else:
                    ratio_m, naive_text = f"{naive_m / max(ours_m, 1.0):.1f}x", fmt_mb(naive_m)
                cells = (
                    f"{t['naive'] * 1e3:,.1f} ms",
                    f"{t['naive'] / t['plugin']:.2f}x",
                    ours_m_text,
                    naive_text,
                    ratio_m,
                )
            print(
                f"| {strategy} | {size} | {t['plugin'] * 1e3:,.1f} ms | {cells[0]} | "
                f"{cells[1]} | {cells[2]} | {cells[3]} | {cells[4]} | {largest} |"
            )
    true, naive_error, ours_error = distance_accuracy()
    print(
        f"\nDistance accuracy (pairs {true:.2e} apart, embedding norm 10, dim {DIM}): max "
        f"absolute error {naive_error:.2e} with the float32 Gram matrix, {ours_error:.2e} "
        "with the plugin's float64 Gram matrix."
    )
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

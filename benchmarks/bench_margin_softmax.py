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


def make_step(tf, impl: str, weights):
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


def time_both(classes: int, repeats: int) -> dict:
    """Median times, both implementations interleaved in this process (robust ratios)."""
    import numpy as np
    import tensorflow as tf

    weights, features, labels = setup(np, tf, classes, BATCH)
    steps = {impl: make_step(tf, impl, weights) for impl in ("plugin", "naive")}
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    for step in steps.values():
        run_once(step, features, labels)
    for _ in range(repeats):
        for impl, step in steps.items():
            elapsed, finite = run_once(step, features, labels)
            assert finite, f"{impl}: non-finite gradient"
            times[impl].append(elapsed)
    return {impl: statistics.median(values) for impl, values in times.items()}


def memory_worker(impl: str, classes: int) -> float:
    """Peak RSS growth (MB) of one pass, in this fresh process, after a warm-up with 8 samples."""
    import numpy as np
    import tensorflow as tf

    weights, features, labels = setup(np, tf, classes, BATCH)
    step = make_step(tf, impl, weights)
    run_once(step, features[:8], labels[:8])
    before = reset_peak_rss()
    run_once(step, features, labels)
    return peak_rss() - before


def measure_memory(impl: str, classes: int) -> float | str:
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-worker", impl, str(classes)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_mb(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="C = 1,000 and 10,000 only")
    parser.add_argument("--classes", type=int, nargs="*")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--memory-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        impl, classes = args.memory_worker
        print(json.dumps(memory_worker(impl, int(classes))))
        return
    sizes = args.classes or ([1000, 10000] if args.quick else [1000, 10000, 100000])
    started = time.perf_counter()
    rows = []
    for classes in sizes:
        times = time_both(classes, args.repeats)
        memory = {impl: measure_memory(impl, classes) for impl in ("plugin", "naive")}
        rows.append((classes, times, memory))
        print(f"  measured C={classes}: {times} {memory}", file=sys.stderr, flush=True)

    print(
        f"\nArcFace (s={SCALE:g}, m={MARGIN}), forward + backward (gradients for the features "
        f"and W), batch {BATCH}, dim {DIM}, float32, {os.cpu_count()} CPU cores. Time: median "
        "of repeats, both implementations interleaved in one process. Memory: peak RSS growth "
        "of one pass in a fresh process per cell.\n"
    )
    print(
        "| classes | plugin time | naive time | time ratio (naive / plugin) | plugin memory | "
        "naive memory | memory ratio | one (B, C) float32 matrix |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for classes, times, memory in rows:
        matrix = f"{BATCH * classes * 4 / 2**20:,.1f} MB"
        ours, naive = memory["plugin"], memory["naive"]
        if isinstance(ours, str) or isinstance(naive, str):
            mem_cells = (str(ours), str(naive), "-")
        else:
            mem_cells = (fmt_mb(ours), fmt_mb(naive), f"{naive / max(ours, 1.0):.1f}x")
        print(
            f"| {classes:,} | {times['plugin'] * 1e3:,.1f} ms | {times['naive'] * 1e3:,.1f} ms | "
            f"{times['naive'] / times['plugin']:.2f}x | {mem_cells[0]} | {mem_cells[1]} | "
            f"{mem_cells[2]} | {matrix} |"
        )
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

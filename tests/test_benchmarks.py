"""The benchmarks in benchmarks/ still run (smallest sizes; their numbers live in docs/).

These are smoke runs, not timings: each benchmark must finish and print its table with
positive, finite numbers, so that the commands in docs/performance*.md stay true.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The benchmark scripts measure against hand-written TensorFlow baselines in one process:
# they run on the TensorFlow backend (docs/performance.md).
pytestmark = [pytest.mark.e2e, pytest.mark.backends("tensorflow")]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_step_benchmark_prints_ratios():
    out = run_benchmark("bench_train_step.py", "--quick", "--rounds", "1")
    rows = re.findall(r"^\s+(False|True)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["False", "True"], out
    for _, hand, ours, ratio in rows:
        hand, ours, ratio = float(hand), float(ours), float(ratio)
        assert hand > 0 and ours > 0
        assert ratio == pytest.approx(ours / hand, abs=2e-3)


def test_list_benchmark_prints_times():
    out = run_benchmark("bench_list.py", "--count", "5", "--repeats", "1")
    times = re.findall(r"([\d.]+) ms", out)
    assert len(times) == 3, out
    assert all(0 < float(t) < math.inf for t in times)


@pytest.mark.parametrize(
    ("script", "args", "first_column"),
    [
        ("bench_triplet.py", ["--sizes", "32", "--repeats", "1"], "batch_all"),
        ("bench_margin_softmax.py", ["--classes", "100", "--repeats", "1"], "100"),
    ],
)
def test_plugin_benchmarks_print_their_tables(script, args, first_column):
    out = run_benchmark(script, *args)
    table = [line for line in out.splitlines() if line.startswith(f"| {first_column} |")]
    assert table, out
    assert "x |" in table[0] and "MB" in table[0]


def test_center_rate_benchmark_prints_both_rules():
    out = run_benchmark("bench_center_rate.py", "--steps", "2")
    assert out.startswith("date: ") and "\nmachine: " in out
    rows = re.findall(r"^\| (gradient|paper) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert [(rule, alpha) for rule, alpha, *_ in rows] == [
        ("gradient", "0.1"),
        ("gradient", "1.0"),
        ("paper", "0.1"),
        ("paper", "1.0"),
    ], out
    assert all(float(first) > 0 and float(mean) > 0 for *_, first, mean in rows)
    # the paper's rule: the first step is alpha times as long
    assert re.search(r"^\| paper \| 0\.1 \|.*\| 0\.100 \|", out, re.M), out

"""The benchmarks in benchmarks/ still run and write the tables the docs include.

These are smoke runs, not timings: each script runs its smallest configuration with
``--out`` into a temporary directory (so docs/generated/ is never touched) and must
write Markdown files that start with the run's header line (date, command, machine,
versions, load average) and hold a table of positive, finite numbers; every file of
docs/generated/ that the docs include must be one of the files its script writes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The benchmark scripts measure against hand-written TensorFlow baselines in one process:
# they run on the TensorFlow backend (docs/performance.md). Other backends, each in a
# worker process, are left out here to keep the runs short.
pytestmark = [pytest.mark.e2e, pytest.mark.backends("tensorflow")]
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
INCLUDE = re.compile(r'^--8<-- "docs/generated/([^"]+)"', re.MULTILINE)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
HEADER = re.compile(
    r"^Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC, (full|quick|custom) run.*: "
    r"`python benchmarks/bench_\w+\.py[^`]*--out [^`]+` \(\d+ s\)\. "
    r"Machine: .+, \d+ cores, [\d.]+ GiB RAM, .+\. "
    r"Python [\d.]+, Keras [\w.]+, TensorFlow [\w.]+, JAX [\w. ]+.*\. "
    r"Load average \(1 min\): [\d.?]+ at start, [\d.?]+ at end\.$"
)
PML = importlib.util.find_spec("pytorch_metric_learning") is not None


def doc_includes() -> set[str]:
    """The docs/generated/ files the pages include."""
    return {
        name for page in (ROOT / "docs").rglob("*.md") for name in INCLUDE.findall(page.read_text())
    }


#: Generated files that only a run with these options writes (the docs include them).
WRITTEN_WITH = {
    "margin_softmax_train_scale.md": ("--train", "scale"),
    "margin_softmax_train_compare.md": ("--train", "compare"),
}


def run_benchmark(tmp_path: Path, script: str, *args: str) -> dict[str, str]:
    """Run one script with --out; return the files it wrote, by name."""
    out = tmp_path / "generated"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = {path.name: path.read_text("utf-8") for path in sorted(out.glob("*.md"))}
    assert files, done.stdout[-3000:]
    for name, text in files.items():
        assert text in done.stdout, f"{name} is written but not printed"
    prefix = script.removeprefix("bench_").removesuffix(".py")
    own = {n for n in doc_includes() if n == f"{prefix}.md" or n.startswith(f"{prefix}_")}
    # the run's mode: the options of WRITTEN_WITH it was given (none: the default run)
    modes = {WRITTEN_WITH[n] for n in own & WRITTEN_WITH.keys()}
    mode = next((m for m in modes if " ".join(m) in " ".join(args)), ())
    included = {n for n in own if WRITTEN_WITH.get(n, ()) == mode}
    assert included <= set(files), f"the docs include files {script} does not write"
    return files


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in ``text``, as lists of cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = []
    for i, line in enumerate(lines):
        rule = re.fullmatch(r"\|(-+:?\|)+", line)
        header = i + 1 < len(lines) and re.fullmatch(r"\|(-+:?\|)+", lines[i + 1])
        if not rule and not header:
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def check_generated(text: str) -> list[list[str]]:
    """Header line, a table, and positive finite numbers in every row; returns the rows."""
    first = text.splitlines()[0]
    assert HEADER.match(first), first
    rows = table_rows(text)
    assert rows, text
    for row in rows:
        values = [float(n.replace(",", "")) for cell in row[1:] for n in NUMBER.findall(cell)]
        assert values, row
        assert all(math.isfinite(v) and v >= 0 for v in values), row
    return rows


def test_train_step_benchmark_writes_ratios(tmp_path):
    files = run_benchmark(
        tmp_path,
        "bench_train_step.py",
        "--quick",
        "--runs",
        "1",
        "--steps",
        "3",
        "--backends",
        "tensorflow",
    )
    rows = check_generated(files["train_step.md"])
    assert [(row[0], row[1]) for row in rows] == [("tensorflow", "False"), ("tensorflow", "True")]
    for _, _, shape, hand, ours, ratio, _, _, best, unguarded, unguarded_ratio, _, ubest in rows:
        assert shape == "1 x 5"  # at least 5 steps per round
        hand, ours, unguarded = float(hand), float(ours), float(unguarded)
        assert hand > 0 and ours > 0 and unguarded > 0
        # one round: the median of per-round ratios is the ratio of the medians
        assert float(ratio) == pytest.approx(ours / hand, abs=2e-3)
        assert float(unguarded_ratio) == pytest.approx(unguarded / hand, abs=2e-3)
        # ... and so is the ratio of the fastest rounds
        assert float(best) == pytest.approx(ours / hand, abs=2e-3)
        assert float(ubest) == pytest.approx(unguarded / hand, abs=2e-3)


def test_train_step_benchmark_counts_the_xla_work_of_a_jax_step(tmp_path):
    files = run_benchmark(
        tmp_path,
        "bench_train_step.py",
        "--runs",
        "1",
        "--steps",
        "3",
        "--backends",
        "jax",
        "--jit",
        "true",
    )
    timed, counted = check_generated(files["train_step.md"])
    assert (timed[0], timed[1]) == ("jax", "True")
    backend, *cells = counted
    assert backend == "jax"
    flops, work_bytes = cells[:5], cells[5:]
    for hand, ours, ratio, unguarded, unguarded_ratio in (flops, work_bytes):
        hand, ours, unguarded = float(hand), float(ours), float(unguarded)
        assert float(ratio) == pytest.approx(ours / hand, abs=2e-3)
        assert float(unguarded_ratio) == pytest.approx(unguarded / hand, abs=2e-3)
    hand, ours, _, unguarded, _ = (float(cell) for cell in flops)
    # The guarded step does the hand-written step's computation and the guard's on top; the
    # unguarded one does just as much as the hand-written step (the same loss, weighed the same).
    assert ours > unguarded > 0
    assert unguarded == pytest.approx(hand, rel=1e-3)


def test_list_benchmark_writes_times(tmp_path):
    files = run_benchmark(tmp_path, "bench_list.py", "--count", "5", "--runs", "1")
    rows = check_generated(files["list.md"])
    assert len(rows) == 3
    assert all(row[1].endswith(" ms") for row in rows)
    assert rows[1][2] == "1.00x"  # the reference row


@pytest.mark.parametrize(
    ("script", "args", "main", "first_column"),
    [
        (
            "bench_triplet.py",
            ["--sizes", "32", "--runs", "1", "--strategies", "batch_all"],
            "triplet.md",
            "batch_all",
        ),
        (
            "bench_margin_softmax.py",
            ["--classes", "100", "--runs", "1"],
            "margin_softmax.md",
            "100",
        ),
    ],
)
def test_plugin_benchmarks_write_their_tables(tmp_path, script, args, main, first_column):
    pml = "--pml-sizes" if script == "bench_triplet.py" else "--pml-classes"
    files = run_benchmark(tmp_path, script, *args, "--backends", "tensorflow", pml)
    rows = check_generated(files[main])
    assert [row[0] for row in rows] == [first_column]
    assert any(cell.endswith("x") for cell in rows[0]) and any("MB" in c for c in rows[0])
    backends = check_generated(files[main.replace(".md", "_backends.md")])
    assert [row[0] for row in backends] == [first_column]
    assert backends[0][-1].endswith(" ms")
    skipped = files[main.replace(".md", "_pml.md")]
    assert HEADER.match(skipped.splitlines()[0])
    assert ("not requested" if PML else "not installed") in skipped


@pytest.mark.skipif(not PML, reason="pytorch-metric-learning is not installed")
@pytest.mark.parametrize(
    ("script", "args", "name"),
    [
        (
            "bench_triplet.py",
            ["--sizes", "32", "--strategies", "batch_hard", "--pml-sizes", "32"],
            "triplet_pml.md",
        ),
        (
            "bench_margin_softmax.py",
            ["--classes", "100", "--pml-classes", "100"],
            "margin_softmax_pml.md",
        ),
    ],
)
def test_plugin_benchmarks_compare_with_pml(tmp_path, script, args, name):
    files = run_benchmark(tmp_path, script, *args, "--runs", "1", "--backends", "")
    (row,) = check_generated(files[name])
    assert "torch" in files[name].splitlines()[0] and "pytorch-metric-learning" in files[name]
    lossplug, pml = (float(v) for v in row[-1].split(" / "))
    assert lossplug == pytest.approx(pml, rel=1e-4)  # the same loss (batch_hard, ArcFace)


@pytest.mark.parametrize("mode", ["scale", "compare"])
def test_margin_softmax_training_benchmark_writes_its_table(tmp_path, mode):
    files = run_benchmark(
        tmp_path,
        "bench_margin_softmax.py",
        "--train",
        mode,
        *("--classes", "200", "--dim", "16", "--batch", "32", "--steps", "2"),
        *("--epochs", "1", "--samples-per-class", "2", "--eval-samples", "50"),
    )
    assert set(files) == {f"margin_softmax_train_{mode}.md"}
    rows = check_generated(files[f"margin_softmax_train_{mode}.md"])
    # compare trains the sampled and the full loss; scale only the sampled one
    assert [row[0] for row in rows] == (["0.1", "1"] if mode == "compare" else ["0.1"])
    for row in rows:
        assert row[1].endswith(" ms") and float(row[1].split()[0].replace(",", "")) > 0
    if mode == "compare":
        for *_, loss, accuracy, ceiling in rows:
            assert math.isfinite(float(loss))
            assert 0 <= float(accuracy) <= 1 and 0 < float(ceiling) <= 1


def test_center_rate_benchmark_writes_both_rules(tmp_path):
    files = run_benchmark(tmp_path, "bench_center_rate.py", "--steps", "2", "--runs", "1")
    rows = check_generated(files["center_rate.md"])
    assert [(row[0], row[1]) for row in rows] == [
        ("gradient", "0.1"),
        ("gradient", "1.0"),
        ("paper", "0.1"),
        ("paper", "1.0"),
    ]
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
    # the paper's rule: the first step is alpha times as long
    assert rows[2][4] == "0.100"

"""Time ``lossplug list`` against 500 installed (fake) plugin distributions.

Fake distributions are ``.dist-info`` directories with METADATA and
entry_points.txt in a temporary directory put on PYTHONPATH: exactly what
importlib.metadata reads for a real install. Their modules do not exist, which
also proves listing imports none of them.

Each run starts the three commands once each in a fresh interpreter, taking turns
(order reversed every run); the table gives each command's median wall time and the
median and range of its per-run ratio to ``lossplug list`` without extra plugins.

    python benchmarks/bench_list.py --write      # 500 plugins, 9 runs (~10 s)
    python benchmarks/bench_list.py --quick      # 3 runs

Without ``--write`` (docs/generated/list.md) or ``--out DIR`` the table is only printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib


def make_fake_site(root: Path, count: int) -> None:
    for i in range(count):
        info = root / f"lossplug_fake_{i}-1.0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: lossplug-fake-{i}\nVersion: 1.0.0\n"
            f"Summary: fake loss number {i}\n"
        )
        (info / "entry_points.txt").write_text(f"[lossplug]\nfake_{i} = lossplug_fake_{i}\n")
        (info / "RECORD").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs")
    parser.add_argument("--count", type=int, default=500, help="fake plugin distributions")
    parser.add_argument(
        "--runs", "--repeats", type=int, default=None, help="runs (default 9; quick 3)"
    )
    benchlib.add_output_arguments(parser)
    args = parser.parse_args()
    report = benchlib.Report(args, benchlib.run_kind(parser, args, ("count", "runs")))
    runs = args.runs or (3 if args.quick else 9)
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp, "empty"), Path(tmp, "full")
        empty.mkdir()
        full.mkdir()
        make_fake_site(full, args.count)
        listing = [sys.executable, "-m", "lossplug", "list", "--json"]
        commands = {
            "`python -c 'import lossplug'`": ([sys.executable, "-c", "import lossplug"], empty),
            "`lossplug list` (no extra plugins)": (listing, empty),
            f"`lossplug list` ({args.count} plugins)": (listing, full),
        }

        def start(cmd: list[str], site: Path):
            env = {**os.environ, "PYTHONPATH": str(site)}
            return lambda: subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)

        passes = {label: start(*command) for label, command in commands.items()}
        times = benchlib.interleaved(passes, runs)
    reference = times["`lossplug list` (no extra plugins)"]
    rows = [
        [label, benchlib.fmt_times(t), benchlib.fmt_ratio(benchlib.ratios(t, reference))]
        for label, t in times.items()
    ]
    report.add(
        "list",
        f"Median wall time of {runs} runs of each command in a fresh interpreter (range in "
        "brackets), the commands taking turns; the ratio is the median of the per-run ratios "
        "to `lossplug list` without extra plugins.",
        benchlib.table(["command", "time", "vs. no extra plugins"], "lrr", rows),
    )
    report.finish()


if __name__ == "__main__":
    main()

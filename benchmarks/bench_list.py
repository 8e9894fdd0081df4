"""Time ``lossplug list`` against 500 installed (fake) plugin distributions.

Fake distributions are ``.dist-info`` directories with METADATA and
entry_points.txt in a temporary directory put on PYTHONPATH: exactly what
importlib.metadata reads for a real install. Their modules do not exist, which
also proves listing imports none of them.

    python benchmarks/bench_list.py [--count 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty, full = Path(tmp, "empty"), Path(tmp, "full")
        empty.mkdir()
        full.mkdir()
        make_fake_site(full, args.count)
        base = [sys.executable, "-m", "lossplug", "list", "--json"]
        python_only = [sys.executable, "-c", "import lossplug"]
        rows = []
        for label, cmd, site in (
            ("python -c 'import lossplug'", python_only, empty),
            ("lossplug list (0 extra plugins)", base, empty),
            (f"lossplug list ({args.count} plugins)", base, full),
        ):
            env = {**os.environ, "PYTHONPATH": str(site)}
            times = [timed(cmd, env) for _ in range(args.repeats)]
            rows.append((label, statistics.median(times)))
        ref = rows[1][1]
        for label, median in rows:
            print(f"{label:40s} {median * 1e3:8.1f} ms   x{median / ref:5.2f}")


if __name__ == "__main__":
    main()

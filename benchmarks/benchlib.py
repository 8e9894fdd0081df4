"""What the benchmark scripts share: the run's record, spread statistics, Markdown tables,
workers in fresh processes, and backend-neutral timing of a loss and its gradient.

Every script builds a :class:`Report`: Markdown blocks (tables, short captions) per
generated file. At the end, each file gets the run's header line (:meth:`Report.header`:
date, run kind, command, machine, versions, load average) and is printed; with ``--write``
it is written to ``docs/generated/NAME.md``, which the docs include with
``--8<-- "docs/generated/NAME.md"``; with ``--out DIR`` to ``DIR/NAME.md`` instead (the
tests use a temporary directory, so they never touch the docs). Without either flag
nothing is written.

This module imports no Keras backend at import time: a parent process that only starts
workers (:func:`run_worker`, one Keras backend per process) stays light.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "docs" / "generated"
#: The first words of every generated file; tests look for them.
HEADER_START = "Measured "
DASH = "\u2013"

#: Distributions whose versions the header always gives, and those it gives once used.
ALWAYS = (("Keras", "keras"), ("TensorFlow", "tensorflow"), ("JAX", "jax"))
WHEN_USED = (("torch", "torch"), ("pytorch-metric-learning", "pytorch-metric-learning"))


# ----------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def total_ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def operating_system() -> str:
    name = platform.system()
    try:
        with open("/etc/os-release") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{name}, kernel {platform.release()}"


def machine() -> str:
    """CPU model, core count, total RAM and OS, in one phrase."""
    ram = total_ram_gib()
    ram_text = "unknown RAM" if ram is None else f"{ram:.1f} GiB RAM"
    return f"{cpu_model()}, {os.cpu_count()} cores, {ram_text}, {operating_system()}"


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(used: Iterable[str] = ()) -> str:
    """Python, Keras, TensorFlow and JAX; torch and PML when the run used them."""
    imported = {name for name in ("torch", "pytorch_metric_learning") if name in sys.modules}
    used = set(used) | imported
    used = {name.replace("_", "-") for name in used}
    parts = [f"Python {platform.python_version()}"]
    for label, dist in ALWAYS + tuple(w for w in WHEN_USED if w[1] in used):
        parts.append(f"{label} {version(dist) or 'not installed'}")
    return ", ".join(parts)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def command_line() -> str:
    """The command that started this process, the script relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = sys.argv[0]
    return shlex.join(["python", shown, *sys.argv[1:]])


# ----------------------------------------------------------------------------- the report
def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--write",
        action="store_true",
        help=f"overwrite the generated tables in {GENERATED.relative_to(ROOT)}/ (the docs "
        "include them); without it the tables are only printed",
    )
    group.add_argument(
        "--out", metavar="DIR", help="write the generated tables to DIR instead (implies --write)"
    )


def run_kind(
    parser: argparse.ArgumentParser, args: argparse.Namespace, sizing: Sequence[str]
) -> str:
    """The run's kind: ``custom`` if a sizing option differs from its default, else ``quick``
    (``--quick``) or ``full``."""
    if any(getattr(args, name) != parser.get_default(name) for name in sizing):
        return "custom"
    return "quick" if getattr(args, "quick", False) else "full"


class Report:
    """The Markdown files one run generates, each headed by the run's record."""

    def __init__(self, args: argparse.Namespace, kind: str) -> None:
        self.kind = kind
        self.started = datetime.datetime.now(datetime.UTC)
        self.start_load = load_average()
        self.command = command_line()
        self.used: set[str] = set()
        self.files: dict[str, list[str]] = {}
        out = getattr(args, "out", None)
        self.directory = Path(out) if out else (GENERATED if args.write else None)
        self.clock = time.perf_counter()

    def add(self, name: str, *blocks: str) -> None:
        """Append Markdown blocks (paragraphs, tables) to the file ``NAME.md``."""
        self.files.setdefault(name, []).extend(block.strip("\n") for block in blocks)

    def header(self) -> str:
        kind = {
            "quick": "quick run (--quick: fewer sizes and repetitions; indicative numbers only)",
            "full": "full run",
            "custom": "custom run (non-default sizes or repetitions)",
        }[self.kind]
        loads = [
            "?" if value is None else f"{value:.2f}" for value in (self.start_load, load_average())
        ]
        return (
            f"{HEADER_START}{self.started:%Y-%m-%d %H:%M} UTC, {kind}: `{self.command}` "
            f"({time.perf_counter() - self.clock:.0f} s). Machine: {machine()}. "
            f"{versions(self.used)}. Load average (1 min): {loads[0]} at start, "
            f"{loads[1]} at end."
        )

    def finish(self) -> None:
        """Print every file and write them where ``--write`` / ``--out`` says."""
        header = self.header()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        for name, blocks in self.files.items():
            text = "\n\n".join([header, *blocks]) + "\n"
            if self.directory is None:
                print(f"\n==> {name}.md (not written: pass --write or --out DIR)\n")
            else:
                path = self.directory / f"{name}.md"
                path.write_text(text, "utf-8")
                print(f"\n==> {path}\n")
            print(text, end="", flush=True)


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; ``align`` has one letter per column, "l" or "r"."""
    if len(align) != len(header):
        raise ValueError("one alignment letter per column")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- statistics
def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles (inclusive method; one value is its own quartiles)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Ratios of paired measurements (run i of one implementation over run i of the other)."""
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def fmt_range(low: float, high: float, digits: int = 3) -> str:
    """ "low to high", with an en dash between (the range sign of the docs)."""
    return f"{low:,.{digits}f} {DASH} {high:,.{digits}f}"


def fmt_ratio(values: Sequence[float], digits: int = 2, unit: str = "x") -> str:
    """The median ratio and, over several runs, its range: ``1.93x (1.85 to 2.01)``.

    The range is written with an en dash, as the docs do."""
    median = statistics.median(values)
    text = f"{median:.{digits}f}{unit}"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}{DASH}{max(values):.{digits}f})"
    return text


def fmt_times(seconds: Sequence[float]) -> str:
    """The median time of several runs in ms and their range: ``12.3 ms (11.8 to 13.0)``.

    The range is written with an en dash, as the docs do."""
    text = fmt_ms(seconds)
    if len(seconds) > 1:
        text += f" ({min(seconds) * 1e3:,.1f}{DASH}{max(seconds) * 1e3:,.1f})"
    return text


def fmt_ms(seconds: Sequence[float] | float) -> str:
    """A median time (of several runs, or one) in milliseconds."""
    value = statistics.median(seconds) if isinstance(seconds, Sequence) else seconds
    value *= 1e3
    return f"{value:,.1f} ms" if value >= 1 else f"{value:.3f} ms"


def fmt_mb(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.1f} MB"


def fmt_bytes(value: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:.0f} B"


def interleaved(
    passes: Mapping[str, Callable[[], Any]],
    runs: int,
    check: Callable[[str, Any], None] | None = None,
    budget: float | None = None,
) -> dict[str, list[float]]:
    """Wall times of ``runs`` passes of each callable, taking turns (order reversed every run)
    after one untimed warm-up pass each, so that all share the machine's drift and noise.

    ``check(name, result)``, if given, sees what every pass returned, outside the timing.
    ``budget`` (seconds) lowers ``runs`` (to 1 at least) where the warm-up passes show
    that the runs would take longer than that.
    """
    order = list(passes)
    warm_up = time.perf_counter()
    for name, fn in passes.items():
        result = fn()
        if check is not None:
            check(name, result)
    warm_up = time.perf_counter() - warm_up
    if budget is not None and warm_up * runs > budget:
        runs = max(1, int(budget // warm_up))
    times: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(runs):
        for name in order:
            start = time.perf_counter()
            result = passes[name]()
            times[name].append(time.perf_counter() - start)
            if check is not None:
                check(name, result)
        order.reverse()
    return times


# ----------------------------------------------------------------------------- workers
def run_worker(
    script: str, spec: Mapping[str, Any], *, backend: str | None = None, timeout: float = 1800
) -> Any:
    """Run ``script --worker SPEC`` in a fresh process (Keras backend ``backend``) and return
    the JSON value its last output line holds, or a short error text if it failed."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return "failed: " + (lines[-1] if lines else f"exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(handlers: Mapping[str, Callable[[dict], Any]]) -> bool:
    """If this process is a worker (``--worker SPEC``), run the handler ``SPEC["task"]``,
    print its JSON result and return True."""
    if "--worker" not in sys.argv:
        return False
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    print(json.dumps(handlers[spec["task"]](spec)), flush=True)
    return True


def installed_backends() -> list[str]:
    """The Keras backends whose framework is installed, in lossplug's order of preference."""
    dists = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
    return [name for name, dist in dists.items() if version(dist) is not None]


def pml_available() -> bool:
    return version("pytorch-metric-learning") is not None


def pml_skipped(sizes: Sequence[Any], option: str) -> str | None:
    """Why a PML comparison does not run (``option``: the flag listing its sizes), or None."""
    if not pml_available():
        return (
            "pytorch-metric-learning is not installed, so the PML comparison was skipped "
            "(`pip install pytorch-metric-learning` and run again to get it)."
        )
    if not sizes:
        return f"The PML comparison was not requested (`{option}` is empty)."
    return None


#: The columns of a PML comparison after its configuration columns (then the losses).
PML_COLUMNS = (
    "lossplug time",
    "PML time",
    "time ratio (lossplug / PML)",
    "lossplug memory",
    "PML memory",
    "memory ratio (lossplug / PML)",
)


def pml_cells(timed: Any, ours_memory: Any, pml_memory: Any) -> list[str]:
    """The :data:`PML_COLUMNS` cells and the loss cell of one configuration.

    ``timed``: the worker's ``{"times": {impl: seconds}, "loss": {impl: value}}`` or a
    string saying why it was not timed; memories in bytes or such a string.
    """
    if isinstance(ours_memory, str) or isinstance(pml_memory, str):
        memory = [str(ours_memory), str(pml_memory), "-"]
    else:
        ratio = ours_memory / max(pml_memory, 1.0)
        memory = [fmt_mb(ours_memory), fmt_mb(pml_memory), f"{ratio:.2f}x"]
    if isinstance(timed, str):
        return [timed, "-", "-", *memory, "-"]
    times, loss = timed["times"], timed["loss"]
    return [
        fmt_ms(times["lossplug"]),
        fmt_ms(times["pml"]),
        fmt_ratio(ratios(times["lossplug"], times["pml"])),
        *memory,
        f"{loss['lossplug']:.4f} / {loss['pml']:.4f}",
    ]


# ----------------------------------------------------------------------------- one backend
def value_and_grad(fn: Callable[..., Any], wrt: Sequence[int]) -> Callable[..., Any]:
    """``step(*args) -> (value, [gradients of value w.r.t. args[i] for i in wrt])``, compiled
    the way each Keras backend runs a training step: ``tf.function`` on TensorFlow,
    ``jax.jit`` of ``jax.value_and_grad`` on JAX, eager autograd on PyTorch (Keras' own
    default there: ``jit_compile`` is False unless asked for). ``fn`` returns a scalar."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(jax.value_and_grad(fn, argnums=tuple(wrt)))
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(autograph=False)
        def tf_step(*args: Any) -> Any:
            with tf.GradientTape() as tape:
                for i in wrt:
                    tape.watch(args[i])
                value = fn(*args)
            return value, tape.gradient(value, [args[i] for i in wrt])

        return tf_step
    if backend == "torch":
        import torch

        def torch_step(*args: Any) -> Any:
            args = [a.detach().requires_grad_(True) if i in wrt else a for i, a in enumerate(args)]
            value = fn(*args)
            return value, list(torch.autograd.grad(value, [args[i] for i in wrt]))

        return torch_step
    raise ValueError(f"unsupported Keras backend {backend!r}")


def finish(result: Any) -> Any:
    """Wait until a step's (value, gradients) are computed; return them as NumPy arrays."""
    import keras

    value, grads = result
    if keras.backend.backend() == "torch":
        return value.detach().numpy(), [g.detach().numpy() for g in grads]
    return keras.ops.convert_to_numpy(value), [keras.ops.convert_to_numpy(g) for g in grads]

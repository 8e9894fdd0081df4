"""Results of the conformance kit, written as bug reports."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ..properties import Example
from ..specs import PluginSpec, config_to_dict

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_SNIPPET_ELEMENTS = 64


class KitFailure(AssertionError):
    """A check's failure, with the example it was observed on if it differs from the drawn one.

    ``detail`` names the offending values; ``example`` (optional) is the
    transformed example the plugin was called with (cast, permuted, perfect...);
    ``call`` holds extra :func:`lossplug.testing.call_plugin` keywords (``dtype``).
    """

    def __init__(
        self, detail: str, *, example: Example | None = None, call: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.example = example
        self.call = dict(call or {})


@attrs.define
class CheckResult:
    """The outcome of one check of one plugin."""

    plugin: str
    check: str  #: the check id (also the pytest id)
    title: str  #: what is checked, one line
    status: str  #: passed, failed or skipped
    seconds: float = 0.0
    examples: int = 0  #: examples the check ran (Hypothesis' shrinking included)
    message: str = ""  #: the bug report when failed, the reason when skipped
    example: Example | None = None  #: the minimal falsifying example
    error: BaseException | None = attrs.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@attrs.define
class Report:
    """All checks of one plugin."""

    plugin: str
    profile: str
    seed: int
    results: list[CheckResult] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAILED]

    def result(self, check: str) -> CheckResult:
        for r in self.results:
            if r.check == check:
                return r
        raise KeyError(check)

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in (PASSED, FAILED, SKIPPED)}
        parts = [f"{counts[PASSED]} passed", f"{counts[FAILED]} failed"]
        if counts[SKIPPED]:
            parts.append(f"{counts[SKIPPED]} skipped")
        return (
            f"{self.plugin}: " + ", ".join(parts) + f" (profile {self.profile}, seed {self.seed})"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        for r in self.results:
            lines.append(f"  {r.status.upper():8s} {r.check:22s} {r.title}")
        for r in self.failures:
            lines.extend(["", r.message])
        return "\n".join(lines)


# ---------------------------------------------------------------------- formatting
def _array_text(value: Any, indent: str) -> str:
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":
        arr = arr.astype(np.float32)
    text = np.array2string(
        arr, precision=6, threshold=48, edgeitems=3, max_line_width=96, separator=", "
    )
    return "\n".join(indent + line for line in text.splitlines())


def _describe_value(value: Any) -> str:
    arr = np.asarray(value)
    desc = f"{arr.dtype.name} {tuple(arr.shape)}"
    if (arr.size and arr.dtype.kind in "fiub") or (arr.size and arr.dtype.name == "bfloat16"):
        numeric = arr.astype(np.float64)
        finite = numeric[np.isfinite(numeric)]
        if finite.size:
            desc += f", min {finite.min():.6g}, max {finite.max():.6g}"
        bad = int(numeric.size - finite.size)
        if bad:
            desc += f", {bad} non-finite"
    return desc


def describe_example(spec: PluginSpec | None, example: Example, indent: str = "  ") -> str:
    """Every tensor (kind, dtype, shape, range, values), the config and the state of ``example``."""
    kinds = {}
    if spec is not None:
        kinds = {(t.source.value, t.name): t.kind.value for t in spec.tensors}
    lines = [f"{indent}config: {_config_text(example.config)}"]
    for source, mapping in (("outputs", example.outputs), ("inputs", example.inputs)):
        for name, value in mapping.items():
            kind = kinds.get((source, name), "")
            lines.append(
                f"{indent}{source}[{name!r}]: {kind + ', ' if kind else ''}{_describe_value(value)}"
            )
            lines.append(_array_text(value, indent + "    "))
    for name, value in (example.state or {}).items():
        lines.append(f"{indent}state[{name!r}]: {_describe_value(value)}")
        lines.append(_array_text(value, indent + "    "))
    return "\n".join(lines)


def _config_text(config: Any) -> str:
    try:
        values = config_to_dict(config)
    except Exception:  # not an attrs instance (a custom strategy's value)
        return repr(config)
    return "{" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + "}"


def _literal(value: Any) -> str | None:
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":
        return f"np.array({arr.astype(np.float32).tolist()!r}, dtype='float32')"
    if arr.dtype.kind not in "fiub":
        return None
    return f"np.array({arr.tolist()!r}, dtype={arr.dtype.name!r})"


def python_snippet(
    plugin: str, example: Example, call: Mapping[str, Any] | None = None
) -> str | None:
    """A ``call_plugin(...)`` line reproducing ``example``, if the arrays are small enough."""
    total = 0
    parts: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}, "state": {}}
    for section, mapping in (
        ("inputs", example.inputs),
        ("outputs", example.outputs),
        ("state", example.state or {}),
    ):
        for name, value in mapping.items():
            arr = np.asarray(value)
            total += arr.size
            literal = _literal(arr)
            if literal is None or total > _MAX_SNIPPET_ELEMENTS:
                return None
            parts[section][name] = literal

    def mapping_text(d: dict[str, str]) -> str:
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in d.items()) + "}"

    args = [repr(plugin), mapping_text(parts["inputs"]), mapping_text(parts["outputs"])]
    with contextlib.suppress(Exception):
        args.append(f"config={config_to_dict(example.config)!r}")
    if parts["state"]:
        args.append(f"state={mapping_text(parts['state'])}")
    for key, value in (call or {}).items():
        args.append(f"{key}={value!r}")
    return (
        "import numpy as np; from lossplug.testing import call_plugin\n"
        f"    loss, metrics = call_plugin({', '.join(args)})"
    )


def failure_report(
    *,
    plugin: str,
    spec: PluginSpec | None,
    check: str,
    title: str,
    claim: str | None,
    error: BaseException,
    example: Example | None,
    examples_run: int,
    profile: str,
    seed: int,
    nodeid: str | None = None,
) -> str:
    """The bug-report text of one failed check."""
    where = ""
    if spec is not None:
        from ..registry import IN_PROCESS, registry

        try:
            entry = registry.entry(plugin)
            where = (
                " (registered in-process)"
                if entry.distribution == IN_PROCESS
                else f" (from {entry.distribution} {entry.version})"
            )
        except Exception:
            where = ""
    lines = [f"lossplug conformance failure: plugin {plugin!r}{where}, check {check!r}"]
    lines.append(f"  property: {title}" + (f" [claimed: {claim}]" if claim else ""))
    shown = example
    call: dict[str, Any] = {}
    if isinstance(error, KitFailure):
        lines.append(f"  problem:  {_ANSI.sub('', error.detail)}")
        if error.example is not None:
            shown = error.example
        call = error.call
    else:
        text = _ANSI.sub("", f"{type(error).__name__}: {error}".strip())
        notes = [n for n in getattr(error, "__notes__", []) if "Falsifying" not in n]
        lines.append("  problem:  the plugin raised " + text.replace("\n", "\n            "))
        for note in notes:
            lines.append(f"            ({note})")
    lines.append(
        f"  found by: Hypothesis, {examples_run} example(s), shrunk to the minimal failing one"
        if examples_run > 1
        else "  found by: the first example"
    )
    if shown is not None:
        lines.append("  minimal falsifying example:")
        lines.append(describe_example(spec, shown, indent="    "))
    lines.append("  reproduce:")
    short = profile.removeprefix("lossplug-")
    lines.append(f"    lossplug check {plugin} --profile {short} --seed {seed}")
    if nodeid:
        lines.append(f"    LOSSPLUG_PROFILE={short} LOSSPLUG_SEED={seed} pytest '{nodeid}'")
    lines.append(
        f'    python -c "from lossplug.testing import check_plugin; '
        f'print(check_plugin({plugin!r}, profile={short!r}, seed={seed}, only=[{check!r}]))"'
    )
    if shown is not None and (shown.inputs or shown.outputs):
        snippet = python_snippet(plugin, shown, call)
        if snippet:
            lines.append("    " + snippet)
    return "\n".join(lines)


__all__ = ["CheckResult", "KitFailure", "Report", "describe_example", "failure_report"]

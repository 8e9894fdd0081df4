"""Running checks under Hypothesis and turning their outcome into reports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from hypothesis import Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import FailedHealthCheck, Unsatisfiable, UnsatisfiedAssumption

from ..errors import LossplugError
from ..properties import Example
from . import profiles
from .checks import Check, Context, select
from .harness import harness_for
from .model_check import SkipCheck
from .report import FAILED, PASSED, SKIPPED, CheckResult, Report, failure_report

Progress = Callable[[str, int, int, "CheckResult | None"], None]


@contextlib.contextmanager
def _kit_context() -> Iterator[None]:
    """The backend's settings for the kit: quiet retracing, float64 available (JAX)."""
    from .. import backend

    impl = backend.current()
    with impl.quiet(), impl.kit_scope():
        yield


def _as_example(value: Any) -> Example | None:
    if isinstance(value, Example):
        return value
    if isinstance(value, tuple) and value and isinstance(value[0], Example):
        return value[0]
    if value is not None and hasattr(type(value), "__attrs_attrs__"):
        return Example(inputs={}, outputs={}, config=value)  # a drawn Config
    return None


def run_one(
    ctx: Context,
    check: Check,
    *,
    profile: str | None = None,
    seed: int | None = None,
    nodeid: str | None = None,
) -> CheckResult:
    """Run ``check`` under Hypothesis and return its result (never raises for plugin bugs)."""
    profile = profiles.profile_name(profile)
    seed = profiles.default_seed(profile, seed)
    base = profiles.profile_settings(profile)
    record: dict[str, Any] = {"count": 0, "last": None}

    def test(value: Any) -> None:
        record["count"] += 1
        try:
            check.body(ctx, value)
        except (UnsatisfiedAssumption, SkipCheck):
            raise
        except BaseException as exc:
            record["last"] = (value, exc)
            raise

    test.__name__ = f"check_{check.id}"
    overrides: dict[str, Any] = {"max_examples": check.max_examples(base.max_examples)}
    if not check.shrink:
        overrides["phases"] = [p for p in base.phases if p != Phase.shrink]
    started = time.perf_counter()
    result = CheckResult(plugin=ctx.name, check=check.id, title=check.title, status=PASSED)
    try:
        strategy = check.strategy(ctx)
    except LossplugError as exc:  # a malformed claim (e.g. a bad at={...}): nothing to draw
        result.status, result.error = FAILED, exc
        result.message = (
            f"lossplug conformance failure: plugin {ctx.name!r}, check {check.id!r}\n"
            f"  property: {check.title}\n"
            f"  problem:  {exc}"
        )
        result.seconds = time.perf_counter() - started
        return result
    wrapped = hypothesis_seed(seed)(settings(base, **overrides)(given(strategy)(test)))
    try:
        with _kit_context():
            wrapped()
    except SkipCheck as exc:
        result.status, result.message = SKIPPED, str(exc)
    except KeyboardInterrupt:
        raise
    except (Unsatisfiable, FailedHealthCheck) as exc:
        result.status = FAILED
        result.error = exc
        result.message = (
            f"lossplug conformance failure: plugin {ctx.name!r}, check {check.id!r}\n"
            f"  property: {check.title}\n"
            f"  problem:  no valid example could be generated ({type(exc).__name__}: {exc}). "
            "Are the Config ranges or the custom strategies too narrow?"
        )
    except BaseException as exc:
        value, error = record["last"] if record["last"] is not None else (None, exc)
        result.status = FAILED
        result.error = error
        shown = getattr(error, "example", None)  # a KitFailure's transformed example
        result.example = shown if isinstance(shown, Example) else _as_example(value)
        result.message = failure_report(
            plugin=ctx.name,
            spec=ctx.spec,
            check=check.id,
            title=check.title,
            claim=type(check.claim).__name__ if check.claim is not None else None,
            error=error,
            example=result.example,
            examples_run=record["count"],
            profile=profile,
            seed=seed,
            nodeid=nodeid,
        )
    result.seconds = time.perf_counter() - started
    result.examples = record["count"]
    return result


def check_plugin(
    name: str,
    profile: str | None = "quick",
    seed: int | None = None,
    *,
    only: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    config_strategy: Any = None,
    example_strategy: Any = None,
    progress: Progress | None = None,
) -> Report:
    """Run the conformance kit on the installed or registered plugin ``name``.

    Args:
        name: the plugin name.
        profile: ``"quick"`` (CI) or ``"thorough"`` (release); ``None`` reads
            ``LOSSPLUG_PROFILE``.
        seed: Hypothesis seed; a failure report prints the seed that reproduces it.
        only / skip: check ids to run / to leave out.
        config_strategy: a Hypothesis strategy of Config instances to use
            instead of the one derived from the ``param(...)`` ranges.
        example_strategy: a strategy of :class:`lossplug.properties.Example`
            used instead of the kit's typical examples.
        progress: called as ``progress(check_id, index, total, result)`` before
            (``result=None``) and after each check.

    Returns:
        a :class:`~lossplug.testing.report.Report`; ``report.ok`` is False if any
        check failed and ``str(report)`` lists the failures as bug reports.
    """
    profile = profiles.profile_name(profile)
    seed = profiles.default_seed(profile, seed)
    harness = harness_for(name)
    ctx = Context(harness, config_strategy=config_strategy, example_strategy=example_strategy)
    checks = select(harness.spec, only, skip)
    report = Report(plugin=harness.spec.name, profile=profiles.short_name(profile), seed=seed)
    for index, check in enumerate(checks):
        if progress is not None:
            progress(check.id, index, len(checks), None)
        result = run_one(ctx, check, profile=profile, seed=seed)
        report.results.append(result)
        if progress is not None:
            progress(check.id, index, len(checks), result)
    return report


__all__ = ["FAILED", "PASSED", "SKIPPED", "check_plugin", "run_one"]

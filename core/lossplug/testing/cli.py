"""``lossplug check NAME...``: the conformance kit from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import LossplugError, UnknownPluginError
from ..registry import registry
from . import profiles
from .report import FAILED, PASSED, SKIPPED, CheckResult, Report

_STYLE = {PASSED: "green", FAILED: "bold red", SKIPPED: "yellow"}


def _names(requested: list[str]) -> list[str]:
    if any(n == "all" for n in requested):
        return registry.names()
    for name in requested:
        registry.entry(name)  # unknown names: an error with "did you mean", before any work
    return list(dict.fromkeys(requested))


def run_check(args: argparse.Namespace) -> int:
    """Run the kit on ``args.name`` (``"all"``: every installed plugin); 1 if any check fails."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from .runner import check_plugin

    requested = list(getattr(args, "name", None) or [])
    profile = profiles.profile_name(getattr(args, "profile", None) or "quick")
    seed = profiles.default_seed(profile, getattr(args, "seed", None))
    only = getattr(args, "check", None) or None
    console = Console(highlight=False)
    names = _names(requested)
    if not names:
        console.print("No loss plugins installed: nothing to check.")
        return 0
    reports: list[Report] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[plugin]}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        for name in names:
            task = progress.add_task("loading", total=None, plugin=name)

            def on_check(
                check: str, index: int, total: int, result: CheckResult | None, task: Any = task
            ) -> None:
                done = index + (1 if result is not None else 0)
                text = check if result is None else f"{check}: {result.status}"
                progress.update(task, total=total, completed=done, description=text)

            try:
                report = check_plugin(name, profile, seed, only=only, progress=on_check)
            except UnknownPluginError:
                raise
            except LossplugError as exc:
                report = Report(plugin=name, profile=profiles.short_name(profile), seed=seed)
                report.results.append(
                    CheckResult(
                        plugin=name,
                        check="load",
                        title="the plugin loads",
                        status=FAILED,
                        message=f"lossplug conformance failure: plugin {name!r} could not be "
                        f"loaded: {exc}",
                    )
                )
            reports.append(report)
            progress.update(task, visible=False)
            console.print(_line(report), markup=True)
    console.print(_table(reports, Table))
    for report in reports:
        for result in report.failures:
            console.print()
            # soft_wrap: never break the reproduce commands of a report across lines
            console.print(result.message, markup=False, highlight=False, soft_wrap=True)
    failed = sum(len(r.failures) for r in reports)
    checks = sum(len(r.results) for r in reports)
    verdict = "[bold red]FAILED[/bold red]" if failed else "[bold green]OK[/bold green]"
    console.print(
        f"\n{verdict}: {len(reports)} plugin(s), {checks} check(s), {failed} failed "
        f"(profile {profiles.short_name(profile)}, seed {seed})"
    )
    return 1 if failed else 0


def _line(report: Report) -> str:
    mark = "[green]ok[/green]" if report.ok else "[bold red]FAILED[/bold red]"
    seconds = sum(r.seconds for r in report.results)
    return f"{mark} {report.summary()} in {seconds:.1f}s"


def _table(reports: list[Report], table_cls: Any) -> Any:
    table = table_cls(title="lossplug conformance", title_justify="left")
    for column, justify in (
        ("plugin", "left"),
        ("check", "left"),
        ("status", "left"),
        ("examples", "right"),
        ("time", "right"),
        ("what", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    for report in reports:
        for r in report.results:
            style = _STYLE.get(r.status, "")
            table.add_row(
                report.plugin,
                r.check,
                f"[{style}]{r.status}[/{style}]",
                str(r.examples),
                f"{r.seconds:.1f}s",
                r.title,
            )
    return table


__all__ = ["run_check"]

"""The ``lossplug`` command: list, info, check, new, demo.

``lossplug list`` reads distribution metadata only; it imports neither
TensorFlow nor any plugin (``--load`` imports each plugin to report failures).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import attrs

from .errors import LossplugError
from .registry import registry
from .specs import describe_rules

_STATUS_STYLE = {
    "available": "green",
    "loaded": "green",
    "disabled": "yellow",
    "conflict": "red",
    "failed": "red",
}


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def cmd_list(args: argparse.Namespace) -> int:
    rows = registry.statuses(load=args.load)
    if args.json:
        print(json.dumps([attrs.asdict(r) for r in rows], indent=2))
        return 0
    from rich.table import Table

    table = Table(title="lossplug plugins", title_justify="left")
    for column in ("name", "distribution", "version", "status", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = _STATUS_STYLE.get(row.status, "")
        status = f"[{style}]{row.status}[/{style}]" if style else row.status
        description = row.description
        if row.detail:
            description = f"{description}\n[dim]{row.detail}[/dim]" if description else row.detail
        table.add_row(row.name, row.distribution, row.version, status, description)
    console = _console()
    if not rows:
        console.print(
            "No loss plugins installed. Install one (pip install lossplug-label-smoothing) "
            "or write your own (lossplug new NAME)."
        )
        return 0
    console.print(table)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    entry = registry.entry(args.name)
    spec = registry.spec(args.name)
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{spec.name}[/bold]: {spec.description}")
    console.print(
        f"distribution: {entry.distribution} {entry.version}   module: {entry.target}   "
        f"API version: {spec.api_version}   returns: {spec.returns}"
        + ("   batch-coupled" if spec.batch_coupled else "")
        + f"   backends: {', '.join(spec.backends) if spec.backends else 'all'}"
    )
    config = Table(title="config", title_justify="left")
    for column in ("field", "default", "rule", "description"):
        config.add_column(column, overflow="fold")
    for field in attrs.fields(spec.config):
        meta = field.metadata.get("lossplug", {})
        config.add_row(field.name, repr(field.default), describe_rules(field), meta.get("doc", ""))
    console.print(config)
    tensors = Table(title="tensors", title_justify="left")
    for column in ("name", "from", "kind", "shape", "required", "description"):
        tensors.add_column(column, overflow="fold")
    for tensor in spec.tensors:
        shape = "any" if tensor.shape is None else _shape_text(tensor.shape)
        tensors.add_row(
            tensor.name,
            tensor.source.value,
            tensor.kind.value,
            shape,
            "no" if tensor.optional else "yes",
            tensor.description,
        )
    console.print(tensors)
    console.print("[bold]claimed properties[/bold]")
    if not spec.properties:
        console.print("  (none)")
    for prop in spec.properties:
        console.print(f"  - {prop.describe()}")
    return 0


def _shape_text(shape: tuple) -> str:
    """A symbolic shape as Python writes a tuple: ``(B,)``, ``(B, D)``."""
    inner = ", ".join(map(str, shape))
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def cmd_check(args: argparse.Namespace) -> int:
    from .testing.cli import run_check

    return run_check(args)


def cmd_new(args: argparse.Namespace) -> int:
    from .scaffold import run_new

    return run_new(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    from ._version import API_VERSION, __version__

    parser = argparse.ArgumentParser(
        prog="lossplug", description="Plugin-based loss registry for Keras 3."
    )
    parser.add_argument(
        "--version", action="version", version=f"lossplug {__version__} (plugin API {API_VERSION})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list installed loss plugins (imports none of them)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--load", action="store_true", help="import every plugin to report import failures"
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="show a plugin's config, tensors and claimed properties")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="run the conformance kit on an installed plugin")
    p.add_argument("name", nargs="+", help="plugin name(s); 'all' checks every installed plugin")
    p.add_argument("--profile", choices=("quick", "thorough"), default="quick")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed, to reproduce a run")
    p.add_argument(
        "--check",
        action="append",
        default=None,
        metavar="ID",
        help="run only this check (repeatable), e.g. --check non_negative",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("new", help="scaffold a new loss plugin distribution")
    p.add_argument("name", help="loss name, e.g. my_loss")
    p.add_argument("--directory", "-d", default=".", help="where to create lossplug-NAME/")
    p.add_argument("--author", default="Your Name")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser(
        "demo", help="train on scikit-learn's digits and draw the center-loss picture"
    )
    p.add_argument("--out", default="lossplug-demo", help="directory for the PNG figures")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LossplugError as exc:
        _console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

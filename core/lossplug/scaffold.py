"""``lossplug new NAME``: scaffold a plugin distribution that passes ``lossplug check``.

The generated layout follows the project's own plugins::

    lossplug-<name-with-dashes>/
        pyproject.toml            hatchling, entry point ``[project.entry-points.lossplug]``
        README.md                 the math, the parameters, how to test and publish
        .gitignore
        lossplug_<name>/__init__.py   spec, Config and build_loss_graph (a scaled MSE)
        lossplug_<name>/py.typed
        tests/test_<name>.py      the conformance kit one-liner plus two small tests

The templates live in ``lossplug/scaffold/template/`` and use ``{{key}}``
placeholders.
"""

from __future__ import annotations

import argparse
import json
import keyword
from pathlib import Path

from ._version import API_VERSION, __version__
from .errors import LossplugError
from .specs import _NAME_RE, KERAS_LOSS_NAMES

TEMPLATE_DIR = Path(__file__).parent / "scaffold" / "template"
DESCRIPTION = "scaled mean squared error"

#: template file -> path inside the new distribution (``{name}`` is the loss name)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "gitignore.tmpl": ".gitignore",
    "module.py.tmpl": "lossplug_{name}/__init__.py",
    "test.py.tmpl": "tests/test_{name}.py",
}


class ScaffoldError(LossplugError, ValueError):
    """``lossplug new`` cannot create the distribution (bad name, existing directory)."""


def check_name(name: str) -> None:
    """Raise :class:`ScaffoldError` unless ``name`` is a valid, unreserved loss name."""
    if not _NAME_RE.match(name or ""):
        suggestion = "".join(c if c.isalnum() else "_" for c in (name or "").lower()).strip("_")
        hint = f" (e.g. {suggestion!r})" if suggestion and _NAME_RE.match(suggestion) else ""
        raise ScaffoldError(
            f"invalid plugin name {name!r}: use lower case letters, digits and underscores, "
            f"starting with a letter{hint}. The name is what users write in "
            "compile(loss=...) and becomes the module lossplug_<name>."
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"invalid plugin name {name!r}: it is a Python keyword")
    if name in KERAS_LOSS_NAMES:
        raise ScaffoldError(
            f"invalid plugin name {name!r}: it is a Keras built-in loss name, and "
            f"compile(loss={name!r}) must keep meaning Keras' loss; choose another name "
            f"(e.g. 'my_{name}')"
        )


def dist_name(name: str) -> str:
    """``my_loss`` -> ``my-loss`` (the distribution is ``lossplug-my-loss``)."""
    return name.replace("_", "-")


def _next_minor(version: str) -> str:
    major, minor = (int(p) for p in version.split(".")[:2])
    return f"{major}.{minor + 1}"


def render(text: str, values: dict[str, str]) -> str:
    """Replace every ``{{key}}``; a placeholder left over is a bug in the templates."""
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ScaffoldError(f"template placeholder left unfilled: {text[start : start + 30]!r}")
    return text


def scaffold(name: str, directory: str | Path = ".", author: str = "Your Name") -> Path:
    """Create ``<directory>/lossplug-<name>/`` and return its path."""
    check_name(name)
    root = Path(directory).expanduser() / f"lossplug-{dist_name(name)}"
    if root.exists():
        raise ScaffoldError(
            f"{root} already exists; choose another --directory, or remove it first "
            "(lossplug new never overwrites files)"
        )
    major_minor = ".".join(__version__.split(".")[:2])
    values = {
        "name": name,
        "dist": dist_name(name),
        "description": DESCRIPTION,
        "description_toml": json.dumps(DESCRIPTION),
        "author_toml": json.dumps(author or "Your Name"),
        "core_version": major_minor,
        "core_next": _next_minor(__version__),
        "api_version": str(API_VERSION),
    }
    rendered = {
        target.format(name=name): render((TEMPLATE_DIR / template).read_text("utf-8"), values)
        for template, target in FILES.items()
    }
    root.mkdir(parents=True)
    for relative, text in rendered.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    (root / f"lossplug_{name}" / "py.typed").write_text("", "utf-8")
    return root


def run_new(args: argparse.Namespace) -> int:
    """The ``lossplug new`` command."""
    from rich.console import Console

    # soft_wrap: paths and commands stay on one line, to be copied whatever the terminal width
    console = Console(highlight=False, soft_wrap=True)
    root = scaffold(args.name, args.directory, getattr(args, "author", "Your Name"))
    console.print(f"[green]created[/green] {root}")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        console.print(f"  {path.relative_to(root)}", markup=False)
    try:
        from .registry import registry

        installed = args.name in registry.names()
    except LossplugError:
        installed = False
    if installed:
        console.print(
            f"[yellow]note:[/yellow] a plugin named {args.name!r} is already installed; "
            "installing this one as well makes the name ambiguous (lossplug list shows both)."
        )
    console.print(
        "\nnext steps:\n"
        f"  cd {root}\n"
        '  pip install -e ".[test]"\n'
        f"  lossplug check {args.name}\n"
        "  pytest\n"
        f"then edit lossplug_{args.name}/__init__.py (spec, Config, build_loss_graph).",
        markup=False,
    )
    return 0


__all__ = ["ScaffoldError", "check_name", "run_new", "scaffold"]

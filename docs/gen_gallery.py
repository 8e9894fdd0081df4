"""Build the plugin gallery from ``plugins/*/`` (specs and READMEs), as an MkDocs hook.

For every plugin distribution under ``plugins/`` this reads its
``pyproject.toml`` (distribution name, version, summary, entry point), imports
its module from the source tree (so the pages do not depend on what happens to
be installed) to get the :class:`lossplug.PluginSpec`, and renders one page:
the spec as tables (config fields with defaults and rules, tensors, claimed
properties) followed by the distribution's README. ``gallery/index.md`` lists
them all. Output is sorted and contains nothing time- or machine-dependent.

MkDocs runs it as a hook (``hooks: [docs/gen_gallery.py]`` in ``mkdocs.yml``):
``on_config`` puts the pages into the navigation and ``on_files`` adds them as
generated files. It also adds a short placeholder for any page written by
others (``OPTIONAL_PAGES``) that does not exist yet, so a strict build never
breaks on a missing file.

Run ``python docs/gen_gallery.py OUT_DIR`` to write the pages to a directory.
"""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
GALLERY = "gallery"
NAV_TITLE = "Plugin gallery"

#: Pages other people write; a placeholder stands in until they exist.
OPTIONAL_PAGES = {
    "kit.md": (
        "Conformance kit",
        "The conformance kit's guide is not written yet. Meanwhile, `lossplug check NAME` "
        "runs it and the [authoring guide](authoring.md#3-test-it-with-the-conformance-kit) "
        "shows how to use it.",
    ),
    "performance.md": (
        "Performance",
        "The benchmark results are not published yet; the scripts are in `benchmarks/`.",
    ),
    "performance-plugins.md": (
        "Plugin performance",
        "The plugin benchmark results (triplet mining, margin softmax) are not published "
        "yet; the scripts are in `benchmarks/`.",
    ),
}


@dataclass
class PluginPage:
    """Everything one gallery page shows about a plugin distribution."""

    name: str
    distribution: str
    version: str
    summary: str
    module: str
    directory: Path
    readme: str = ""
    spec: Any = None

    @property
    def path(self) -> str:
        return f"{GALLERY}/{self.name}.md"


def _entry_point(project: dict[str, Any]) -> tuple[str, str]:
    points = project.get("entry-points", {}).get("lossplug", {})
    if len(points) != 1:
        raise ValueError(f"expected exactly one 'lossplug' entry point, found {sorted(points)}")
    ((name, target),) = points.items()
    return name, target


def _load_spec(directory: Path, target: str) -> Any:
    """Import the plugin from its source directory and call its ``lossplug_spec`` hook."""
    module_name, _, attribute = target.partition(":")
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.remove(str(directory))
    obj = getattr(module, attribute) if attribute else module
    return obj.lossplug_spec()


def collect(plugins_dir: Path = PLUGINS) -> list[PluginPage]:
    """Every plugin distribution under ``plugins_dir``, sorted by loss name."""
    pages = []
    for pyproject in sorted(plugins_dir.glob("*/pyproject.toml")):
        directory = pyproject.parent
        project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
        name, target = _entry_point(project)
        page = PluginPage(
            name=name,
            distribution=project["name"],
            version=project.get("version", "?"),
            summary=project.get("description", ""),
            module=target,
            directory=directory,
        )
        readme = directory / "README.md"
        page.readme = readme.read_text("utf-8") if readme.is_file() else ""
        page.spec = _load_spec(directory, target)
        pages.append(page)
    return sorted(pages, key=lambda p: p.name)


# ----------------------------------------------------------------------------- rendering
def _cell(text: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: Any) -> str:
    value = str(text).replace("`", "'")
    return f"`{value}`" if value else ""


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _readme_body(page: PluginPage) -> str:
    """The README without its title; links into the repository become plain text."""
    lines = page.readme.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join(lines).strip()

    def relink(match: re.Match[str]) -> str:
        bang, label, url = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("#"):
            return match.group(0)  # absolute URLs and anchors stay
        if url.rstrip("/").endswith(("../../README.md", "../..")):
            return f"[{label}](../index.md)"
        return label if not bang else f"`{url}`"

    return _LINK.sub(relink, text)


def render_page(page: PluginPage) -> str:
    """The Markdown page of one plugin."""
    import attrs
    from lossplug.specs import describe_rules

    spec = page.spec
    out = [f"# `{page.name}`", "", " ".join(spec.description.split()), ""]
    returns = spec.returns + (", batch-coupled" if spec.batch_coupled else "")
    out += [
        f"- **distribution:** `{page.distribution}` {page.version} "
        f"(`pip install {page.distribution}`)",
        f"- **module:** `{page.module}`",
        f"- **plugin API version:** {spec.api_version}",
        f"- **returns:** {returns}",
        "",
        "## Config",
        "",
    ]
    fields = attrs.fields(spec.config)
    if fields:
        out += ["| parameter | default | rule | meaning |", "| --- | --- | --- | --- |"]
        for f in fields:
            meta = f.metadata.get("lossplug", {})
            out.append(
                f"| `{f.name}` | {_code(repr(f.default))} | {_cell(describe_rules(f))} | "
                f"{_cell(meta.get('doc', ''))} |"
            )
    else:
        out.append("No parameters.")
    out += ["", "## Tensors", ""]
    out += ["| name | from | kind | shape | required | description |"]
    out += ["| --- | --- | --- | --- | --- | --- |"]
    for t in spec.tensors:
        out.append(
            f"| `{t.name}` | {t.source.value} | {t.kind.value} | {_code(_shape(t.shape))} | "
            f"{'no' if t.optional else 'yes'} | {_cell(t.description)} |"
        )
    out += ["", "## Claimed properties", ""]
    out.append(
        f"Each claim is checked by the [conformance kit](../kit.md) (`lossplug check {page.name}`)."
    )
    out.append("")
    if spec.properties:
        out += [f"- {_cell(p.describe())}" for p in spec.properties]
    else:
        out.append("None beyond the generic checks every plugin gets.")
    body = _readme_body(page)
    if body:
        out += ["", "## From the README", "", _demote(body)]
    return "\n".join(out).rstrip() + "\n"


def _shape(shape: Any) -> str:
    """``("B", "C")`` -> ``(B, C)``; ``("B",)`` -> ``(B,)``; ``None`` -> ``any``."""
    if shape is None:
        return "any"
    inner = ", ".join(map(str, shape))
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _demote(markdown: str) -> str:
    """Shift README headings one level down (## -> ###) so they nest under 'From the README'."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,5} ", line):
            line = "#" + line
        lines.append(line)
    return "\n".join(lines)


def render_index(pages: list[PluginPage]) -> str:
    out = [
        f"# {NAV_TITLE}",
        "",
        "Every loss plugin in the lossplug repository, generated from its spec and README "
        "(`docs/gen_gallery.py`). Install one with `pip install <distribution>` and use it "
        'by name: `compile(loss="<name>")` or `lossplug.use("<name>", ...)`.',
        "",
        "| name | description | returns | distribution |",
        "| --- | --- | --- | --- |",
    ]
    for page in pages:
        returns = page.spec.returns + (", batch-coupled" if page.spec.batch_coupled else "")
        out.append(
            f"| [`{page.name}`]({page.name}.md) | {_cell(page.spec.description)} | {returns} | "
            f"`{page.distribution}` |"
        )
    out += [
        "",
        "Writing your own? `lossplug new NAME` scaffolds a distribution; see the "
        "[authoring guide](../authoring.md).",
    ]
    return "\n".join(out) + "\n"


def render_all(pages: list[PluginPage]) -> dict[str, str]:
    """``{docs-relative path: Markdown}`` for the gallery."""
    rendered = {f"{GALLERY}/index.md": render_index(pages)}
    for page in pages:
        rendered[page.path] = render_page(page)
    return rendered


# ----------------------------------------------------------------------------- MkDocs hook
_cache: dict[str, Any] = {}


def _gallery() -> dict[str, str]:
    if "pages" not in _cache:
        _cache["pages"] = render_all(collect())
    return _cache["pages"]


def on_config(config: Any) -> Any:
    """Put the gallery pages into the navigation, in place of the ``gallery/index.md`` entry."""
    pages = _gallery()
    entries = [{"Overview": f"{GALLERY}/index.md"}] + [
        {path.split("/")[-1].removesuffix(".md"): path}
        for path in pages
        if path != f"{GALLERY}/index.md"
    ]

    def replace(items: Any) -> Any:
        if isinstance(items, list):
            return [replace(i) for i in items]
        if isinstance(items, dict):
            return {
                k: (entries if v == f"{GALLERY}/index.md" else replace(v)) for k, v in items.items()
            }
        return items

    if config.get("nav"):
        config["nav"] = replace(config["nav"])
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated gallery pages and placeholders for missing optional pages."""
    from mkdocs.structure.files import File

    for path, content in _gallery().items():
        files.append(File.generated(config, path, content=content))
    docs_dir = Path(config["docs_dir"])
    for path, (title, text) in OPTIONAL_PAGES.items():
        if not (docs_dir / path).exists() and files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=f"# {title}\n\n{text}\n"))
    return files


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docs/gen_gallery.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for path, content in _gallery().items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, "utf-8")
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

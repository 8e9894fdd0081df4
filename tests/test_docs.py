"""The documentation site builds strictly, and what it shows matches the code it documents."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import lossplug.errors
import mkdocs  # noqa: F401  (the docs tooling is required: a missing mkdocs fails, never skips)
import pytest
from lossplug.demo import DemoError
from lossplug.scaffold import ScaffoldError, scaffold

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _gallery_module():
    spec = importlib.util.spec_from_file_location("lossplug_docs_gallery", DOCS / "gen_gallery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", NO_MKDOCS_2_WARNING="1")
    env.pop("LOSSPLUG_DISABLE", None)
    return env


@pytest.mark.e2e
@pytest.mark.backend_independent
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for page in ("index.html", "quickstart/index.html", "concepts/index.html",
                 "authoring/index.html", "errors/index.html", "migration/index.html",
                 "examples/index.html", "api/model/index.html", "gallery/index.html"):  # fmt: skip
        assert (site / page).is_file(), page
    gallery = (site / "gallery" / "index.html").read_text("utf-8")
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        name = re.search(
            r"\[project\.entry-points\.lossplug\]\s*\n\s*(\w+)\s*=", pyproject.read_text()
        )[1]
        assert (site / "gallery" / name / "index.html").is_file(), name
        assert f"{name}/" in gallery, name
    # mkdocstrings rendered the API reference from the docstrings.
    api = (site / "api" / "model" / "index.html").read_text("utf-8")
    assert "A functional Keras model whose" in api
    # The examples page includes the scripts themselves.
    examples = (site / "examples" / "index.html").read_text("utf-8")
    assert "argparse" in examples and "lossplug" in examples


def test_gallery_is_deterministic_and_lists_every_plugin() -> None:
    gallery = _gallery_module()
    first = gallery.render_all(gallery.collect())
    second = gallery.render_all(gallery.collect())
    assert first == second
    names = {page.name for page in gallery.collect()}
    assert len(names) == len(list((ROOT / "plugins").glob("*/pyproject.toml")))
    for name in names:
        assert f"{gallery.GALLERY}/{name}.md" in first
        assert f"[`{name}`]({name}.md)" in first[f"{gallery.GALLERY}/index.md"]


def test_gallery_helpers() -> None:
    gallery = _gallery_module()
    assert gallery._shape(("B",)) == "(B,)"
    assert gallery._shape(("B", "C")) == "(B, C)"
    assert gallery._shape(None) == "any"
    page = gallery.PluginPage(
        name="x", distribution="lossplug-x", version="0", summary="", module="m",
        directory=ROOT,
        readme="# lossplug-x\n\nFor [lossplug](../../README.md), see [src](lossplug_x/a.py),"
        " [Keras](https://keras.io) and [below](#use).\n\n## Use\n\n```python\n# a comment\n```",
    )  # fmt: skip
    body = gallery._readme_body(page)
    assert "[lossplug](../index.md)" in body
    assert "see src," in body
    assert "[Keras](https://keras.io)" in body and "[below](#use)" in body
    demoted = gallery._demote(body)
    assert "### Use" in demoted and "# a comment" in demoted  # code comments stay as they are


def test_authoring_guide_shows_what_lossplug_new_generates(tmp_path: Path) -> None:
    text = (DOCS / "authoring.md").read_text("utf-8")
    blocks = re.findall(r"<!-- scaffold: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    assert {path for path, _ in blocks} == {
        "pyproject.toml", "lossplug_my_loss/__init__.py", "tests/test_my_loss.py",
    }  # fmt: skip
    root = scaffold("my_loss", tmp_path, author="Ada Lovelace")
    for path, shown in blocks:
        assert shown == (root / path).read_text("utf-8"), f"docs/authoring.md is stale: {path}"


def test_errors_page_has_a_section_for_every_error() -> None:
    text = (DOCS / "errors.md").read_text("utf-8")
    classes = [
        cls for _, cls in inspect.getmembers(lossplug.errors, inspect.isclass)
        if issubclass(cls, lossplug.errors.LossplugError) and cls is not lossplug.errors.LossplugError
    ]  # fmt: skip
    classes += [ScaffoldError, DemoError]
    assert len(classes) >= 12
    for cls in classes:
        assert f"## `{cls.__name__}`" in text, cls.__name__


def test_pages_written_by_others_get_a_placeholder_only_while_missing(tmp_path: Path) -> None:
    from mkdocs.config import load_config
    from mkdocs.structure.files import Files

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "performance.md").write_text("# Performance\n\nreal numbers\n")
    config = load_config(str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(tmp_path / "s"))
    (gallery,) = config["hooks"].values()  # the hook module as MkDocs loaded it
    gallery._cache["pages"] = {"gallery/index.md": "# Plugin gallery\n"}  # skip the imports
    files = config.plugins.on_files(Files([]), config=config)
    generated = {f.src_uri: f.content_string for f in files if f.generated_by}
    assert set(generated) == {"gallery/index.md", "kit.md", "performance-plugins.md"}
    assert "not written yet" in generated["kit.md"]
    nav = (ROOT / "mkdocs.yml").read_text("utf-8")
    for page in gallery.OPTIONAL_PAGES:
        assert f": {page}" in nav, page  # every page written by others is in the navigation


@pytest.mark.slow
def test_quickstart_code_runs_as_written(tmp_path: Path) -> None:
    """Every ```python block of docs/quickstart.md, in order, as one script."""
    text = (DOCS / "quickstart.md").read_text("utf-8")
    script = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    assert "LossModel" in script
    (tmp_path / "quickstart.py").write_text(script, "utf-8")
    result = subprocess.run(
        [sys.executable, "quickstart.py"], capture_output=True, text=True, cwd=tmp_path,
        env=_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "['compactness', 'loss', 'sparse_categorical_crossentropy']" in result.stdout


@pytest.mark.backend_independent
def test_benchmark_tables_the_docs_include_exist() -> None:
    """Every ``--8<-- "docs/generated/..."`` include names a file a benchmark generated.

    The pages show no hand-typed benchmark numbers: they include the tables the scripts in
    benchmarks/ write (``--write``), each headed by the run's record (mkdocs' snippets
    ``check_paths`` fails the build on a missing file too).
    """
    includes = {
        (page.relative_to(ROOT), name)
        for page in sorted(DOCS.rglob("*.md"))
        for name in re.findall(r'^--8<-- "(docs/generated/[^"]+)"$', page.read_text("utf-8"), re.M)
    }
    pages = {str(page) for page, _ in includes}
    assert {"docs/performance.md", "docs/performance-plugins.md"} <= pages
    for page, name in includes:
        path = ROOT / name
        assert path.is_file(), f"{page} includes {name}, which no benchmark has written"
        first = path.read_text("utf-8").splitlines()[0]
        assert first.startswith("Measured ") and "Load average" in first, f"{name}: {first}"
    # the generated files are fragments for the pages, not pages of their own
    assert "generated/" in (ROOT / "mkdocs.yml").read_text("utf-8")


@pytest.mark.backend_independent
def test_readme_lists_every_plugin_distribution() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        text = pyproject.read_text()
        name = re.search(r"\[project\.entry-points\.lossplug\]\s*\n\s*(\w+)\s*=", text)[1]
        distribution = re.search(r'^name = "([^"]+)"', text, flags=re.MULTILINE)[1]
        assert f"| `{name}` | {distribution} |" in readme, name

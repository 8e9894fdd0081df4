"""``lossplug new``: the scaffolded distribution is valid, installs and passes the kit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from lossplug import cli
from lossplug.scaffold import ScaffoldError, scaffold

EXPECTED_FILES = {
    ".gitignore",
    "README.md",
    "pyproject.toml",
    "lossplug_my_loss/__init__.py",
    "lossplug_my_loss/py.typed",
    "tests/test_my_loss.py",
}


def test_creates_the_plugin_layout(tmp_path: Path) -> None:
    root = scaffold("my_loss", tmp_path, author='Ada "A" Lovelace')
    assert root == tmp_path / "lossplug-my-loss"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == EXPECTED_FILES
    for path in root.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text("utf-8"), path


def test_pyproject_declares_the_entry_point(tmp_path: Path) -> None:
    root = scaffold("my_loss", tmp_path, author='Ada "A" Lovelace')
    project = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    assert project["project"]["name"] == "lossplug-my-loss"
    assert project["project"]["authors"] == [{"name": 'Ada "A" Lovelace'}]
    assert project["project"]["entry-points"]["lossplug"] == {"my_loss": "lossplug_my_loss"}
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["lossplug_my_loss"]
    (dependency,) = project["project"]["dependencies"]
    assert dependency.startswith("lossplug>=0.1,<0.2")


def test_generated_python_compiles_and_uses_the_kit_one_liner(tmp_path: Path) -> None:
    root = scaffold("my_loss", tmp_path)
    for path in root.rglob("*.py"):
        compile(path.read_text("utf-8"), str(path), "exec")
    test_source = (root / "tests/test_my_loss.py").read_text("utf-8")
    assert 'test_conformance = conformance_tests("my_loss")' in test_source


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("My-Loss", "lower case letters"),
        ("1loss", "starting with a letter"),
        ("", "invalid plugin name"),
        ("my loss", "lower case letters"),
        ("class", "Python keyword"),
        ("mse", "Keras built-in loss name"),
        ("sparse_categorical_crossentropy", "Keras built-in loss name"),
    ],
)
def test_refuses_an_invalid_name(tmp_path: Path, name: str, fragment: str) -> None:
    with pytest.raises(ScaffoldError, match=fragment):
        scaffold(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_existing_directory_and_touches_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "lossplug-my-loss"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="already exists"):
        scaffold("my_loss", tmp_path)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert (existing / "keep.txt").read_text() == "mine"


def test_command_line_reports_errors_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["new", "my_loss", "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lossplug-my-loss" in out
    assert 'pip install -e ".[test]"' in out
    assert cli.main(["new", "my_loss", "--directory", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["new", "Bad-Name", "--directory", str(tmp_path)]) == 2
    assert "invalid plugin name 'Bad-Name'" in capsys.readouterr().err


USE_BY_NAME = textwrap.dedent(
    """
    import numpy as np, keras, lossplug

    assert "scaffolded_loss" in lossplug.available()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 3))).astype("float32")
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(3, name="out")(inputs)
    model = lossplug.LossModel(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=lossplug.use("scaffolded_loss", scale=2.0))
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    first, last = history["scaffolded_loss"][0], history["scaffolded_loss"][-1]
    pred = model.predict(x, verbose=0)
    expected = 2.0 * np.mean((pred - y) ** 2)
    got = model.evaluate(x, y, verbose=0, return_dict=True)["scaffolded_loss"]
    assert abs(got - expected) < 1e-3 * max(1.0, expected), (got, expected)
    print(f"TRAINED first={first:.4f} last={last:.4f}")
    assert last < first
    """
)


@pytest.mark.e2e
def test_scaffold_pip_install_check_and_use(tmp_path: Path) -> None:
    """Scaffold, pip install (a real wheel build), `lossplug check`, then train with it by name."""
    root = scaffold("scaffolded_loss", tmp_path / "src")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(root)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    assert (target / "lossplug_scaffolded_loss" / "__init__.py").is_file()
    assert list(target.glob("lossplug_scaffolded_loss-0.1.0.dist-info"))

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("LOSSPLUG_DISABLE", None)
    env.pop("LOSSPLUG_DISABLE_AUTOLOAD", None)
    env.pop("PYTEST_ADDOPTS", None)  # the plugin author's pytest, not this suite's options

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd,
            timeout=600,
        )  # fmt: skip

    listed = run("-m", "lossplug", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"lossplug-scaffolded-loss"' in listed.stdout

    check = run("-m", "lossplug", "check", "scaffolded_loss", "--profile", "quick")
    assert check.returncode == 0, check.stdout + check.stderr

    used = run("-c", USE_BY_NAME)
    assert used.returncode == 0, used.stdout + used.stderr
    assert "TRAINED" in used.stdout

    # The generated test suite (the kit one-liner plus its own tests) passes unchanged.
    tests = run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(root / "tests"),
        cwd=root,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout

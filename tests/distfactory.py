"""Build and pip-install throwaway plugin distributions for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

GOOD_MODULE = """
import attrs
import lossplug
from lossplug import Kind, PluginSpec, TensorSpec, hookimpl, param


@attrs.frozen
class Config:
    scale: float = param(1.0, low=0.0, doc="multiplies the loss")


SPEC = PluginSpec(
    name="{name}",
    description="{description}",
    config=Config,
    tensors=(
        TensorSpec("y_true", Kind.REAL, source="inputs", shape=("B", "D")),
        TensorSpec("y_pred", Kind.REAL, shape=("B", "D")),
    ),
    properties=(lossplug.properties.NonNegative(),),
    api_version={api_version},
)


@hookimpl
def lossplug_spec():
    return SPEC


@hookimpl
def build_loss_graph(inputs, outputs, extras):
    from keras import ops

    diff = ops.cast(inputs["y_true"], "float32") - ops.cast(outputs["y_pred"], "float32")
    return extras.config.scale * ops.mean(diff * diff, axis=-1)
"""


def write_dist(
    root: Path,
    dist: str,
    entry_name: str,
    *,
    module_source: str | None = None,
    description: str = "a test loss",
    api_version: int = 1,
) -> Path:
    """Write a plugin distribution project ``dist`` providing loss ``entry_name``."""
    module = dist.replace("-", "_")
    project = root / dist
    (project / module).mkdir(parents=True)
    source = (
        module_source
        if module_source is not None
        else GOOD_MODULE.format(name=entry_name, description=description, api_version=api_version)
    )
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{dist}"
            version = "1.2.3"
            description = "{description}"
            requires-python = ">=3.11"
            dependencies = ["lossplug"]

            [project.entry-points.lossplug]
            {entry_name} = "{module}"

            [tool.hatch.build.targets.wheel]
            packages = ["{module}"]
            """
        )
    )
    return project


def pip_install(projects: list[Path], target: Path) -> None:
    """A real, non-editable ``pip install`` of the projects into ``target``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *map(str, projects),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def run_python(
    code: str, target: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that sees the distributions in ``target``."""
    full_env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )

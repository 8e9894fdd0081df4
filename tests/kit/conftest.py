"""Fixtures of the conformance-kit tests: in-process plugins, removed after each test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def register() -> Iterator[Callable[[Any], str]]:
    """``register(plugin) -> name``: register an in-process plugin; unregistered afterwards."""
    import lossplug

    names: list[str] = []

    def _register(plugin: Any) -> str:
        name = lossplug.register(plugin).name
        names.append(name)
        return name

    yield _register
    for name in reversed(names):
        lossplug.unregister(name)

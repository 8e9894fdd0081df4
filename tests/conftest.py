"""Shared fixtures for the core tests."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep the registry's load-failure memory out of the user's cache during tests.
os.environ.setdefault("LOSSPLUG_CACHE_DIR", tempfile.mkdtemp(prefix="lossplug-cache-"))
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


@pytest.fixture
def toy_plugins():
    """Register the in-process test plugins; remove them afterwards."""
    import lossplug
    import toy_plugins as tp

    plugins = [tp.SparseCE(), tp.ToyCenter(), tp.EpochProbe(), tp.NanAt(), tp.NanGradientAt()]
    names = [lossplug.register(p, replace=True).name for p in plugins]
    yield tp
    for name in names:
        lossplug.unregister(name)

"""pytest setup of the plugins' test suites: the repository's shared test helpers.

Tests that several plugins share (a loss family's checks, data sets and training runs)
live once, in the ``*_helpers.py`` modules of ``tests/`` (``embedding_helpers``,
``segmentation_helpers``); this puts that folder on ``sys.path``, as ``tests/conftest.py``
does for the core's tests, so that a plugin's tests import them by module name. Helpers
for third-party plugin authors belong in :mod:`lossplug.testing` instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "tests"
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))

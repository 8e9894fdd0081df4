"""The one-liner a plugin's own test suite uses, exactly as an author writes it.

The reference cosine plugin is registered when this module is imported (a
plugin's suite would have it installed) and removed when the module finishes.
"""

from __future__ import annotations

import kit_plugins as kp
import lossplug
import pytest
from lossplug.testing import conformance_tests

NAME = "kit_oneliner_cosine"
lossplug.register(kp.Cosine(NAME), replace=True)

test_conformance = conformance_tests(NAME)


@pytest.fixture(autouse=True, scope="module")
def _unregister_afterwards():
    yield
    lossplug.unregister(NAME)


def test_the_one_liner_has_one_test_per_check() -> None:
    (mark,) = [m for m in test_conformance.pytestmark if m.name == "parametrize"]
    argname, ids = mark.args
    assert argname == "check"
    assert list(ids) == [
        "config_roundtrip", "finite", "finite_extremes", "degenerate_batch", "batch_order",
        "sample_independence", "reduction", "state_store", "state_updates",
        "state_updates_extremes", "dtypes", "gradient_fd",
        "non_negative", "bounded", "symmetric", "scale_invariant", "zero_at_perfect",
        "compiled", "save_load",
    ]  # fmt: skip

"""``conformance_tests``: the whole kit as one parametrized pytest test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..registry import registry
from . import profiles
from .checks import Context, select
from .harness import harness_for
from .report import FAILED, SKIPPED
from .runner import run_one


def conformance_tests(
    name: str,
    *,
    profile: str | None = None,
    skip: Sequence[str] = (),
    config_strategy: Any = None,
    example_strategy: Any = None,
) -> Any:
    """A pytest test function running every conformance check of plugin ``name``.

    Put one line in the plugin's own test suite::

        from lossplug.testing import conformance_tests

        test_conformance = conformance_tests("center")

    pytest then collects ``test_conformance[finite]``, ``test_conformance[dtypes]``,
    ..., ``test_conformance[non_negative]`` (one per claimed property): the ids
    are the check names. ``profile`` defaults to ``LOSSPLUG_PROFILE`` (else
    quick); ``LOSSPLUG_SEED`` fixes the seed. ``skip`` leaves checks out by id
    (say why in a comment). ``config_strategy`` / ``example_strategy`` replace
    the kit's generated configs / typical examples.
    """
    import pytest

    spec = registry.spec(name)  # fails at collection with a clear error if it is missing
    ids = [check.id for check in select(spec, None, skip)]

    @pytest.mark.parametrize("check", ids)
    def test_conformance(check: str, request: Any) -> None:
        harness = harness_for(name)
        ctx = Context(harness, config_strategy=config_strategy, example_strategy=example_strategy)
        (chosen,) = select(harness.spec, [check])
        result = run_one(
            ctx,
            chosen,
            profile=profiles.profile_name(profile),
            seed=profiles.default_seed(profile),
            nodeid=request.node.nodeid,
        )
        if result.status == FAILED:
            pytest.fail(result.message, pytrace=False)
        if result.status == SKIPPED:
            pytest.skip(result.message)

    test_conformance.__doc__ = f"Conformance kit of the loss plugin {name!r} (one check per id)."
    return test_conformance


__all__ = ["conformance_tests"]

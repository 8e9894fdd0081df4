"""Mutation testing of the conformance kit.

Each mutant plugin in ``kit_plugins.MUTANTS`` plants one bug; the check that
targets it must fail with a bug report naming the plugin, the check and the
property, showing the minimal example and how to reproduce it. The correct
reference plugins must pass every check.
"""

from __future__ import annotations

from typing import Any

import kit_plugins as kp
import numpy as np
import pytest
from lossplug.testing import check_plugin, checks_for

GENERIC = {
    "config_roundtrip", "finite", "finite_extremes", "degenerate_batch", "batch_order",
    "sample_independence", "reduction", "state_store", "state_updates", "state_updates_extremes",
    "dtypes", "gradient_fd", "compiled", "save_load",
}  # fmt: skip


def _mutant_param(entry: tuple) -> Any:
    """The mutant as a parameter, restricted to ``kp.MUTANT_BACKENDS`` where listed there."""
    factory, check, _ = entry
    name = factory().name
    backends = kp.MUTANT_BACKENDS.get((name, check))
    marks = () if backends is None else (pytest.mark.backends(*backends),)
    return pytest.param(entry, id=f"{name}-{check}", marks=marks)


@pytest.mark.parametrize("mutant", [_mutant_param(m) for m in kp.MUTANTS])
def test_planted_bug_is_caught_by_its_check(register, mutant) -> None:
    factory, check, words = mutant
    name = register(factory())
    report = check_plugin(name, profile="quick", only=[check])
    result = report.result(check)
    assert result.status == "failed", f"{check} did not catch the bug of {name}"
    assert not report.ok
    message = result.message
    assert message.startswith(f"lossplug conformance failure: plugin {name!r}")
    assert f"check {check!r}" in message
    assert f"property: {result.title}" in message
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message}"
    assert "minimal falsifying example:" in message
    assert "config:" in message
    assert f"lossplug check {name} --profile quick --seed 0" in message
    assert f"only=[{check!r}]" in message
    assert result.example is not None
    assert result.examples >= 1


@pytest.mark.backends("torch")
def test_numpy_in_the_loss_compiles_on_torch(register) -> None:
    """The kit_bad_graph bug is no compiler bug on PyTorch: torch.compile traces the NumPy
    calls (the `finite` check catches it instead, see kp.MUTANT_BACKENDS). Turns red if
    torch.compile stops tracing them, and the mutant's `compiled` entry applies to torch too."""
    name = register(kp.GraphBreakingCE())
    assert check_plugin(name, profile="quick", only=["compiled"]).result("compiled").status == (
        "passed"
    )


def test_claim_failures_name_the_claimed_property(register) -> None:
    name = register(kp.NegativeCE())
    result = check_plugin(name, only=["non_negative"]).result("non_negative")
    assert "property: loss >= 0 [claimed: NonNegative]" in result.message
    # The minimal example: Hypothesis shrinks to one sample with all-zero logits.
    assert result.example.outputs["y_pred"].shape[0] == 1
    assert np.all(result.example.outputs["y_pred"] == 0)
    assert "loss[0] = -0.3068528" in result.message
    assert "call_plugin('kit_bad_negative'" in result.message


def test_gradient_report_shows_both_gradients(register) -> None:
    name = register(kp.WrongGradientMSE())
    message = check_plugin(name, only=["gradient_fd"]).result("gradient_fd").message
    assert "autodiff gradient [[3.0]], finite-difference gradient [[2.0]]" in message
    assert "float64 (1, 1)" in message


def test_float16_report_reproduces_with_dtype(register) -> None:
    name = register(kp.Float16OverflowCE())
    result = check_plugin(name, only=["dtypes"]).result("dtypes")
    assert "float16" in str(result.example.outputs["y_pred"].dtype)
    assert "dtype='float16')" in result.message  # the call_plugin line casts back to float16
    from lossplug.testing import call_plugin

    loss, _ = call_plugin(name, dict(result.example.inputs), dict(result.example.outputs),
                          dtype="float16")  # fmt: skip
    assert not np.all(np.isfinite(loss))
    loss32, _ = call_plugin(name, dict(result.example.inputs), dict(result.example.outputs),
                            dtype="float32")  # fmt: skip
    assert np.all(np.isfinite(loss32))


@pytest.mark.parametrize(
    "cls", [kp.Focal, kp.Center, kp.RunningCenter, kp.Accuracy], ids=lambda c: c.name
)
def test_reference_plugin_passes_every_check(register, cls) -> None:
    name = register(cls())
    report = check_plugin(name, profile="quick")
    assert report.ok, str(report)
    ran = [r.check for r in report.results]
    assert ran == [c.id for c in checks_for(report_spec(name))]
    assert all(r.status == "passed" for r in report.results), str(report)
    properties = set(ran) - GENERIC
    assert len(properties) == len(cls().properties)
    if cls.returns == "metrics":
        assert {"sample_independence", "reduction", "gradient_fd"}.isdisjoint(ran)
    else:
        assert set(ran) >= GENERIC


def report_spec(name: str):
    import lossplug

    return lossplug.registry.spec(name)

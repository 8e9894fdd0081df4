"""Claims restricted to parameter values with ``at={...}``: every kind of claim.

``TiltedCosine`` satisfies each claim of ``tilted_claims()`` only at tilt=0: with
``at={"tilt": 0.0}`` the check must pass, and without it the same check must fail
(the kit must draw tilt > 0 and catch it). A bad ``at`` is a failed check naming
the plugin, the claim and the field.
"""

from __future__ import annotations

import kit_plugins as kp
import pytest
from hypothesis import strategies as st
from lossplug.properties import (
    Bounded,
    Custom,
    Monotone,
    NonNegative,
    ReducesTo,
    ScaleInvariant,
    Symmetric,
    ZeroAtPerfect,
)
from lossplug.testing import check_plugin, strategies

CASES = list(zip(kp.TILTED_CHECKS, range(len(kp.TILTED_CHECKS)), strict=True))


@pytest.mark.parametrize(("check", "index"), CASES, ids=[c for c, _ in CASES])
def test_claim_holding_at_a_value_passes_with_at(register, check, index) -> None:
    claim = kp.tilted_claims(tilt=0.0)[index]
    name = register(kp.TiltedCosine(f"kit_tilted_at_{index}", (claim,)))
    result = check_plugin(name, only=[check]).result(check)
    assert result.status == "passed", result.message
    assert "at tilt=0.0" in result.title, result.title


@pytest.mark.parametrize(("check", "index"), CASES, ids=[c for c, _ in CASES])
def test_the_same_claim_without_at_fails(register, check, index) -> None:
    claim = kp.tilted_claims()[index]
    name = register(kp.TiltedCosine(f"kit_tilted_all_{index}", (claim,)))
    result = check_plugin(name, only=[check]).result(check)
    assert result.status == "failed", f"{check} without at= passed"
    assert "minimal falsifying example:" in result.message
    assert "tilt=" in result.message  # the report shows the offending config
    assert result.example.config.tilt > 0.0


def test_at_fixes_only_its_fields(register) -> None:
    seen: list[tuple[float, float]] = []

    def record(example, loss_fn) -> None:
        seen.append((example.config.tilt, example.config.scale))
        assert example.config.tilt == 0.0

    name = register(
        kp.TiltedCosine("kit_tilted_record", (Custom("record", record, at={"tilt": 0.0}),))
    )
    result = check_plugin(name, only=["custom_record"]).result("custom_record")
    assert result.status == "passed", result.message
    assert {tilt for tilt, _ in seen} == {0.0}
    assert len({scale for _, scale in seen}) > 1  # the other fields still vary


def test_at_applies_to_an_authors_example_strategy(register) -> None:
    name = register(
        kp.TiltedCosine("kit_tilted_custom", (NonNegative(atol=1e-6, at={"tilt": 0.0}),))
    )
    spec = kp.TiltedCosine("kit_tilted_custom").lossplug_spec()
    tilted = strategies.examples(spec, strategies.configs(spec, tilt=0.9))
    passed = check_plugin(name, only=["non_negative"], example_strategy=tilted)
    assert passed.ok, str(passed)
    unrestricted = register(kp.TiltedCosine("kit_tilted_custom_all", (NonNegative(atol=1e-6),)))
    failed = check_plugin(unrestricted, only=["non_negative"], example_strategy=tilted)
    assert not failed.ok


def test_at_applies_to_a_config_strategy(register) -> None:
    name = register(kp.TiltedCosine("kit_tilted_configs", (Bounded(0.0, 4.0, at={"tilt": 0.0}),)))
    spec = kp.TiltedCosine("kit_tilted_configs").lossplug_spec()
    configs = st.builds(lambda s: spec.make_config({"scale": s, "tilt": 1.0}), st.floats(0.5, 2.0))
    report = check_plugin(name, only=["bounded"], config_strategy=configs)
    assert report.ok, str(report)


@pytest.mark.parametrize(
    ("at", "words"),
    [
        ({"tlit": 0.0}, ["has no parameter 'tlit'", "scale, tilt"]),
        ({"tilt": -1.0}, ["tilt=-1.0", "is invalid", "[0.0, 1.0]"]),
    ],
    ids=["unknown-field", "out-of-range"],
)
def test_a_bad_at_fails_naming_plugin_claim_and_field(register, at, words) -> None:
    name = register(kp.TiltedCosine("kit_tilted_bad", (Symmetric("a", "b", at=at),)))
    report = check_plugin(name, only=["symmetric"])  # the report is built, not raised
    result = report.result("symmetric")
    assert result.status == "failed"
    message = result.message
    assert message.startswith("lossplug conformance failure: plugin 'kit_tilted_bad'")
    assert "check 'symmetric'" in message
    assert "the claim Symmetric (symmetric in a and b at t" in message
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message}"


def test_describe_names_the_values() -> None:
    at = {"bce_weight": 0.0}
    assert NonNegative(at=at).describe() == "loss >= 0 at bce_weight=0.0"
    assert Bounded(0, 1, at=at).describe() == "0 <= loss <= 1 at bce_weight=0.0"
    assert Bounded(0, 1).describe() == "0 <= loss <= 1"
    assert Symmetric("y_true", "y_pred", at=at).describe() == (
        "symmetric in y_true and y_pred at bce_weight=0.0"
    )
    assert ScaleInvariant("x", at={"metric": "cosine"}).describe() == (
        "invariant to scaling x by [0.1, 10.0] at metric='cosine'"
    )
    assert Monotone("gamma", (0, 1), at={"mode": "a"}).describe() == (
        "loss is non-increasing in gamma at mode='a'"
    )
    assert Custom("c", check=lambda ex, f: None, description="d", at=at).describe() == (
        "d at bce_weight=0.0"
    )
    assert ZeroAtPerfect(perfect=lambda ex: ex, at=at).describe() == (
        "loss == 0.0 at a perfect prediction (at bce_weight=0.0)"
    )
    assert ReducesTo("ce", lambda ex: 0, {"gamma": 0.0}).describe() == "equals ce at gamma=0.0"


def test_at_is_keyword_only_and_validated() -> None:
    assert Bounded(0.0, 1.0, 1e-3).atol == 1e-3  # existing positional uses keep working
    assert Symmetric("a", "b", 1e-3, 1e-4).atol == 1e-4
    assert NonNegative().at == {} and Custom("c", lambda ex, f: None).at == {}
    with pytest.raises(TypeError):
        Bounded(0.0, 1.0, 1e-6, {"tilt": 0.0})  # at is keyword-only
    with pytest.raises(TypeError, match="must map Config field names"):
        NonNegative(at=[("tilt", 0.0)])
    with pytest.raises(ValueError, match="cannot also be fixed by at"):
        Monotone("scale", (1, 2), at={"scale": 1.0})

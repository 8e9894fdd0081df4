"""``lossplug check`` through ``lossplug.cli.main``: output and exit codes."""

from __future__ import annotations

import argparse

import kit_plugins as kp
from lossplug import registry
from lossplug.cli import main
from lossplug.testing.checks import checks_for
from lossplug.testing.cli import run_check


def test_check_passes_a_correct_plugin(register, capsys) -> None:
    name = register(kp.Cosine())
    total = len(checks_for(registry.spec(name)))
    assert main(["check", name, "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "lossplug conformance" in out  # the summary table
    assert f"ok {name}: {total} passed, 0 failed (profile quick, seed 5)" in out
    assert f"OK: 1 plugin(s), {total} check(s), 0 failed" in out


def test_check_fails_a_broken_plugin_with_a_bug_report(register, capsys) -> None:
    good = register(kp.Focal())
    bad = register(kp.NegativeCE())
    assert main(["check", good, bad, "--profile", "quick"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {bad}: " in out
    assert f"lossplug conformance failure: plugin {bad!r}" in out
    assert "check 'non_negative'" in out
    assert f"lossplug check {bad} --profile quick --seed 0" in out
    assert "FAILED: 2 plugin(s)" in out and "1 failed" in out


def test_check_unknown_plugin_exits_2(capsys) -> None:
    assert main(["check", "kit_no_such_plugin_xyz"]) == 2
    err = capsys.readouterr().err
    assert "unknown loss plugin 'kit_no_such_plugin_xyz'" in err


def test_check_all_runs_every_plugin(register, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LOSSPLUG_DISABLE_AUTOLOAD", "1")  # only in-process plugins
    registry.refresh()
    try:
        good = register(kp.Focal())
        bad = register(kp.AngleMarginCE())
        args = argparse.Namespace(name=["all"], profile="quick", seed=None,
                                  check=["config_roundtrip"])  # fmt: skip
        assert run_check(args) == 1
    finally:
        monkeypatch.delenv("LOSSPLUG_DISABLE_AUTOLOAD")
        registry.refresh()
    out = capsys.readouterr().out
    assert f"ok {good}: 1 passed" in out
    assert f"FAILED {bad}: 0 passed, 1 failed" in out
    assert "builds a different Config" in out

"""lossplug.testing's public API: call_plugin, plugin_gradients, conformance_tests, check_plugin,
profiles."""

from __future__ import annotations

import types

import kit_plugins as kp
import numpy as np
import pytest
from hypothesis import settings
from lossplug.testing import (
    call_plugin,
    check_plugin,
    conformance_tests,
    plugin_gradients,
    profiles,
)


def test_call_plugin_uses_the_given_state(register) -> None:
    name = register(kp.Center())
    centres = np.array([[0.0, 1.0], [2.0, 2.0], [5.0, 5.0], [0.0, 0.0]], dtype="float32")
    x = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]], dtype="float32")
    y = np.array([0, 1, 3], dtype="int32")
    loss, metrics = call_plugin(
        name, {"y_true": y}, {"features": x}, config={"num_classes": 4}, state={"centers": centres}
    )
    expected = ((x - centres[y]) ** 2).sum(axis=1)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(metrics["distance"], np.mean(np.sqrt(expected + 1.0)), rtol=1e-6)


def test_call_plugin_fresh_state_and_dtype(register) -> None:
    name = register(kp.Center())
    y = np.array([0, 1], dtype="int32")
    x = np.zeros((2, 3), dtype="float32")
    first, _ = call_plugin(name, {"y_true": y}, {"features": x}, config={"num_classes": 2})
    again, _ = call_plugin(name, {"y_true": y}, {"features": x}, config={"num_classes": 2})
    assert first.shape == (2,) and np.all(first > 0)  # random-normal centres, not at zero
    np.testing.assert_array_equal(first, again)  # state initialised reproducibly
    half, _ = call_plugin(name, {"y_true": y}, {"features": x}, config={"num_classes": 2},
                          dtype="float16")  # fmt: skip
    assert half.dtype == np.float32  # the core casts losses to float32
    np.testing.assert_allclose(half, first, rtol=1e-6)


def test_plugin_gradients_of_the_tensors_and_the_state(register) -> None:
    name = register(kp.Center())
    centres = np.array([[0.0, 1.0], [2.0, 2.0], [5.0, 5.0]], dtype="float32")
    x = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]], dtype="float32")
    y = np.array([0, 1, 1], dtype="int32")
    loss, grads, state_grads = plugin_gradients(
        name, {"y_true": y}, {"features": x}, ["features"], config={"num_classes": 3},
        state={"centers": centres},
    )  # fmt: skip
    np.testing.assert_allclose(loss, ((x - centres[y]) ** 2).sum(axis=1), rtol=1e-6)
    assert set(grads) == {"features"} and set(state_grads) == {"centers"}
    np.testing.assert_allclose(grads["features"], 2 * (x - centres[y]), rtol=1e-6)
    expected = np.zeros_like(centres)
    np.add.at(expected, y, -2 * (x - centres[y]))  # class 2 has no sample: no gradient
    np.testing.assert_allclose(state_grads["centers"], expected, rtol=1e-6)


def test_call_plugin_metric_only(register) -> None:
    name = register(kp.Accuracy())
    loss, metrics = call_plugin(
        name, {"y_true": np.array([0, 1, 1])}, {"y_pred": np.array([[2.0, 0], [0, 1], [3, 0]])}
    )
    assert loss is None
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_conformance_tests_builds_a_parametrized_test(register) -> None:
    name = register(kp.NegativeCE())
    test = conformance_tests(name, skip=["save_load", "compiled"])
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    assert mark.args[0] == "check"
    ids = list(mark.args[1])
    assert "non_negative" in ids and "finite" in ids
    assert "save_load" not in ids and "compiled" not in ids
    request = types.SimpleNamespace(node=types.SimpleNamespace(nodeid="t.py::test[non_negative]"))
    test(check="finite", request=request)  # passes: returns without raising
    with pytest.raises(pytest.fail.Exception) as failure:
        test(check="non_negative", request=request)
    text = str(failure.value)
    assert "plugin 'kit_bad_negative'" in text
    assert "LOSSPLUG_PROFILE=quick LOSSPLUG_SEED=0 pytest 't.py::test[non_negative]'" in text


def test_unknown_check_names_are_refused(register) -> None:
    name = register(kp.Focal())
    with pytest.raises(ValueError, match="no conformance check 'finit'.*finite"):
        check_plugin(name, only=["finit"])
    with pytest.raises(ValueError, match="no conformance check"):
        conformance_tests(name, skip=["nope"])


def test_profiles_are_registered() -> None:
    quick = settings.get_profile("lossplug-quick")
    thorough = settings.get_profile("lossplug-thorough")
    assert quick.deadline is None and thorough.deadline is None
    assert quick.derandomize and quick.database is None
    assert quick.max_examples < thorough.max_examples
    assert thorough.max_examples >= 100


def test_profile_and_seed_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("LOSSPLUG_PROFILE", raising=False)
    monkeypatch.delenv("LOSSPLUG_SEED", raising=False)
    assert profiles.profile_name(None) == "lossplug-quick"
    assert profiles.default_seed(None) == 0  # quick: the same examples on every run
    monkeypatch.setenv("LOSSPLUG_PROFILE", "thorough")
    assert profiles.profile_name(None) == "lossplug-thorough"
    monkeypatch.setenv("LOSSPLUG_SEED", "1234")
    assert profiles.default_seed(None) == 1234
    assert profiles.default_seed("thorough", 7) == 7
    with pytest.raises(ValueError, match="quick.*thorough"):
        profiles.profile_name("slow")


def test_a_seed_reproduces_the_same_failure(register) -> None:
    name = register(kp.NaiveSoftmaxCE())
    runs = [
        check_plugin(name, profile="thorough", seed=31, only=["finite_extremes"]).result(
            "finite_extremes"
        )
        for _ in range(2)
    ]
    assert all(r.status == "failed" for r in runs)
    first, second = (r.example for r in runs)
    np.testing.assert_array_equal(first.outputs["y_pred"], second.outputs["y_pred"])
    np.testing.assert_array_equal(first.inputs["y_true"], second.inputs["y_true"])
    assert "--profile thorough --seed 31" in runs[0].message


def test_report_text(register) -> None:
    name = register(kp.NegativeCE())
    report = check_plugin(name, only=["finite", "non_negative"])
    text = str(report)
    assert report.summary() == f"{name}: 1 passed, 1 failed (profile quick, seed 0)"
    assert "PASSED   finite" in text and "FAILED   non_negative" in text
    assert report.failures[0].message in text

"""``lossplug demo``: helpers, the missing-plugin error, and a real smoke run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from lossplug.demo import class_spread, term_columns

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LOSSPLUG_DISABLE", None)
    env.pop("LOSSPLUG_DISABLE_AUTOLOAD", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


def test_term_columns_order() -> None:
    history = {
        "accuracy": [0.5],
        "center": [0.1],
        "label_smoothing": [1.0],
        "loss": [1.1],
        "val_loss": [1.2],
        "val_center": [0.2],
    }
    assert term_columns(history, ["label_smoothing", "center"]) == [
        "loss", "label_smoothing", "center", "accuracy",
    ]  # fmt: skip
    assert term_columns(history) == ["loss", "center", "label_smoothing", "accuracy"]


def test_class_spread_known_value() -> None:
    # Two classes, means at (0, 0) and (10, 0); every point 1 away from its mean.
    features = np.array([[0, 1], [0, -1], [10, 1], [10, -1]], dtype="float32")
    labels = np.array([0, 0, 1, 1])
    assert class_spread(features, labels) == pytest.approx(1.0 / 10.0)


@settings(max_examples=30, deadline=None)
@given(
    features=arrays(np.float64, (12, 2), elements=st.floats(-100, 100)),
    scale=st.floats(0.01, 100),
    shift=arrays(np.float64, (2,), elements=st.floats(-100, 100)),
)
def test_class_spread_is_invariant_to_scale_and_shift(features, scale, shift) -> None:
    labels = np.arange(12) % 3
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)]
    if min(gaps) < 1e-3:  # coincident class means: the ratio is ill-conditioned
        return
    base = class_spread(features, labels)
    moved = class_spread(features * scale + shift, labels)
    assert moved == pytest.approx(base, rel=1e-6, abs=1e-9)


def test_missing_plugin_names_the_package(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lossplug", "demo", "--smoke", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=_env(LOSSPLUG_DISABLE="center"), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "'center'" in message
    assert "pip install lossplug-center" in message
    assert not (tmp_path / "out" / "features.png").exists()


@pytest.mark.e2e
def test_demo_smoke_run_writes_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = subprocess.run(
        [sys.executable, "-m", "lossplug", "demo", "--smoke", "--out", str(out)],
        capture_output=True, text=True, env=_env(COLUMNS="200"), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stdout = result.stdout
    for fragment in (
        "cross-entropy: History per epoch",
        "label smoothing + center: History per epoch",
        "sparse_categorical_crossentropy",
        "label_smoothing",
        "center",
        "test accuracy (cross-entropy):",
        "test accuracy (label smoothing + center):",
    ):
        assert fragment in stdout, fragment
    accuracies = [
        float(line.rsplit(":", 1)[1]) for line in stdout.splitlines()
        if line.startswith("test accuracy (")
    ]  # fmt: skip
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies)
    for name in ("features.png", "losses.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 20_000, (name, len(data))

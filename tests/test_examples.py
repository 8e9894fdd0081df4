"""Every script in examples/ runs in smoke mode and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: script -> regular expressions its smoke run must print (one line each)
EXPECTED = {
    "qa_triplet.py": [
        r"^top-1 answer accuracy: [01]\.\d{3} before training, [01]\.\d{3} after$",
        r"^first epoch triplet [\d.]+ -> last [\d.]+; active triplets at the end [01]\.\d\d$",
    ],
    "center_loss.py": [
        r"^mean distance from each learnt centre to its class mean: [\d.]+$",
        r"^saved and reloaded \(weights and centres identical: True\)$",
        r"^test accuracy: [01]\.\d{3}$",
    ],
    "mask_rcnn_bind.py": [
        r"^terms logged: \['coarse_mse', 'loss', 'mask_bce'\]$",
        r"^mask IoU on the test images: coarse [01]\.\d{3}, refined [01]\.\d{3}$",
    ],
    "vae_kl_warmup.py": [
        r"^KL weight ramped from 0\.0000 to 0\.0156$",
        r"^\s+1\s+0\.00000\s+0\.00000\s+-\s+[\d.]+$",  # weight 0 at epoch 1: the term is 0
    ],
    "autoencoder.py": [
        r"^test reconstruction error: (?P<before>[\d.]+) before training, (?P<after>[\d.]+) after",
    ],
    "custom_loop.py": [
        r"^epoch 0: loss=[\d.]+, label_smoothing=[\d.]+, center=0\.0000$",
        r"^backend (tensorflow|jax|torch): centre norms",
    ],
    "activation_norm.py": [
        r"^plain: \d+ of 256 training digits right in the last epoch, "
        r"val_hidden [\d.]+$",
        r"^L2 activity regulariser: \d+ of 256 training digits right in the last epoch",
    ],
}


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_smoke_run(script: str, tmp_path: Path) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    env.pop("LOSSPLUG_DISABLE", None)
    env.pop("LOSSPLUG_DISABLE_AUTOLOAD", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for pattern in EXPECTED[script]:
        match = re.search(pattern, result.stdout, flags=re.MULTILINE)
        assert match, f"{script} did not print a line matching {pattern!r}:\n{result.stdout}"
        if "before" in match.groupdict():
            assert float(match["after"]) < float(match["before"]), match.group(0)
    assert "Traceback" not in result.stderr

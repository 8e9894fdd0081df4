"""LossModel under tf.distribute: MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy.

Each configuration runs in its own interpreter, since TensorFlow's devices and
cluster must be configured before TensorFlow is first used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.backends("tensorflow")]
WORKER = Path(__file__).with_name("strategy_worker.py")


def run(mode: str, out: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(out)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> None:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
    assert "DONE" in stdout


def failure(proc: subprocess.Popen) -> str:
    """Wait for a run that must fail; its stderr."""
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode != 0
    return stderr


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.npz"
    finish(run("single", out))
    return dict(np.load(out))


#: What each run logs: the loss, every term (incl. a scalar one mined over the global
#: batch), validation, evaluate() and predict().
LOGGED = (
    "loss",
    "toy_ce",
    "toy_center",
    "toy_spread",
    "val_loss",
    "val_toy_center",
    "evaluated",
    "predictions",
)


def weight_keys(result):
    return [k for k in result if "__" in k]


def test_mirrored_matches_single_device(single, tmp_path):
    out = tmp_path / "mirrored.npz"
    finish(run("mirrored", out))
    mirrored = dict(np.load(out))
    assert int(mirrored["replicas"]) == 2
    # Loss, each logged term and the weights (incl. the plugin's centres) after
    # 12 steps match one device on the same global batch.
    # toy_spread is a scalar over the batch gathered from both replicas: neither over-
    # nor under-counted, in the loss, the logged value or the gradients.
    for key in LOGGED:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert any(k.endswith("centers") for k in weight_keys(single))
    for key in weight_keys(single):
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("mode", ["single", "mirrored"])
def test_non_finite_term_at_a_later_batch_stops_every_replica(mode, tmp_path):
    # The worker asserts the message (term, epoch 1, batch 3), that the weights are
    # those from before that batch on every replica, and the optimizer's step count.
    finish(run(mode, tmp_path / "nan.npz", {"LOSSPLUG_NAN_AT_BATCH": "3"}))


def test_mirrored_refuses_several_steps_per_execution(tmp_path):
    # Keras 3 cannot run steps_per_execution > 1 across replicas (canary below): a clear
    # error at compile time instead of a TensorFlow graph error in the first step.
    stderr = failure(run("mirrored", tmp_path / "spe.npz", {"LOSSPLUG_STEPS_PER_EXECUTION": "3"}))
    assert (
        "CompileError: compile(steps_per_execution=3) under MirroredStrategy with 2 replicas"
        in stderr
    )
    assert "keras-team/keras#19246" in stderr and "steps_per_execution=1" in stderr


def test_upstream_plain_keras_mirrored_steps_per_execution_still_broken(tmp_path):
    """Canary for keras-team/keras#19246: when this fails, Keras is fixed; then drop
    lossplug.model._check_steps_per_execution and the test above."""
    env = {"LOSSPLUG_PLAIN_KERAS": "1", "LOSSPLUG_STEPS_PER_EXECUTION": "3"}
    stderr = failure(run("mirrored", tmp_path / "plain.npz", env))
    assert "You must feed a value for placeholder tensor" in stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_two_workers(tmp_path, extra_env=None) -> list[tuple[subprocess.Popen, Path]]:
    """Two worker processes of one MultiWorkerMirroredStrategy cluster on 127.0.0.1."""
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    started = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        out = tmp_path / f"worker{index}.npz"
        env = {"TF_CONFIG": json.dumps(config), **(extra_env or {})}
        started.append((run("multiworker", out, env), out))
    return started


def test_upstream_plain_keras_multi_worker_fit_still_broken(tmp_path):
    """Canary for tensorflow/tensorflow#72388: a plain Keras model cannot fit under
    MultiWorkerMirroredStrategy. When this fails, Keras is fixed; then remove
    lossplug._multi_worker and LossModel's three overrides that use it."""
    for proc, _ in start_two_workers(tmp_path, {"LOSSPLUG_PLAIN_KERAS": "1"}):
        stderr = failure(proc)
        assert (
            "with an unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>)"
            in stderr
        )


def test_multi_worker_trains_and_workers_agree(single, tmp_path):
    started = start_two_workers(tmp_path)
    for proc, _ in started:
        finish(proc)
    first, second = (dict(np.load(out)) for _, out in started)
    assert int(first["replicas"]) == 2
    for key in [*weight_keys(first), *LOGGED]:
        np.testing.assert_allclose(first[key], second[key], rtol=1e-6, err_msg=key)
    assert np.all(np.isfinite(first["loss"])) and first["loss"][-1] < first["loss"][0]
    # Each worker sees half of every global batch: the same data, updates, logged
    # terms (incl. the scalar one mined over both workers) as one device.
    for key in LOGGED:
        np.testing.assert_allclose(first[key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for key in weight_keys(single):
        np.testing.assert_allclose(first[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)

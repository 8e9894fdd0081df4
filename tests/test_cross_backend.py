"""A .keras file saved on one backend loads on the others: same predictions, same loss, trains on.

Every save and every load runs in a fresh interpreter with its own ``KERAS_BACKEND``.
The model uses a plugin with trainable state (``center``), a plugin with class weights
(``margin_softmax``), a schedule of the epoch past epoch 0 and an exposed layer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.backend_independent]
BACKENDS = ("tensorflow", "jax", "torch")
MISSING = [name for name in ("jax", "torch") if importlib.util.find_spec(name) is None]

SAVE = """
import json, sys, numpy as np, keras, lossplug
out = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 12)).astype("float32")
y = rng.integers(0, 4, 96).astype("int32")
np.save(out + "/x.npy", x); np.save(out + "/y.npy", y)
keras.utils.set_random_seed(1)
inputs = keras.Input((12,))
features = keras.layers.Dense(6, activation="tanh", name="features")(inputs)
logits = keras.layers.Dense(4, name="logits")(features)
model = lossplug.LossModel(inputs, logits, expose=["features"])
ramp = lossplug.schedules.LinearRamp(0.0, 1.0, begin=0, stop=4)
model.compile("adam", loss=[
    "label_smoothing",
    lossplug.use("center", weight=ramp, num_classes=4),
    lossplug.use("margin_softmax", num_classes=4, weight=0.1),
])
model.fit(x, y, epochs=3, batch_size=32, verbose=0)
np.save(out + "/predictions.npy", keras.ops.convert_to_numpy(model.predict(x, verbose=0)))
result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
json.dump({k: float(v) for k, v in result.items()}, open(out + "/evaluated.json", "w"))
model.save(out + "/model.keras")
print("SAVED", keras.backend.backend())
"""

LOAD = """
import json, sys, numpy as np, keras, lossplug
out = sys.argv[1]
x, y = np.load(out + "/x.npy"), np.load(out + "/y.npy")
model = keras.models.load_model(out + "/model.keras")
predictions = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
np.testing.assert_allclose(predictions, np.load(out + "/predictions.npy"), rtol=1e-4, atol=1e-5)
result = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
expected = json.load(open(out + "/evaluated.json"))
assert set(result) == set(expected), (sorted(result), sorted(expected))
for key, value in expected.items():
    assert abs(float(result[key]) - value) <= 1e-4 * (1 + abs(value)), (key, result[key], value)
assert model.epoch == 2, model.epoch
kernel = keras.ops.convert_to_numpy(model.get_layer("features").kernel).copy()
centres = keras.ops.convert_to_numpy(model.term_state("center")["centers"]).copy()
history = model.fit(x, y, epochs=5, initial_epoch=3, batch_size=32, verbose=0).history
assert all(np.isfinite(history["loss"])), history
assert model.epoch == 4
assert not np.allclose(keras.ops.convert_to_numpy(model.get_layer("features").kernel), kernel)
assert not np.allclose(keras.ops.convert_to_numpy(model.term_state("center")["centers"]), centres)
print("LOADED", keras.backend.backend(), json.dumps(history["loss"]))
"""


def python(code: str, backend: str, folder: Path) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, f"{backend}: {done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    assert not MISSING, f"the cross-backend tests need {MISSING} (scripts/bootstrap.sh installs it)"
    folders = {}
    for backend in BACKENDS:
        folder = tmp_path_factory.mktemp(f"saved-{backend}")
        assert f"SAVED {backend}" in python(SAVE, backend, folder)
        folders[backend] = folder
    return folders


@pytest.mark.parametrize(
    ("source", "target"),
    [(a, b) for a in BACKENDS for b in BACKENDS if a != b],
    ids=lambda name: name,
)
def test_saved_on_one_backend_loads_evaluates_and_trains_on_another(saved, source, target):
    out = python(LOAD, target, saved[source])
    line = next(line for line in out.splitlines() if line.startswith("LOADED"))
    assert json.loads(line.split(" ", 2)[2])  # the continued training's losses


OPTIMIZER_MODULES = """
import json, sys, zipfile, keras
config = json.loads(zipfile.ZipFile(sys.argv[1] + "/model.keras").read("config.json"))
optimizer = config["compile_config"]["optimizer"]
print("OPTIMIZER", optimizer["module"], optimizer["class_name"])
"""


def test_the_saved_optimizer_names_no_backend_class(saved):
    """Keras 3.15 writes a torch optimizer under its torch module; the file must not."""
    for backend, folder in saved.items():
        out = python(OPTIMIZER_MODULES, "tensorflow", folder)
        assert "OPTIMIZER keras.optimizers Adam" in out, (backend, out)

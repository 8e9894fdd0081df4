"""The ``save_load`` check: a small :class:`lossplug.LossModel` using the plugin saves and loads.

The model is generated from the spec: every input-sourced tensor except
``y_true`` becomes a model input (an ``x`` input is added if none is a float),
a small trunk mixes them, and every output-sourced tensor is produced by a head
named after it with the right shape and range (softmax for probabilities,
sigmoid for images and masks). ``y_pred`` is the model's output, the other
heads are exposed with ``expose=[...]``. The model is compiled with
``lossplug.use(plugin, **config)``, trained for one epoch (loss plugins),
evaluated, saved to ``.keras``, loaded with ``safe_mode`` on and evaluated again.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from ..properties import Example
from ..specs import Kind, Source
from .report import KitFailure


class SkipCheck(Exception):
    """The check does not apply to this plugin (the reason is the message)."""


@keras.saving.register_keras_serializable(package="lossplug_testing")
class KitTrunk(keras.layers.Layer):
    """Casts, flattens and concatenates the model inputs, then a tanh Dense layer."""

    def __init__(self, units: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, activation="tanh")

    def call(self, inputs: Any) -> Any:
        parts = [
            ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1))
            for x in keras.tree.flatten(inputs)
        ]
        joined = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
        return self.dense(joined)

    @staticmethod
    def _shapes(input_shape: Any) -> list[tuple]:
        if isinstance(input_shape, list) and input_shape and not isinstance(input_shape[0], int):
            return [tuple(s) for s in input_shape]
        return [tuple(input_shape)]

    def build(self, input_shape: Any) -> None:
        total = sum(max(1, math.prod(s[1:])) for s in self._shapes(input_shape))
        self.dense.build((None, total))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (self._shapes(input_shape)[0][0], self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="lossplug_testing")
class KitHead(keras.layers.Layer):
    """A Dense layer reshaped to ``shape`` (per sample), with an optional activation."""

    def __init__(self, shape: Any = (), activation: str = "linear", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in shape)
        self.activation_name = activation
        self.dense = keras.layers.Dense(max(1, math.prod(self.target_shape)))

    def build(self, input_shape: Any) -> None:
        self.dense.build(tuple(input_shape))

    def call(self, x: Any) -> Any:
        y = ops.reshape(self.dense(x), (-1, *self.target_shape))
        if self.activation_name == "softmax":
            return ops.softmax(y, axis=-1)
        if self.activation_name == "sigmoid":
            return ops.sigmoid(y)
        return y

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], *self.target_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "shape": list(self.target_shape),
            "activation": self.activation_name,
        }


@keras.saving.register_keras_serializable(package="lossplug_testing")
class KitZeroLoss(keras.losses.Loss):
    """0 * y_pred: the trainable loss next to a metric plugin given in ``metrics=``."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        values = ops.cast(y_pred, "float32")
        return 0.0 * ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)


def _activation(kind: Kind, rank: int) -> str:
    if kind in (Kind.PROBABILITIES, Kind.ONE_HOT):
        return "softmax" if rank >= 1 else "sigmoid"
    if kind in (Kind.IMAGES, Kind.MASKS, Kind.BINARY_LABELS):
        return "sigmoid"
    return "linear"


def build_model(spec: Any, example: Example) -> tuple[Any, dict[str, np.ndarray], Any]:
    """A LossModel fitting the spec's tensors, its input data and its targets (or None)."""
    import lossplug

    model_inputs: dict[str, Any] = {}
    data: dict[str, np.ndarray] = {}
    for tensor in spec.tensors:
        if tensor.source != Source.INPUTS or tensor.name == "y_true":
            continue
        if tensor.name not in example.inputs:
            continue
        value = np.asarray(example.inputs[tensor.name])
        if value.dtype.name == "bfloat16":
            value = value.astype(np.float32)
        model_inputs[tensor.name] = keras.Input(
            shape=value.shape[1:], dtype=value.dtype.name, name=tensor.name
        )
        data[tensor.name] = value
    n = next(iter(data.values())).shape[0] if data else None
    if n is None:
        for mapping in (example.inputs, example.outputs):
            for value in mapping.values():
                n = np.asarray(value).shape[0]
                break
            if n is not None:
                break
    if not any(np.asarray(v).dtype.kind == "f" for v in data.values()):
        model_inputs["x"] = keras.Input(shape=(4,), dtype="float32", name="x")
        data["x"] = np.random.default_rng(0).standard_normal((n or 4, 4)).astype("float32")
    trunk = KitTrunk(8, name="kit_trunk")(list(model_inputs.values()))
    heads: dict[str, Any] = {}
    for tensor in spec.tensors:
        if tensor.source != Source.OUTPUTS or tensor.name not in example.outputs:
            continue
        if tensor.kind in (Kind.SPARSE_LABELS, Kind.LABELS):
            raise SkipCheck(
                f"the plugin reads integer labels from outputs[{tensor.name!r}]; a generated "
                "model cannot produce them"
            )
        shape = np.asarray(example.outputs[tensor.name]).shape[1:]
        activation = _activation(tensor.kind, len(shape))
        if tensor.name == "y_pred":
            heads["y_pred"] = (shape, activation)
        else:
            heads[tensor.name] = KitHead(shape, activation, name=tensor.name)(trunk)
    # The exposed heads feed the output (through a mixing layer) so that they are layers of
    # the model; y_pred (if the plugin reads it) is the model's output.
    y_pred = heads.pop("y_pred", None)
    if heads:
        trunk = KitTrunk(8, name="kit_mix")([trunk, *heads.values()])
    if y_pred is not None:
        shape, activation = y_pred
        output = KitHead(shape, activation, name="y_pred")(trunk)
    else:
        output = KitHead((1,), name="prediction")(trunk)
    model = lossplug.LossModel(model_inputs, output, expose=list(heads))
    y = example.inputs.get("y_true")
    if y is not None:
        y = np.asarray(y)
        if y.dtype.name == "bfloat16":
            y = y.astype(np.float32)
    return model, data, y


def _stage(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except KitFailure:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise KitFailure(f"{what} raised {type(exc).__name__}: {first}") from exc


def _config_values(config: Any) -> dict[str, Any]:
    import attrs

    return {f.name: getattr(config, f.name) for f in attrs.fields(type(config)) if f.init}


def save_and_load(ctx: Any, example: Example) -> None:
    """Build, train one epoch, evaluate, save, load (safe_mode) and compare.

    Every weight, the plugin's state included (as the training steps left it, with
    the plugin's own updates applied), must be unchanged by ``evaluate`` and
    ``predict`` and equal after loading.
    """
    import lossplug

    spec = ctx.spec
    model, x, y = build_model(spec, example)
    n = next(iter(x.values())).shape[0]
    term = lossplug.use(spec.name, **_config_values(example.config))
    if spec.returns == "metrics":
        if y is None:  # targets for the zero loss; the plugin reads none
            y = np.zeros((n, 1), "float32")
        _stage(
            "LossModel.compile(metrics=[lossplug.use(...)])",
            model.compile,
            optimizer=keras.optimizers.SGD(0.01),
            loss=KitZeroLoss(),
            metrics=[term],
        )
    else:
        _stage(
            "LossModel.compile(loss=lossplug.use(...))",
            model.compile,
            optimizer=keras.optimizers.SGD(0.01),
            loss=term,
        )
    if spec.returns != "metrics":
        with warnings.catch_warnings():
            # The generated model's unused prediction head gets no gradient: that is expected.
            warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
            _stage(
                "LossModel.fit", model.fit, x, y, batch_size=n, epochs=1, verbose=0, shuffle=False
            )
    trained = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
    before = _stage(
        "LossModel.evaluate", model.evaluate, x, y, batch_size=n, verbose=0, return_dict=True
    )
    predicted = _stage("LossModel.predict", model.predict, x, batch_size=n, verbose=0)
    for w in model.weights:
        if not np.array_equal(keras.ops.convert_to_numpy(w), trained[w.path], equal_nan=True):
            raise KitFailure(
                f"evaluate() or predict() changed the variable {w.path!r}: state a plugin "
                "updates by its own rule may change in training steps only"
            )
    with tempfile.TemporaryDirectory(prefix="lossplug-kit-") as tmp:
        path = os.path.join(tmp, "model.keras")
        _stage("model.save", model.save, path)
        loaded = _stage("keras.models.load_model (safe_mode=True)", keras.models.load_model, path)
    if not isinstance(loaded, lossplug.LossModel):
        raise KitFailure(f"the loaded model is a {type(loaded).__name__}, not a lossplug.LossModel")
    after = _stage(
        "evaluate on the loaded model",
        loaded.evaluate,
        x,
        y,
        batch_size=n,
        verbose=0,
        return_dict=True,
    )
    predicted_after = _stage(
        "predict on the loaded model", loaded.predict, x, batch_size=n, verbose=0
    )
    if set(after) != set(before):
        raise KitFailure(
            f"evaluate reports {sorted(before)} before saving and {sorted(after)} after loading"
        )
    for key in before:
        if not np.allclose(after[key], before[key], rtol=1e-5, atol=1e-6, equal_nan=True):
            raise KitFailure(
                f"evaluate()[{key!r}] is {before[key]!r} before saving and {after[key]!r} after "
                "loading (state or config of the plugin lost in the .keras file?)"
            )
    if not np.allclose(predicted_after, predicted, rtol=1e-5, atol=1e-6):
        raise KitFailure("predict() differs before saving and after loading")
    weights = {w.path: np.asarray(w) for w in model.weights}
    weights_after = {w.path: np.asarray(w) for w in loaded.weights}
    for path, value in weights.items():
        if path in weights_after and not np.allclose(weights_after[path], value):
            raise KitFailure(f"the variable {path!r} changed when the model was saved and loaded")


__all__ = ["KitHead", "KitTrunk", "KitZeroLoss", "SkipCheck", "build_model", "save_and_load"]

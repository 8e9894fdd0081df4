"""Calling a plugin the way the core does, eagerly or compiled, on NumPy examples.

A :class:`PluginHarness` wraps one installed or registered plugin. For each
config and tensor layout it keeps a :class:`Session`: a
:class:`lossplug.StateStore` probed once (as ``LossModel.compile`` does, so
state variables exist before anything is traced) and the functions the current
backend compiled for it (``tf.function`` and XLA, ``jax.jit``, ``torch.compile``;
see ``KIT_MODES`` in :mod:`lossplug.backend`), so that the expensive tracing and
compilation happen once per plugin, config, dtype and shape. Gradients come
from the backend's autodiff.

Every call restores the session's state variables to the example's state (or
to their initial values) first, so results never depend on earlier calls.
"""

from __future__ import annotations

import random
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import keras
import numpy as np

from .. import backend
from ..extras import Extras, StateStore
from ..properties import Example
from ..registry import registry
from ..specs import LossResult, PluginSpec, Source, make_config
from ..terms import call_plugin as _core_call_plugin
from ._data import is_batched, signature

_MAX_SESSIONS = 64


def modes() -> tuple[str, ...]:
    """The ways the kit calls a plugin on this backend: "eager", then the compiled ones."""
    return ("eager", *backend.current().KIT_MODES)


def mode_text(mode: str) -> str:
    return backend.current().KIT_MODES.get(mode, mode)


@attrs.frozen
class Outcome:
    """What one call of a plugin produced, as NumPy (float32, as the core sees it)."""

    loss: np.ndarray | None
    metrics: dict[str, np.ndarray]
    per_sample: bool
    #: the state updates the plugin asked for (``extras.state.update``), by variable name;
    #: the kit never applies them
    updates: dict[str, np.ndarray] = attrs.field(factory=dict)

    def values(self) -> dict[str, np.ndarray]:
        """The loss (if any) and every metric, by name (``"loss"``, ``"metric:<name>"``)."""
        out = {} if self.loss is None else {"loss": self.loss}
        out.update({f"metric:{k}": v for k, v in self.metrics.items()})
        return out


def _config_key(config: Any) -> str:
    return repr(config)


def _tensor(value: Any, dtype: Any = None) -> Any:
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":
        import ml_dtypes

        array = array.astype(ml_dtypes.bfloat16)
    tensor = keras.ops.convert_to_tensor(array)
    if dtype is not None and (array.dtype.kind == "f" or array.dtype.name == "bfloat16"):
        tensor = keras.ops.cast(tensor, dtype)
    return tensor


def _np(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


class Session:
    """One plugin with one config and tensor layout: its state store and compiled functions."""

    def __init__(self, harness: PluginHarness, config: Any) -> None:
        self.harness = harness
        self.spec: PluginSpec = harness.spec
        self.config = config
        self.store = StateStore(plugin=self.spec.name, name=f"lossplug_kit_{self.spec.name}")
        self.ready = False
        self.initial_state: dict[str, np.ndarray] = {}
        self._compiled: dict[Any, Any] = {}

    # ------------------------------------------------------------------ plumbing
    def extras(self, training: bool, epoch: Any, step: Any) -> Extras:
        return Extras(
            config=self.config,
            epoch=epoch,
            step=step,
            training=bool(training),
            state=self.store,
            term=self.spec.name,
        )

    def tensors(self, example: Example, dtype: Any = None) -> tuple[dict, dict]:
        """The declared tensors of ``example`` as TensorFlow tensors (floats cast to ``dtype``)."""
        inputs, outputs = {}, {}
        for tensor in self.spec.tensors:
            mapping = example.inputs if tensor.source == Source.INPUTS else example.outputs
            if tensor.name not in mapping:
                continue
            value = _tensor(mapping[tensor.name], dtype)
            (inputs if tensor.source == Source.INPUTS else outputs)[tensor.name] = value
        return inputs, outputs

    def ensure(self, example: Example) -> None:
        """Probe the plugin once (eagerly, ``training=False``) to create its state variables."""
        if self.ready:
            return
        inputs, outputs = self.tensors(example)
        saved = random.getstate()
        # Initializers draw their seeds from Python's random: make state reproducible.
        random.seed(zlib.crc32(f"{self.spec.name}:{_config_key(self.config)}".encode()))
        try:
            _core_call_plugin(
                self.spec,
                self.harness.caller,
                inputs,
                outputs,
                self.extras(False, _int(0), _int(0)),
                term=self.spec.name,
            )
        finally:
            random.setstate(saved)
        self.store.close()
        self.initial_state = self.store.values()
        self.ready = True

    def restore(self, state: Mapping[str, Any] | None) -> None:
        values = dict(self.initial_state)
        values.update(state or {})
        if values:
            self.store.set_values({k: np.asarray(v) for k, v in values.items() if k in self.store})

    # ------------------------------------------------------------------ calls
    def _run(self, training: bool) -> Any:
        spec, caller = self.spec, self.harness.caller

        def run(inputs: dict, outputs: dict, epoch: Any, step: Any) -> Any:
            out = _core_call_plugin(
                spec, caller, inputs, outputs, self.extras(training, epoch, step), term=spec.name
            )
            updates = {_var_name(var): value for var, value in out.updates}
            return out.loss, {k: v for k, (v, _) in out.metrics.items()}, updates

        return run

    def call(
        self,
        example: Example,
        *,
        mode: str = "eager",
        dtype: Any = None,
        training: bool = True,
        epoch: int = 0,
        step: int = 0,
    ) -> Outcome:
        self.ensure(example)
        self.restore(example.state)
        inputs, outputs = self.tensors(example, dtype)
        args = (inputs, outputs, _int(epoch), _int(step))
        if mode == "eager":
            loss, metrics, updates = self._run(training)(*args)
        elif mode in backend.current().KIT_MODES:
            loss, metrics, updates = self._function(mode, training, args)(*args)
        else:
            raise ValueError(f"mode must be one of {modes()}, got {mode!r}")
        return Outcome(
            loss=None if loss is None else _np(loss),
            metrics={k: _np(v) for k, v in metrics.items()},
            per_sample=loss is not None and len(loss.shape) > 0,
            updates={k: _np(v) for k, v in updates.items()},
        )

    def _function(self, mode: str, training: bool, args: tuple) -> Any:
        inputs, outputs = args[0], args[1]
        key = (mode, bool(training), _layout(inputs), _layout(outputs))
        fn = self._compiled.get(key)
        if fn is not None:
            return fn
        declared = {(t.source.value, t.name): t for t in self.spec.tensors}

        def dynamic(path: tuple) -> bool:
            if len(path) < 2 or path[0] not in (0, 1):
                return False
            source = "inputs" if path[0] == 0 else "outputs"
            tensor = declared.get((source, path[1]))
            return tensor is not None and is_batched(tensor)

        fn = backend.current().kit_compile(
            self._run(training), mode, args, dynamic, list(self.store.variables)
        )
        self._compiled[key] = fn
        return fn

    def gradients(
        self, example: Example, wrt: Sequence[str], *, dtype: Any = None, training: bool = True
    ) -> tuple[Outcome, dict[str, np.ndarray | None], dict[str, np.ndarray | None]]:
        """The call's outcome and the gradients of sum(loss) w.r.t. ``wrt`` and trainable state."""
        self.ensure(example)
        self.restore(example.state)
        inputs, outputs = self.tensors(example, dtype)
        if self.spec.returns == "metrics":
            loss, metrics, _ = self._run(training)(inputs, outputs, _int(0), _int(0))
            return Outcome(None, {k: _np(v) for k, v in metrics.items()}, False), {}, {}
        variables = list(self.store.trainable_variables)
        watched = {name: _lookup(inputs, outputs, name) for name in wrt}

        def objective(tensors: dict) -> Any:
            ins = {k: tensors.get(k, v) for k, v in inputs.items()}
            outs = {k: tensors.get(k, v) for k, v in outputs.items()}
            out = _core_call_plugin(
                self.spec,
                self.harness.caller,
                ins,
                outs,
                self.extras(training, _int(0), _int(0)),
                term=self.spec.name,
            )
            metrics = {k: v for k, (v, _) in out.metrics.items()}
            return keras.ops.sum(out.loss), (out.loss, metrics, out.per_sample)

        _, aux, tensor_grads, variable_grads = backend.current().kit_gradients(
            objective, watched, variables
        )
        loss, metrics, per_sample = aux
        outcome = Outcome(
            loss=_np(loss), metrics={k: _np(v) for k, v in metrics.items()}, per_sample=per_sample
        )
        return (
            outcome,
            {n: _np_or_none(g) for n, g in tensor_grads.items()},
            {_var_name(v): _np_or_none(g) for v, g in zip(variables, variable_grads, strict=True)},
        )

    def raw(
        self, example: Example, wrt: Sequence[str] = (), *, training: bool = True
    ) -> tuple[float, str, dict[str, np.ndarray | None]]:
        """sum(loss) as the plugin computed it (before the core's float32 cast) and its gradients.

        Returns the value (float), the dtype the plugin computed the loss in and
        the gradients with respect to ``wrt`` (for finite-difference checks).
        """
        self.ensure(example)
        self.restore(example.state)
        inputs, outputs = self.tensors(example)
        extras = self.extras(training, _int(0), _int(0))

        def objective(tensors: dict) -> Any:
            ins = {k: tensors.get(k, v) for k, v in inputs.items()}
            outs = {k: tensors.get(k, v) for k, v in outputs.items()}
            result = self.harness.caller(inputs=ins, outputs=outs, extras=extras)
            loss = result.loss if isinstance(result, LossResult) else result
            loss = keras.ops.convert_to_tensor(loss)
            return keras.ops.sum(loss), keras.backend.standardize_dtype(loss.dtype)

        if not wrt:
            value, dtype = objective({})
            return float(_np(value)), dtype, {}
        watched = {name: _lookup(inputs, outputs, name) for name in wrt}
        value, dtype, grads, _ = backend.current().kit_gradients(objective, watched, [])
        return float(_np(value)), dtype, {n: _np_or_none(g) for n, g in grads.items()}


def _int(value: Any) -> Any:
    return keras.ops.convert_to_tensor(np.int32(value))


def _layout(tensors: Mapping[str, Any]) -> tuple:
    return tuple(
        sorted(
            (k, tuple(v.shape), keras.backend.standardize_dtype(v.dtype))
            for k, v in tensors.items()
        )
    )


def _lookup(inputs: Mapping[str, Any], outputs: Mapping[str, Any], name: str) -> Any:
    if name in outputs:
        return outputs[name]
    return inputs[name]


def _np_or_none(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return _np(value)


def _var_name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or variable.name).split("/")[-1]


class PluginHarness:
    """One plugin, ready to be called on examples (sessions cached by config and layout)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entry = registry.entry(name)
        self.spec: PluginSpec = registry.spec(name)
        from ..terms import check_backend

        check_backend(self.spec)
        self.caller = registry.hook_caller(name)
        self._sessions: OrderedDict[Any, Session] = OrderedDict()

    def session(self, example: Example) -> Session:
        layout = tuple((s[0], s[1], s[3], s[4]) for s in signature(example))  # no dtypes
        key = (_config_key(example.config), layout)
        session = self._sessions.get(key)
        if session is None:
            session = Session(self, example.config)
            self._sessions[key] = session
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(key)
        return session

    def prepare(self, example: Example) -> Example:
        """``example`` with its state filled in (the plugin's initial state variables)."""
        session = self.session(example)
        session.ensure(example)
        if example.state:
            return example
        return example.replace(state=dict(session.initial_state))

    def evaluate(self, example: Example, **kwargs: Any) -> Outcome:
        return self.session(example).call(example, **kwargs)

    def gradients(self, example: Example, wrt: Sequence[str], **kwargs: Any) -> Any:
        return self.session(example).gradients(example, wrt, **kwargs)

    def raw(self, example: Example, wrt: Sequence[str] = ()) -> Any:
        return self.session(example).raw(example, wrt)


_HARNESSES: OrderedDict[Any, PluginHarness] = OrderedDict()


def harness_for(name: str) -> PluginHarness:
    """A cached harness for ``name`` (a new one if the plugin object changed)."""
    entry = registry.entry(name)
    key = (name, id(entry.obj), entry.distribution)
    harness = _HARNESSES.get(key)
    if harness is None or harness.entry.obj is not entry.obj:
        harness = PluginHarness(name)
        key = (name, id(harness.entry.obj), harness.entry.distribution)
        _HARNESSES[key] = harness
        while len(_HARNESSES) > 16:
            _HARNESSES.popitem(last=False)
    return harness


def call_plugin(
    name: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    config: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    training: bool = False,
    epoch: int = 0,
    step: int = 0,
    dtype: Any = None,
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Call the plugin ``name`` eagerly on NumPy arrays, as the core would.

    The plugin gets a fresh :class:`lossplug.StateStore`; ``state`` (name ->
    array) overwrites the values of the variables the plugin creates. Floating
    point tensors are cast to ``dtype`` when given. Returns the loss (float32
    NumPy, per sample or scalar; ``None`` for metric-only plugins) and the
    metrics by name. Bug reports of the conformance kit print a call of this
    function that reproduces the failing example.

    Example::

        loss, metrics = call_plugin("center", {"y_true": np.array([0, 1])},
                                    {"features": np.zeros((2, 3), "float32")},
                                    config={"num_classes": 2})
    """
    harness = PluginHarness(name)
    spec = harness.spec
    example = Example(
        inputs={k: np.asarray(v) for k, v in inputs.items()},
        outputs={k: np.asarray(v) for k, v in outputs.items()},
        config=make_config(spec, dict(config or {})),
        state=dict(state or {}),
    )
    session = Session(harness, example.config)
    outcome = session.call(example, dtype=dtype, training=training, epoch=epoch, step=step)
    return outcome.loss, outcome.metrics


def plugin_gradients(
    name: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    wrt: Sequence[str],
    *,
    config: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    training: bool = True,
) -> tuple[np.ndarray | None, dict[str, np.ndarray | None], dict[str, np.ndarray | None]]:
    """The gradients of the plugin ``name``'s summed loss, as :func:`call_plugin` calls it.

    ``wrt`` names the tensors of ``inputs`` or ``outputs`` (NumPy arrays) to
    differentiate; ``config`` and ``state`` are those of :func:`call_plugin`. Returns
    the loss (float32 NumPy), the gradients of ``sum(loss)`` with respect to each tensor
    of ``wrt`` and those with respect to the plugin's trainable state variables, by
    variable name, from the backend's autodiff (the harness the conformance kit uses,
    with ``training=True`` as in ``fit``).

    Example::

        loss, grads, state_grads = plugin_gradients(
            "center", {"y_true": y}, {"features": x}, ["features"],
            config={"num_classes": 4}, state={"centers": c})
        grads["features"], state_grads["centers"]
    """
    harness = harness_for(name)
    example = Example(
        inputs={k: np.asarray(v) for k, v in inputs.items()},
        outputs={k: np.asarray(v) for k, v in outputs.items()},
        config=make_config(harness.spec, dict(config or {})),
        state=dict(state or {}),
    )
    outcome, grads, state_grads = harness.gradients(example, wrt, training=training)
    return outcome.loss, grads, state_grads


__all__ = [
    "Outcome",
    "PluginHarness",
    "Session",
    "call_plugin",
    "harness_for",
    "mode_text",
    "modes",
    "plugin_gradients",
]

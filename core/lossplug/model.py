"""``LossModel``: a functional Keras model that trains on plugin-produced loss terms.

Design (see docs/concepts.md):

* ``LossModel(inputs, outputs, expose=[...])`` is a Keras functional model. An
  internal functional graph with the same layers also returns the exposed
  intermediate tensors; ``call`` runs it once, hands the exposed tensors to the
  loss computation of the same step and returns only ``outputs``, so
  ``predict`` and serving see the model the user built.
* ``compile(loss=...)`` turns every entry into a :class:`lossplug.Term`, calls
  every plugin once eagerly on a tiny dummy batch (the *probe*) to create its
  state variables and metrics before training, and hands Keras the remaining
  arguments (optimizer, metrics, ...).
* ``compute_loss`` (Keras' public override point) evaluates each term, reduces
  it (sample weights, float32, ``tf.distribute`` scaling), weights it by its
  schedule and updates one metric per term; Keras' ``train_step`` does the rest.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import keras
import numpy as np
from keras import ops

from ._multi_worker import first_local_batch, in_multi_worker_mode, logs_for_replica_mean
from .errors import (
    CompileError,
    LossplugError,
    MissingTensorError,
    NonFiniteLossError,
    PluginResultError,
)
from .extras import Extras, StateStore
from .registry import registry
from .schedules import Constant, Schedule
from .specs import Kind, Source
from .terms import (
    Term,
    TermOutput,
    as_term,
    call_plugin,
    reduce_per_sample,
    scale_for_distribution,
)

#: Batch size of the dummy batch each plugin is called on at compile time (the probe).
PROBE_BATCH = 2


#: Index of ``callbacks`` among ``keras.Model.fit``'s positional parameters
#: (x, y, batch_size, epochs, verbose, callbacks, ...).
_FIT_CALLBACKS_POSITION = 5


class _Hidden:
    """Holds an object out of reach of Keras' attribute tracking."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@attrs.define
class _BoundTerm:
    """A term attached to the model: which output, its metric name, its runtime parts."""

    term: Term
    output: str | None  #: output name for y_true / y_pred, None for model-wide terms
    name: str  #: display name (unique within the model)
    loss_weight: float = 1.0
    caller: Any = None
    state: StateStore | None = None
    weight_variable: Any = None  #: for Python-callable schedules
    metric: Any = None
    has_loss: bool = True
    plugin_metrics: dict[str, Any] = attrs.field(factory=dict)


def _flat_output_names(model: keras.Model) -> list[str]:
    out = model.output
    if isinstance(out, Mapping):
        return list(out.keys())
    flat = keras.tree.flatten(out)
    return [t._keras_history.operation.name for t in flat]


def _flat_input_names(model: keras.Model) -> list[str]:
    inp = model.input
    if isinstance(inp, Mapping):
        return list(inp.keys())
    return [t.name for t in keras.tree.flatten(inp)]


@keras.saving.register_keras_serializable(package="lossplug")
class LossModel(keras.Model):
    """A functional Keras model whose ``compile`` accepts loss plugins.

    Args:
        inputs, outputs, name: as for ``keras.Model(inputs, outputs)``.
        expose: layer names (or a dict ``{name: KerasTensor}``) whose outputs
            the loss plugins may read; ``predict`` still returns ``outputs`` only.

    Example::

        model = lossplug.LossModel(inputs, logits, expose=["features"])
        model.compile("adam", loss=["label_smoothing", lossplug.use("center", weight=0.2)])
        model.fit(x, y)
    """

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None, **kwargs: Any) -> None:
        expose = kwargs.pop("expose", None)
        super().__init__(inputs, outputs, name=name, **kwargs)
        self._lossplug = _Hidden(
            {"expose": {}, "graph": None, "terms": [], "loss": None, "loss_weights": None}
        )
        self._lossplug_local = _Hidden(threading.local())
        self._lossplug_clock = _Hidden(None)
        self._set_expose(expose)

    # ------------------------------------------------------------------ exposure
    def _set_expose(self, expose: Any) -> None:
        exposed: dict[str, Any] = {}
        if expose is None:
            expose = ()
        if isinstance(expose, str):
            expose = [expose]
        if isinstance(expose, Mapping):
            items = list(expose.items())
        else:
            items = [(name, None) for name in expose]
        reserved = set(_flat_output_names(self)) | {"y_pred"}
        for name, tensor in items:
            if name in reserved:
                raise CompileError(
                    f"expose: {name!r} is already an output name of this model; outputs are "
                    "always available to plugins, expose intermediate layers only"
                )
            if tensor is None:
                try:
                    layer = self.get_layer(name)
                except ValueError:
                    names = ", ".join(layer.name for layer in self.layers)
                    raise CompileError(
                        f"expose: this model has no layer named {name!r}; its layers are: "
                        f"{names}. (A layer whose output leads to none of the model's outputs is "
                        "not part of the model and would not be trained: make it an output.)"
                    ) from None
                try:
                    tensor = layer.output
                except (AttributeError, ValueError) as exc:
                    raise CompileError(
                        f"expose: layer {name!r} is called more than once in the model, so its "
                        "output is ambiguous; pass expose={'a_name': tensor} with the tensor you "
                        f"mean ({exc})"
                    ) from None
            else:
                owner = tensor._keras_history.operation
                if not any(owner is layer for layer in self.layers):
                    raise CompileError(
                        f"expose: the tensor {name!r} comes from layer {owner.name!r}, which "
                        "leads to none of the model's outputs, so it is not part of the model "
                        "and would not be trained or saved: make it an output."
                    )
            exposed[name] = tensor
        graph = None
        if exposed:
            try:
                graph = keras.Model(self.input, [self.output, exposed])
            except ValueError as exc:
                raise CompileError(
                    f"expose: the exposed tensors {sorted(exposed)} must be computed from this "
                    f"model's inputs: {exc}"
                ) from None
        self._lossplug.value["expose"] = exposed
        self._lossplug.value["graph"] = graph

    @property
    def exposed(self) -> list[str]:
        """Names of the intermediate tensors plugins can read."""
        return list(self._lossplug.value["expose"])

    def call(self, inputs: Any, training: Any = None, mask: Any = None, **kwargs: Any) -> Any:
        graph = self._lossplug.value["graph"]
        if graph is None:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        outputs, exposed = graph(inputs, training=training)
        # Hand the exposed tensors to compute_loss of this same step (same thread,
        # same trace); keyed by the prediction object compute_loss receives.
        self._lossplug_local.value.last = (keras.tree.flatten(outputs)[0], exposed)
        return outputs

    def _exposed_for(self, x: Any, y_pred: Any, training: bool) -> dict[str, Any]:
        if not self._lossplug.value["expose"]:
            return {}
        last = getattr(self._lossplug_local.value, "last", None)
        first = keras.tree.flatten(y_pred)[0]
        if last is not None and last[0] is first:
            return dict(last[1])
        # compute_loss was called with a prediction not produced by our call
        # (e.g. by hand): recompute the exposed tensors.
        _, exposed = self._lossplug.value["graph"](x, training=training)
        return dict(exposed)

    # ------------------------------------------------------------------ serialization
    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["expose_tensors"] = {
            name: [
                tensor._keras_history.operation.name,
                tensor._keras_history.node_index,
                tensor._keras_history.tensor_index,
            ]
            for name, tensor in self._lossplug.value["expose"].items()
        }
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> LossModel:
        config = dict(config)
        locations = config.pop("expose_tensors", {}) or {}
        model = super().from_config(config, custom_objects=custom_objects)
        expose = {}
        for name, (layer_name, node_index, tensor_index) in locations.items():
            layer = model.get_layer(layer_name)
            node = layer._inbound_nodes[node_index]
            expose[name] = keras.tree.flatten(node.outputs)[tensor_index]
        model._set_expose(expose)
        return model

    def inference_model(self) -> keras.Model:
        """A plain ``keras.Model`` with the same layers and no loss machinery, for serving."""
        return keras.Model(self.input, self.output, name=f"{self.name}_inference")

    # ------------------------------------------------------------------ compile
    def compile(  # type: ignore[override]
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        loss_weights: Any = None,
        metrics: Any = None,
        weighted_metrics: Any = None,
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
        jit_compile: Any = "auto",
        auto_scale_loss: bool = True,
        check_finite: bool = True,
        targets: Mapping[str, Any] | None = None,
    ) -> None:
        """Configure training; ``loss`` takes plugin names, ``lossplug.use(...)``, Keras losses.

        ``loss`` may be one term, a list of terms, or a dict mapping output names
        to terms (or lists of terms). For a single-output model a list means
        "the sum of these terms"; for a model with N outputs a list of length N
        assigns one entry (a term or a list of terms) to each output, as in
        Keras. ``loss_weights`` (a number, list or dict like Keras') multiplies
        the terms of each output. With ``check_finite`` the first training
        batch raises :class:`lossplug.NonFiniteLossError` naming the plugin
        whose term is NaN or infinite.

        ``targets`` declares targets that are not model outputs (``fit(x, {"logits":
        labels, "mask": masks})``) as ``{name: shape}`` or ``{name: (shape, dtype)}``
        without the batch axis, so plugins can be bound to them
        (``bind={"y_true": "mask"}``) and checked at compile time.
        """
        _check_steps_per_execution(steps_per_execution, self.distribute_strategy)
        extra_targets = _parse_targets(targets, _flat_output_names(self))
        bound = self._bind_terms(loss, loss_weights)
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        state = self._lossplug.value
        state["targets"] = extra_targets
        old_stores = {b.name: b.state for b in state["terms"] if b.state is not None}
        if self._lossplug_clock.value is None:
            self._lossplug_clock.value = keras.Variable(
                0, dtype="int64", trainable=False, name="lossplug_epoch"
            )
        for b in bound:
            self._build_term(b, old_stores.get(b.name))
        state["terms"] = bound
        state["loss"] = loss
        state["loss_weights"] = loss_weights
        state["check_finite"] = check_finite
        # One tracked list, mutated in place, so that a store whose term is gone
        # after a recompile stops being part of the model (weights, saving).
        if not hasattr(self, "_lossplug_state_stores"):
            self._lossplug_state_stores = []
        stores = self._lossplug_state_stores
        live = [b.state for b in bound if b.state is not None and b.state.weights]
        for store in list(stores):
            if not any(store is s for s in live):
                stores.remove(store)
        for store in live:
            if not any(store is s for s in stores):
                stores.append(store)

    def _bind_terms(self, loss: Any, loss_weights: Any) -> list[_BoundTerm]:
        outputs = _flat_output_names(self)
        single = len(outputs) == 1
        pairs: list[tuple[str | None, Any, float]] = []

        def weight_for(output: str | None, index: int | None) -> float:
            if loss_weights is None or output is None:
                return 1.0
            if isinstance(loss_weights, Mapping):
                return float(loss_weights.get(output, 1.0))
            if isinstance(loss_weights, Sequence):
                return float(loss_weights[index if index is not None else 0])
            return float(loss_weights)

        def entries(obj: Any) -> list[Any]:
            return list(obj) if isinstance(obj, list | tuple) else [obj]

        if loss is None:
            return []
        if isinstance(loss, Mapping):
            for key, value in loss.items():
                if key not in outputs:
                    raise CompileError(
                        f"compile(loss=...): {key!r} is not an output of this model; its outputs "
                        f"are: {', '.join(outputs)}"
                    )
                for entry in entries(value):
                    pairs.append((key, entry, weight_for(key, outputs.index(key))))
        elif isinstance(loss, list | tuple) and not single:
            if len(loss) != len(outputs):
                raise CompileError(
                    f"compile(loss=[...]) got {len(loss)} entries for a model with "
                    f"{len(outputs)} outputs ({', '.join(outputs)}); pass one entry (a loss or a "
                    "list of losses) per output, or a dict {output_name: loss}"
                )
            for index, (output, value) in enumerate(zip(outputs, loss, strict=True)):
                for entry in entries(value):
                    if entry is None:
                        continue
                    pairs.append((output, entry, weight_for(output, index)))
        else:
            only = outputs[0] if single else None
            for entry in entries(loss):
                pairs.append((only, entry, weight_for(only, 0)))

        bound: list[_BoundTerm] = []
        used: dict[str, int] = {}
        for output, entry, weight in pairs:
            term = as_term(entry)
            base = term.name
            if output is not None and not single and not term.display_name:
                base = f"{output}_{base}"
            count = used.get(base, 0)
            used[base] = count + 1
            name = base if count == 0 else f"{base}_{count + 1}"
            if name in {"loss"} | set(outputs):
                name = f"{name}_term"
            bound.append(_BoundTerm(term=term, output=output, name=name, loss_weight=weight))
        return bound

    def _build_term(self, b: _BoundTerm, old_store: StateStore | None) -> None:
        term = b.term
        if term.plugin is not None:
            b.caller = registry.hook_caller(term.plugin)
            if old_store is not None and old_store.plugin == term.spec.name:
                b.state = old_store
                b.state._open = True
            else:
                b.state = StateStore(plugin=term.spec.name, name=f"lossplug_state_{b.name}")
        if not term.weight.in_graph:
            b.weight_variable = keras.Variable(
                term.weight.value_at(0),
                dtype="float32",
                trainable=False,
                name=f"lossplug_weight_{b.name}",
            )
        b.metric = keras.metrics.Mean(name=b.name)
        b.plugin_metrics = {}
        if term.plugin is None:
            return  # a Keras loss: no state, no metrics of its own
        # The probe: one eager call on a dummy batch creates state and reveals metric names.
        probe = self._probe_term(b)
        if b.state is not None:
            b.state.close()
        b.has_loss = probe.loss is not None
        for metric_name, (_, aggregation) in probe.metrics.items():
            full = f"{b.name}_{metric_name}"
            if not b.has_loss and metric_name in (term.spec.name, b.name):
                full = b.name  # a metric plugin's main metric goes by the term's name
            cls = keras.metrics.Sum if aggregation == "sum" else keras.metrics.Mean
            b.plugin_metrics[metric_name] = cls(name=full)
        if probe.loss is None and term.spec.returns != "metrics":
            raise PluginResultError(
                f"loss plugin {term.spec.name!r} returned no loss; declare returns='metrics' in "
                "its spec if it only computes metrics"
            )

    def _probe_term(self, b: _BoundTerm) -> Any:
        def dummy(tensor: Any) -> Any:
            shape = [PROBE_BATCH if i == 0 else (d or 1) for i, d in enumerate(tensor.shape)]
            return ops.zeros(shape, dtype=tensor.dtype)

        x = keras.tree.map_structure(dummy, self.input)
        y_pred = keras.tree.map_structure(dummy, self.output)
        exposed = {k: dummy(v) for k, v in self._lossplug.value["expose"].items()}
        try:
            y = self._dummy_targets(b, y_pred)
            return self._evaluate_term(b, x, y, y_pred, exposed, None, training=False)
        except (LossplugError, KeyError):
            raise
        except Exception as first:
            # The targets' form is unknown before fit: a plugin reading "any" targets
            # may expect sparse class ids where we guessed the prediction's shape.
            try:
                y = self._dummy_targets(b, y_pred, sparse=True)
                return self._evaluate_term(b, x, y, y_pred, exposed, None, training=False)
            except Exception:
                raise first from None

    def _dummy_targets(self, b: _BoundTerm, y_pred: Any, sparse: bool = False) -> Any:
        spec = b.term.spec
        wanted = [
            t
            for t in spec.tensors
            if t.source == Source.INPUTS and b.term.bind.get(t.name, t.name) == "y_true"
        ]
        outputs = _flat_output_names(self)
        preds = dict(zip(outputs, keras.tree.flatten(y_pred), strict=True))

        def target_like(pred: Any, kind: Kind | None) -> Any:
            if kind in (Kind.SPARSE_LABELS, Kind.LABELS):
                return ops.zeros((PROBE_BATCH,), dtype="int32")
            return ops.zeros(pred.shape, dtype="float32")

        kind = wanted[0].kind if wanted else None
        if sparse:
            kind = Kind.SPARSE_LABELS
        dummies = {
            name: target_like(p, kind if name == b.output else None) for name, p in preds.items()
        }
        for name, (shape, dtype) in self._lossplug.value.get("targets", {}).items():
            dummies[name] = ops.zeros((PROBE_BATCH, *shape), dtype=dtype)
        return dummies

    # ------------------------------------------------------------------ loss
    def _namespaces(
        self, b: _BoundTerm, x: Any, y: Any, y_pred: Any, exposed: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        inputs: dict[str, Any] = {}
        input_names = _flat_input_names(self)
        if isinstance(x, Mapping):
            inputs.update(x)
        else:
            flat_x = keras.tree.flatten(x)
            if len(flat_x) == len(input_names):
                inputs.update(zip(input_names, flat_x, strict=True))
        if len(input_names) == 1 and input_names[0] in inputs:
            inputs.setdefault("x", inputs[input_names[0]])
        output_names = _flat_output_names(self)
        outputs: dict[str, Any] = dict(zip(output_names, keras.tree.flatten(y_pred), strict=True))
        # The output whose target and prediction this term sees as y_true / y_pred.
        own = (
            b.output
            if b.output is not None
            else (output_names[0] if len(output_names) == 1 else None)
        )
        if y is not None:
            if isinstance(y, Mapping):
                targets = dict(y)
            elif len(output_names) == 1:
                flat_y = keras.tree.flatten(y) if isinstance(y, list | tuple) else [y]
                targets = {output_names[0]: flat_y[0]}
            else:
                targets = dict(zip(output_names, keras.tree.flatten(y), strict=False))
            for name, value in targets.items():
                inputs.setdefault(name, value)
            if own is not None and own in targets:
                inputs["y_true"] = targets[own]
        if own is not None:
            outputs["y_pred"] = outputs[own]
        outputs.update(exposed)
        return inputs, outputs

    def _select(
        self, b: _BoundTerm, inputs: dict[str, Any], outputs: dict[str, Any], has_targets: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = b.term.spec
        chosen_in: dict[str, Any] = {}
        chosen_out: dict[str, Any] = {}
        for tensor in spec.tensors:
            target = b.term.bind.get(tensor.name, tensor.name)
            value = _lookup(target, tensor.source, inputs, outputs)
            if value is _MISSING:
                if tensor.optional:
                    continue
                raise MissingTensorError(
                    _missing_message(b, tensor, target, inputs, outputs, has_targets)
                )
            (chosen_in if tensor.source == Source.INPUTS else chosen_out)[tensor.name] = value
        return chosen_in, chosen_out

    def _evaluate_term(
        self,
        b: _BoundTerm,
        x: Any,
        y: Any,
        y_pred: Any,
        exposed: Mapping[str, Any],
        sample_weight: Any,
        *,
        training: bool,
    ) -> Any:
        inputs, outputs = self._namespaces(b, x, y, y_pred, exposed)
        term = b.term
        if term.keras_loss is not None:
            if "y_true" not in inputs or "y_pred" not in outputs:
                raise MissingTensorError(
                    f"Keras loss {term.name!r} (term {b.name!r}) needs targets and a prediction; "
                    "pass y to fit/evaluate, or attach it to one output with "
                    "compile(loss={output_name: ...})"
                )
            fn = (
                keras.losses.get(term.keras_loss)
                if isinstance(term.keras_loss, str)
                else term.keras_loss
            )
            y_true, pred = inputs["y_true"], outputs["y_pred"]
            values = (
                fn.call(y_true, pred) if isinstance(fn, keras.losses.Loss) else fn(y_true, pred)
            )
            return TermOutput(
                loss=ops.cast(values, "float32"), per_sample=len(values.shape) > 0, metrics={}
            )
        chosen_in, chosen_out = self._select(b, inputs, outputs, y is not None)
        optimizer = getattr(self, "optimizer", None)
        step = (
            optimizer.iterations
            if optimizer is not None and optimizer.built
            else ops.zeros((), "int64")
        )
        extras = Extras(
            config=term.config,
            epoch=self._lossplug_clock.value
            if self._lossplug_clock.value is not None
            else ops.zeros((), "int64"),
            step=step,
            training=bool(training),
            state=b.state,
            term=b.name,
            sample_weight=sample_weight,
            global_batch=term.global_batch,
        )
        return call_plugin(term.spec, b.caller, chosen_in, chosen_out, extras, term=b.name)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """Sum of the weighted plugin terms, Keras losses and layer losses (regularisers)."""
        bound: list[_BoundTerm] = self._lossplug.value["terms"]
        exposed = self._exposed_for(x, y_pred, training)
        batch = ops.cast(ops.shape(keras.tree.flatten(y_pred)[0])[0], "float32")
        total = []
        for b in bound:
            out = self._evaluate_term(b, x, y, y_pred, exposed, sample_weight, training=training)
            for metric_name, (value, _) in out.metrics.items():
                b.plugin_metrics[metric_name].update_state(
                    value,
                    sample_weight=batch
                    if isinstance(b.plugin_metrics[metric_name], keras.metrics.Mean)
                    else None,
                )
            if out.loss is None:
                continue
            if out.per_sample:
                value = reduce_per_sample(out.loss, sample_weight)
            else:
                value = out.loss
            weight = self._term_weight(b)
            contribution = value if isinstance(weight, float) and weight == 1.0 else value * weight
            b.metric.update_state(contribution, sample_weight=batch)
            total.append(scale_for_distribution(contribution))
        if self.losses:
            total.append(
                scale_for_distribution(ops.sum([ops.cast(v, "float32") for v in self.losses]))
            )
        if not total:
            if not bound:
                raise CompileError(
                    "LossModel has no loss to compute: pass loss=... (plugin names, "
                    "lossplug.use(...) or Keras losses) to compile()"
                )
            return ops.zeros((), "float32")
        return ops.sum(ops.stack(total)) if len(total) > 1 else total[0]

    def _term_weight(self, b: _BoundTerm) -> Any:
        """The term's weight now: a Python float for constants, else a float32 tensor."""
        schedule: Schedule = b.term.weight
        if isinstance(schedule, Constant):
            return schedule.value * b.loss_weight  # folded into the graph as a constant
        if b.weight_variable is not None:
            weight = ops.convert_to_tensor(b.weight_variable)
        elif schedule.unit == "step":
            optimizer = getattr(self, "optimizer", None)
            step = optimizer.iterations if optimizer is not None else 0
            weight = schedule(step)
        else:
            weight = schedule(self._lossplug_clock.value)
        return ops.cast(weight, "float32") * b.loss_weight

    @property
    def metrics(self) -> list[Any]:
        base = super().metrics
        extra: list[Any] = []
        for b in self._lossplug.value["terms"] if hasattr(self, "_lossplug") else []:
            if b.metric is not None and b.has_loss:
                extra.append(b.metric)
            extra.extend(b.plugin_metrics.values())
        return base + extra

    # ------------------------------------------------------------------ fit
    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' ``fit``, plus a callback that feeds the epoch to the terms (see the module)."""
        term_callback = _TermCallback(self)
        if len(args) > _FIT_CALLBACKS_POSITION:  # callbacks given positionally
            args = list(args)
            given = args[_FIT_CALLBACKS_POSITION]
            args[_FIT_CALLBACKS_POSITION] = [*(given or []), term_callback]
        else:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), term_callback]
        return super().fit(*args, **kwargs)

    # ------------------------------------------------------------------ multi-worker
    # Keras 3's TensorFlow trainer fails under a multi-worker collective strategy for
    # any model; see lossplug._multi_worker. These three overrides are inert otherwise.
    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self.distribute_strategy
        if iterator is not None and data_batch is None and in_multi_worker_mode(strategy):
            data_batch = first_local_batch(strategy, iterator)
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data: Any) -> Any:
        return self._logs_for_strategy(super().train_step(data))

    def test_step(self, data: Any) -> Any:
        return self._logs_for_strategy(super().test_step(data))

    def _logs_for_strategy(self, logs: Any) -> Any:
        if in_multi_worker_mode(self.distribute_strategy):
            return logs_for_replica_mean(logs)
        return logs

    # ------------------------------------------------------------------ save
    def get_compile_config(self) -> dict[str, Any] | None:
        config = super().get_compile_config()
        if not config:
            return config
        state = self._lossplug.value
        config = dict(config)
        config["loss"] = keras.saving.serialize_keras_object(_serializable_loss(state["loss"]))
        config["loss_weights"] = state["loss_weights"]
        config["check_finite"] = state.get("check_finite", True)
        config["targets"] = {
            name: [list(shape), dtype] for name, (shape, dtype) in state.get("targets", {}).items()
        } or None
        return config

    def compile_from_config(self, config: dict[str, Any]) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)


def _check_steps_per_execution(steps_per_execution: int, strategy: Any) -> None:
    """Refuse what Keras 3.15 cannot run, before it fails with a TensorFlow graph error.

    Keras' TensorFlow trainer runs ``steps_per_execution > 1`` steps in a
    ``tf.while_loop`` whose conditional branches cannot hold a cross-replica step
    (keras-team/keras#19246): with two or more replicas even a plain Keras model
    fails with "You must feed a value for placeholder tensor". tests/test_distribute.py
    keeps a canary that turns red when Keras is fixed.
    """
    replicas = strategy.num_replicas_in_sync
    if steps_per_execution > 1 and replicas > 1:
        raise CompileError(
            f"compile(steps_per_execution={steps_per_execution}) under "
            f"{type(strategy).__name__} with {replicas} replicas: Keras 3 cannot run several "
            "steps per execution across replicas (keras-team/keras#19246; a plain Keras "
            "model fails too). Use steps_per_execution=1 with a strategy, or train "
            "without the strategy."
        )


def _parse_targets(targets: Mapping[str, Any] | None, outputs: list[str]) -> dict[str, Any]:
    """``{name: shape}`` or ``{name: (shape, dtype)}`` -> ``{name: (shape tuple, dtype)}``."""
    parsed: dict[str, Any] = {}
    for name, value in (targets or {}).items():
        if name in outputs or name in {"y_true", "y_pred"}:
            raise CompileError(
                f"compile(targets=...): {name!r} is an output (or reserved) name; declare only "
                "targets that are not model outputs"
            )
        dtype = "float32"
        if (
            isinstance(value, list | tuple)
            and len(value) == 2
            and isinstance(value[1], str)
            and isinstance(value[0], list | tuple)
        ):
            value, dtype = value
        try:
            shape = tuple(int(d) for d in value)
        except (TypeError, ValueError):
            raise CompileError(
                f"compile(targets=...): the shape of {name!r} must be a tuple of ints without "
                f"the batch axis (e.g. (32, 32, 1)), got {value!r}"
            ) from None
        parsed[name] = (shape, dtype)
    return parsed


def _serializable_loss(loss: Any) -> Any:
    if isinstance(loss, Mapping):
        return {k: _serializable_loss(v) for k, v in loss.items()}
    if isinstance(loss, list | tuple):
        return [_serializable_loss(v) for v in loss]
    if isinstance(loss, str) and loss.split(":")[-1] in registry.names():
        return Term(loss)
    return loss


class _Missing:
    pass


_MISSING = _Missing()


def _lookup(target: str, source: Source, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
    if target.startswith("inputs."):
        return inputs.get(target[len("inputs.") :], _MISSING)
    if target.startswith("outputs."):
        return outputs.get(target[len("outputs.") :], _MISSING)
    first, second = (inputs, outputs) if source == Source.INPUTS else (outputs, inputs)
    if target in first:
        return first[target]
    return second.get(target, _MISSING)


def _missing_message(
    b: _BoundTerm,
    tensor: Any,
    target: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    has_targets: bool,
) -> str:
    spec = b.term.spec
    bound = f" (bound to {target!r})" if target != tensor.name else ""
    hint = ""
    if target == "y_true" and not has_targets:
        hint = (
            " fit/evaluate received no targets: pass y, or bind 'y_true' to another tensor "
            "(e.g. bind={'y_true': 'inputs.x'})."
        )
    elif target == "y_pred":
        hint = (
            " This model has several outputs: attach the term to one of them with "
            "compile(loss={output_name: ...}) or bind 'y_pred'."
        )
    elif tensor.source == Source.INPUTS:
        hint = (
            f" If {target!r} is a target you pass in fit's y dict, declare it with "
            f"compile(..., targets={{{target!r}: shape}}); or bind it to one of the available "
            f"tensors: lossplug.use({spec.name!r}, bind={{{tensor.name!r}: 'name'}})."
        )
    else:
        hint = (
            f" Bind it to one of the available tensors, e.g. lossplug.use({spec.name!r}, "
            f"bind={{{tensor.name!r}: 'name'}}), or expose the layer with "
            "LossModel(..., expose=['layer_name'])."
        )
    return (
        f"loss plugin {spec.name!r} (term {b.name!r}) needs tensor {tensor.name!r}{bound} "
        f"({tensor.kind.value}, from {tensor.source.value}), which is not available. "
        f"Available inputs: {', '.join(sorted(inputs)) or '(none)'}; available outputs: "
        f"{', '.join(sorted(outputs)) or '(none)'}.{hint}"
    )


class _TermCallback(keras.callbacks.Callback):
    """Feeds the epoch to the terms and checks the first batch for non-finite terms."""

    def __init__(self, model: LossModel) -> None:
        super().__init__()
        self._owner = model
        self._checked = False

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        owner = self._owner
        owner._lossplug_clock.value.assign(epoch)
        for b in owner._lossplug.value["terms"]:
            if b.weight_variable is not None:
                b.weight_variable.assign(b.term.weight.value_at(epoch))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self._checked or not self._owner._lossplug.value.get("check_finite", True):
            return
        self._checked = True
        logs = logs or {}
        for b in self._owner._lossplug.value["terms"]:
            if b.name not in logs:
                continue
            value = float(np.asarray(logs[b.name]))
            if not math.isfinite(value):
                who = (
                    f"loss plugin {b.term.spec.name!r}"
                    if b.term.spec is not None
                    else f"Keras loss {b.term.name!r}"
                )
                self._owner.stop_training = True
                raise NonFiniteLossError(
                    f"{who} (term {b.name!r}) produced a non-finite loss ({value}) at the first "
                    "training step. Check the inputs it reads (e.g. from_logits, label range) "
                    "and its config; run `lossplug check "
                    f"{b.term.spec.name if b.term.spec is not None else ''}` to test the plugin."
                )


__all__ = ["LossModel", "LossplugError"]

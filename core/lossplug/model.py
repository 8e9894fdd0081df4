"""``LossModel``: a functional Keras model that trains on plugin-produced loss terms.

Design (see docs/concepts.md):

* ``LossModel(inputs, outputs, expose=[...])`` is a Keras functional model. An
  internal functional graph with the same layers also returns the exposed
  intermediate tensors; ``call`` runs it once, hands the exposed tensors to the
  loss computation of the same step and returns only ``outputs``, so
  ``predict`` and serving see the model the user built.
* ``compile(loss=..., metrics=...)`` turns every plugin entry into a term, calls
  every plugin once eagerly on a tiny dummy batch (the *probe*) to create its
  state variables and metrics before training, and hands Keras the remaining
  arguments (optimizer, Keras metrics, ...).
* ``compute_loss`` (Keras' public override point) evaluates each term, reduces
  it (sample weights, float32, data-parallel scaling), weights it by its
  schedule and updates one metric per term.
* Everything the terms keep across steps (the epoch clock, plugin state) lives
  in a :class:`lossplug.state.TermStates` layer of the model, saved and restored
  by name with the model's weights.
* The backend's trainer (:mod:`lossplug.backend`) applies a step only when its
  loss and gradients are finite (:mod:`lossplug.guard`).
"""

from __future__ import annotations

import contextlib
import functools
import operator
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import keras
from keras import ops

from . import backend as _backend
from . import binding, runtime
from .binding import BoundTerm, input_names, output_names
from .errors import (
    CompileError,
    FitError,
    LossplugError,
    MissingTensorError,
    PluginResultError,
    UnknownTermError,
)
from .extras import Extras, _Hidden
from .guard import StepGuard, StepRecord, TrainingCallback, UnguardedTrainingCallback, step_ok
from .registry import registry
from .schedules import Constant, Schedule
from .specs import Kind, Source
from .state import TermStates
from .terms import (
    TermOutput,
    call_plugin,
    name_the_term,
    reduce_per_sample,
    scale_for_distribution,
)

#: Batch size of the dummy batch each plugin is called on at compile time (the probe).
PROBE_BATCH = 2

#: Index of ``callbacks`` among ``keras.Model.fit``'s positional parameters
#: (x, y, batch_size, epochs, verbose, callbacks, ...) and ``evaluate``'s
#: (x, y, batch_size, verbose, sample_weight, steps, callbacks, ...).
_FIT_CALLBACKS_POSITION = 5
_EVALUATE_CALLBACKS_POSITION = 6
#: Index of ``class_weight`` among ``fit``'s positional parameters.
_FIT_CLASS_WEIGHT_POSITION = 10

_Trainer = _backend.current().Trainer


@keras.saving.register_keras_serializable(package="lossplug")
class LossModel(_Trainer, keras.Model):
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
            {"expose": {}, "graph": None, "terms": [], "config": {}, "check_finite": True}
        )
        self._lossplug_local = _Hidden(threading.local())
        #: the epoch clock and every term's state (saved by name; see lossplug.state)
        self._lossplug_state = TermStates()
        self._lossplug_guard = StepGuard()
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
        reserved = set(output_names(self)) | {"y_pred"}
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

    # ------------------------------------------------------------------ state
    @property
    def epoch(self) -> int:
        """The epoch the terms see (``extras.epoch``, schedules of the epoch); saved."""
        return int(ops.convert_to_numpy(self._lossplug_state.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Move the epoch clock: what ``fit`` does at the start of every epoch.

        Custom training loops call it at the start of each epoch. It sets the
        epoch that schedules and plugins read (no retracing: the clock is a
        variable of the model) and evaluates weights given as Python callables.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise FitError(f"set_epoch needs an epoch number >= 0, got {epoch!r}")
        self._lossplug_state.epoch.assign(epoch)
        for b in self._lossplug_terms_bound():
            if b.weight_variable is not None:
                b.weight_variable.assign(b.term.weight_at(epoch))

    def term_state(self, term: str) -> Mapping[str, Any]:
        """The state variables of the term ``term`` by name (read-only mapping).

        For example ``model.term_state("center")["centers"]`` (the class centres)
        or ``model.term_state("margin_softmax")["class_weights"]``. The values are
        the model's variables: ``keras.ops.convert_to_numpy(v)`` reads one.
        """
        names = [b.name for b in self._lossplug_terms_bound()]
        if term not in names:
            raise UnknownTermError(
                f"this model has no term {term!r}; its terms are: {', '.join(names) or '(none)'}"
                + ("" if names else " (compile the model first)")
            )
        return MappingProxyType(dict(self._lossplug_state.term_state(term)))

    def _lossplug_terms_bound(self) -> list[BoundTerm]:
        return self._lossplug.value["terms"] if hasattr(self, "_lossplug") else []

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
        the terms of each output.

        ``metrics`` takes Keras metrics and, in the same list, plugin names or
        ``lossplug.use(...)``: a metric plugin is shown under its name; a loss
        plugin there is evaluated and shown but not trained on.

        With ``check_finite`` (the default) a training step whose loss or
        gradients are not finite is never applied, and ``fit`` stops with a
        :class:`lossplug.NonFiniteLossError` naming the term, the epoch and the
        batch.

        ``targets`` declares targets that are not model outputs (``fit(x, {"logits":
        labels, "mask": masks})``) as ``{name: shape}`` or ``{name: (shape, dtype)}``
        without the batch axis, so plugins can be bound to them
        (``bind={"y_true": "mask"}``) and checked at compile time.
        """
        _backend.current().check_compile(self, steps_per_execution)
        outputs = output_names(self)
        extra_targets = binding.parse_targets(targets, outputs)
        keras_metrics, plugin_metrics = binding.split_metrics(metrics)
        keras_weighted, plugin_weighted = binding.split_metrics(weighted_metrics)
        if plugin_weighted:
            raise CompileError(
                "compile(weighted_metrics=...): loss plugins take sample weights themselves; "
                "put plugin names and lossplug.use(...) in metrics=[...]"
            )
        bound = binding.bind_terms(loss, loss_weights, plugin_metrics, self)
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=keras_metrics,
            weighted_metrics=keras_weighted,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        state = self._lossplug.value
        state["targets"] = extra_targets
        old = {b.name: b.state for b in state["terms"] if b.state is not None}
        for b in bound:
            self._build_term(b, old.get(b.name))
        if bound and not any(b.trained for b in bound):
            names = ", ".join(b.name for b in bound)
            raise CompileError(
                f"compile() has no trainable loss term: {names} only monitor (metric plugins, "
                "or loss plugins given in metrics=). Pass at least one loss in loss=[...] "
                "(a plugin name, lossplug.use(...) or a Keras loss)."
            )
        terms = self._lossplug_state
        terms.keep([b.state for b in bound])
        terms.check_pending([b.name for b in bound])
        _backend.current().track_new_variables(self)
        state["terms"] = bound
        state["check_finite"] = bool(check_finite)
        state["config"] = {
            "loss": loss,
            "loss_weights": loss_weights,
            "metrics": metrics,
            "weighted_metrics": weighted_metrics,
            "check_finite": bool(check_finite),
            "targets": targets,
        }

    def _build_term(self, b: BoundTerm, old_store: Any) -> None:
        term = b.term
        plugin = term.spec.name if term.spec is not None else ""
        b.state = self._lossplug_state.store_for(b.name, plugin, old_store, frozen=b.monitor)
        if not term.weight.in_graph:
            b.weight_variable = b.state.weight_variable()
            b.weight_variable.assign(term.weight_at(self.epoch))
        b.metric = keras.metrics.Mean(name=b.name)
        b.plugin_metrics = {}
        if term.plugin is None:
            b.state.close()
            return  # a Keras loss: no state, no metrics of its own
        b.caller = registry.hook_caller(term.plugin)
        binding.check_activations(b, self._symbolic_tensors(b))
        # The probe: one eager call on a dummy batch creates state and reveals metric names.
        probe = self._probe_term(b)
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

    def _symbolic_tensors(self, b: BoundTerm) -> dict[str, Any]:
        outputs = dict(zip(output_names(self), keras.tree.flatten(self.output), strict=True))
        outputs.update(self._lossplug.value["expose"])
        return outputs

    def _probe_term(self, b: BoundTerm) -> TermOutput:
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

    def _dummy_targets(self, b: BoundTerm, y_pred: Any, sparse: bool = False) -> Any:
        spec = b.term.spec
        wanted = [
            t
            for t in spec.tensors
            if t.source == Source.INPUTS and b.term.bind.get(t.name, t.name) == "y_true"
        ]
        preds = dict(zip(output_names(self), keras.tree.flatten(y_pred), strict=True))

        def target_like(pred: Any, kind: Kind | None) -> Any:
            if kind in (Kind.SPARSE_LABELS, Kind.LABELS):
                return ops.zeros((PROBE_BATCH,), dtype="int32")
            return ops.zeros(pred.shape, dtype="float32")

        kind = Kind.SPARSE_LABELS if sparse else (wanted[0].kind if wanted else None)
        dummies = {
            name: target_like(p, kind if name == b.output else None) for name, p in preds.items()
        }
        for name, (shape, dtype) in self._lossplug.value.get("targets", {}).items():
            dummies[name] = ops.zeros((PROBE_BATCH, *shape), dtype=dtype)
        return dummies

    # ------------------------------------------------------------------ loss
    def _evaluate_term(
        self,
        b: BoundTerm,
        x: Any,
        y: Any,
        y_pred: Any,
        exposed: Mapping[str, Any],
        sample_weight: Any,
        *,
        training: bool,
    ) -> TermOutput:
        outputs_of = output_names(self)
        inputs, outputs = binding.namespaces(
            b, x, y, y_pred, exposed, input_names(self), outputs_of
        )
        term = b.term
        if term.keras_loss is not None:
            return self._evaluate_keras_loss(b, inputs, outputs, several=len(outputs_of) > 1)
        chosen_in, chosen_out = binding.select(
            b, inputs, outputs, has_targets=y is not None, several_outputs=len(outputs_of) > 1
        )
        optimizer = getattr(self, "optimizer", None)
        extras = Extras(
            config=term.config,
            epoch=self._lossplug_state.epoch,
            step=optimizer.iterations if optimizer is not None else ops.zeros((), "int32"),
            training=bool(training),
            state=b.state,
            term=b.name,
            sample_weight=sample_weight,
            global_batch=term.global_batch,
        )

        def run(ins: dict[str, Any], outs: dict[str, Any]) -> TermOutput:
            return call_plugin(term.spec, b.caller, ins, outs, extras, term=b.name)

        traced = any(_backend.current().is_traced(v) for v in chosen_out.values())
        if term.spec.batch_coupled and not term.global_batch and traced:
            # each replica (device) mines its own share, on every backend (not the probe)
            return _backend.current().per_replica(
                run, chosen_in, chosen_out, scalar=term.spec.returns == "scalar"
            )
        return run(chosen_in, chosen_out)

    def _evaluate_keras_loss(
        self, b: BoundTerm, inputs: dict[str, Any], outputs: dict[str, Any], several: bool
    ) -> TermOutput:
        term = b.term
        if "y_true" not in inputs or "y_pred" not in outputs:
            hint = (
                "attach it to one output with compile(loss={output_name: ...})"
                if several and b.output is None
                else "pass y to fit/evaluate"
            )
            raise MissingTensorError(f"{b.who} needs targets and a prediction; {hint}")
        fn = term.keras_loss
        if isinstance(fn, str):
            fn = keras.losses.get(fn)
        y_true, pred = inputs["y_true"], _backend.current().keras_loss_prediction(outputs["y_pred"])
        try:
            with runtime.term_scope(b.name, None):
                values = (
                    fn.call(y_true, pred) if isinstance(fn, keras.losses.Loss) else fn(y_true, pred)
                )
        except LossplugError:
            raise
        except Exception as exc:
            name_the_term(
                exc,
                f"{b.who}, with y_true of shape {tuple(y_true.shape)} and y_pred of shape "
                f"{tuple(pred.shape)}",
            )
            raise
        return TermOutput(
            loss=ops.cast(values, "float32"), per_sample=len(values.shape) > 0, metrics={}
        )

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """Sum of the weighted plugin terms, Keras losses and layer losses (regularisers).

        Also updates one metric per term (``get_metrics_result()`` holds them). In a
        custom training loop, call it with ``training=True`` inside the gradient
        tape (or ``stateless_compute_loss`` on JAX) and move the epoch with
        :meth:`set_epoch`; plugin state updates are applied here (where the loss is
        finite), since no ``train_step`` applies them.
        """
        bound = self._lossplug_terms_bound()
        if not bound:
            if self.losses:
                return scale_for_distribution(
                    ops.sum([ops.cast(v, "float32") for v in self.losses])
                )
            raise CompileError(
                "LossModel has no loss to compute: pass loss=... (plugin names, "
                "lossplug.use(...) or Keras losses) to compile()"
            )
        exposed = self._exposed_for(x, y_pred, training)
        batch = ops.cast(ops.shape(keras.tree.flatten(y_pred)[0])[0], "float32")
        total = []
        updates: list[tuple[Any, Any]] = []
        for b in bound:
            out = self._evaluate_term(b, x, y, y_pred, exposed, sample_weight, training=training)
            for metric_name, (value, _) in out.metrics.items():
                metric = b.plugin_metrics[metric_name]
                if out.invalid is not None:
                    value = ops.where(out.invalid, float("nan"), value)
                metric.update_state(
                    value, sample_weight=batch if isinstance(metric, keras.metrics.Mean) else None
                )
            if training and not b.monitor:
                updates.extend(out.updates)
            for bad, identifier, a, b_value in out.unreported:
                self._lossplug_guard.record(bad, identifier, a, b_value)
            if out.loss is None:
                continue
            value = reduce_per_sample(out.loss, sample_weight) if out.per_sample else out.loss
            weight = self._term_weight(b)
            contribution = value if isinstance(weight, float) and weight == 1.0 else value * weight
            if out.invalid is not None:  # bad input found by a check: never train on it
                contribution = ops.where(out.invalid, float("nan"), contribution)
            b.metric.update_state(contribution, sample_weight=batch)
            if not b.monitor:
                total.append(scale_for_distribution(contribution))
        if self.losses:
            total.append(
                scale_for_distribution(ops.sum([ops.cast(v, "float32") for v in self.losses]))
            )
        loss = functools.reduce(operator.add, total)  # n - 1 ops (eagerly, each op counts)
        record = StepRecord(loss=loss, updates=updates)
        local = self._lossplug_local.value
        local.record = record  # for the backend's train_step
        if training and record.updates and not getattr(local, "defer_updates", False):
            # A custom loop (or JAX's stateless step): apply the updates now, where the
            # loss is finite; the trainer of the backend guards the rest.
            record.apply_updates(record.finite)
        if not getattr(local, "in_step", False):  # a custom loop: log the loss like fit does
            self._loss_tracker.update_state(
                _unscaled_for_logs(loss),
                sample_weight=ops.shape(keras.tree.flatten(y_pred)[0])[0],
            )
        if not _backend.current().is_traced(loss):
            runtime.raise_reported()
        return loss

    def _term_weight(self, b: BoundTerm) -> Any:
        """The term's weight now: a Python float for constants, else a float32 tensor."""
        schedule: Schedule = b.term.weight
        if isinstance(schedule, Constant):
            return schedule.value * b.loss_weight  # folded into the graph as a constant
        if b.weight_variable is not None:
            weight = ops.convert_to_tensor(b.weight_variable)
        elif schedule.unit == "step":
            optimizer = getattr(self, "optimizer", None)
            weight = schedule(optimizer.iterations if optimizer is not None else 0)
        else:
            weight = schedule(self._lossplug_state.epoch)
        return ops.cast(weight, "float32") * b.loss_weight

    # ------------------------------------------------------------------ the guarded step
    @contextlib.contextmanager
    def _lossplug_in_step(self, *, defer_updates: bool) -> Iterator[None]:
        """Within a train/test step of the backend's trainer (not a custom loop).

        ``defer_updates``: the trainer applies the plugins' state updates itself
        (after the optimizer, if the step is applied); otherwise ``compute_loss``
        assigns them (JAX: into the stateless scope; evaluation: never).
        """
        local = self._lossplug_local.value
        local.in_step, local.defer_updates = True, defer_updates
        try:
            yield
        finally:
            local.in_step = local.defer_updates = False

    def _lossplug_take_record(self) -> StepRecord:
        """The record the last compute_loss of this train step left (see the trainers)."""
        local = self._lossplug_local.value
        record = getattr(local, "record", None)
        local.record = None
        if record is None:  # compute_loss overridden without calling ours
            record = StepRecord(finite=ops.convert_to_tensor(True))
        return record

    def _lossplug_step_ok(
        self, record: StepRecord, gradients: Any, check: Callable[..., Any] = step_ok
    ) -> Any:
        """Scalar bool: this step may be applied (see :mod:`lossplug.guard`).

        ``check``: :func:`lossplug.guard.step_ok` or a compiled copy of it (the backend's).
        """
        if not self._lossplug.value["check_finite"]:
            return ops.convert_to_tensor(True)
        guard = self._lossplug_guard
        guard.count()
        if gradients is None or isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            gradients = []  # none, or the LossScaleOptimizer skips non-finite ones itself
        return check(record.finite, list(gradients), guard.failed.value)

    @property
    def metrics(self) -> list[Any]:
        base = super().metrics
        extra: list[Any] = []
        if hasattr(self, "_lossplug_guard"):
            extra.append(self._lossplug_guard)
        for b in self._lossplug_terms_bound():
            if b.metric is not None and b.has_loss:
                extra.append(b.metric)
            extra.extend(b.plugin_metrics.values())
        # Keras already lists the metrics set as attributes (the step guard): each once, so
        # that a JAX step carries each metric variable once in its state
        listed = {id(metric) for metric in base}
        return base + [metric for metric in extra if id(metric) not in listed]

    # ------------------------------------------------------------------ fit / evaluate
    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' ``fit``, plus a callback that moves the epoch clock and stops on failures.

        With ``check_finite`` (compile's default) a step whose loss or gradients
        are not finite is not applied and ``fit`` raises
        :class:`lossplug.NonFiniteLossError` naming the term, epoch and batch.
        """
        class_weight = (
            args[_FIT_CLASS_WEIGHT_POSITION]
            if len(args) > _FIT_CLASS_WEIGHT_POSITION
            else kwargs.get("class_weight")
        )
        y = args[1] if len(args) > 1 else kwargs.get("y")
        x = args[0] if args else kwargs.get("x")
        if class_weight is not None and y is None and _is_array_like(x):
            raise FitError(
                "fit(class_weight=...) weighs samples by their class, which needs targets: "
                "this fit got x without y. Pass y, or drop class_weight (for a loss without "
                "targets, weigh samples with sample_weight=... instead)."
            )
        callback = self._lossplug_callback()
        args, kwargs = _with_callback(args, kwargs, _FIT_CALLBACKS_POSITION, callback)
        try:
            return super().fit(*args, **kwargs)
        except LossplugError as error:
            callback.note(error)
            raise

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """Keras' ``evaluate``; errors found in the data by the plugins are raised clearly."""
        callbacks = (
            args[_EVALUATE_CALLBACKS_POSITION]
            if len(args) > _EVALUATE_CALLBACKS_POSITION
            else kwargs.get("callbacks")
        )
        if isinstance(callbacks, keras.callbacks.CallbackList):  # fit's validation
            return super().evaluate(*args, **kwargs)
        callback = self._lossplug_callback()
        args, kwargs = _with_callback(args, kwargs, _EVALUATE_CALLBACKS_POSITION, callback)
        try:
            return super().evaluate(*args, **kwargs)
        except LossplugError as error:
            callback.note(error)
            raise

    def _lossplug_callback(self) -> TrainingCallback:
        if self._lossplug.value["check_finite"]:
            return TrainingCallback(self)
        return UnguardedTrainingCallback(self)

    # ------------------------------------------------------------------ save
    def get_compile_config(self) -> dict[str, Any] | None:
        config = super().get_compile_config()
        if not config:
            return config
        mine = self._lossplug.value["config"]
        config = dict(config)
        config["loss"] = keras.saving.serialize_keras_object(binding.serializable(mine["loss"]))
        config["loss_weights"] = mine["loss_weights"]
        config["metrics"] = keras.saving.serialize_keras_object(
            binding.serializable(mine["metrics"])
        )
        config["check_finite"] = mine["check_finite"]
        config["targets"] = {
            name: [list(shape), dtype]
            for name, (shape, dtype) in self._lossplug.value.get("targets", {}).items()
        } or None
        return _backend.portable_config(config)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Files saved before the optimizer was written portably still load on every backend.
        config = keras.saving.deserialize_keras_object(_backend.portable_config(config))
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)


def _unscaled_for_logs(loss: Any) -> Any:
    """The loss as Keras logs it: not divided by the number of replicas."""
    replicas = _backend.current().num_replicas()
    return loss * float(replicas) if replicas > 1 else loss


def _is_array_like(x: Any) -> bool:
    """Arrays (or structures of them) rather than a dataset or generator yielding (x, y)."""
    flat = keras.tree.flatten(x) if x is not None else []
    return bool(flat) and all(hasattr(v, "shape") and hasattr(v, "dtype") for v in flat)


def _with_callback(args: Any, kwargs: dict[str, Any], position: int, callback: Any) -> Any:
    """Add ``callback`` first to the callbacks given by keyword or position."""
    if len(args) > position:
        args = list(args)
        args[position] = [callback, *(args[position] or [])]
    else:
        kwargs = dict(kwargs)
        kwargs["callbacks"] = [callback, *(kwargs.get("callbacks") or [])]
    return args, kwargs


__all__ = ["LossModel"]

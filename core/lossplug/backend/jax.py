"""JAX: the stateless training step with the finite guard, host checks inside ``jax.jit``.

On JAX, Keras runs every step as a pure function of the model's state (trainable,
non-trainable, optimizer and metrics variables), compiled with ``jax.jit`` and
sharded by ``keras.distribution``. lossplug's step does the same, with three
differences from Keras' own ``JAXTrainer.train_step``:

* the optimizer's step counter is part of the state the loss sees, so
  ``extras.step`` and schedules of the step are live values, not the constant
  they would be if read from the (purged) variable inside the trace;
* the optimizer's update runs only if the loss and gradients are finite
  (``jax.lax.cond``), and the layers' and plugins' new state is selected
  element-wise: a step that fails the check returns the state it got (no weight,
  optimizer, plugin or layer statistic changes);
* plugin state updates (``extras.state.update``) are assigned in Keras'
  ``StatelessScope`` and leave the step as new non-trainable values.

Under ``keras.distribution.DataParallel`` the step is one SPMD program over the
global batch, so every term sees the global batch: ``all_gather`` is the
identity and the loss is the single-device loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import keras
from keras import ops

from ..guard import StepRecord, step_ok

NAME = "jax"


# ---------------------------------------------------------------------- replicas
def num_replicas() -> int:
    """One program over the global batch (also under ``keras.distribution``)."""
    return 1


def all_gather(value: Any, axis: int = 0) -> Any:
    """The identity: a JAX step already computes on the global (sharded) batch."""
    return value


def all_replicas_true(flag: Any) -> Any:
    return flag


def _data_parallel_mesh() -> Any:
    """(mesh, batch axis name) of a multi-device ``keras.distribution`` data layout, or None."""
    distribution = keras.distribution.distribution()
    if distribution is None or not isinstance(distribution, keras.distribution.DataParallel):
        return None
    mesh = distribution.device_mesh.backend_mesh
    axis = distribution.batch_dim_name
    if mesh.shape[axis] < 2:
        return None
    return mesh, axis


def per_replica(
    call: Callable[[dict, dict], Any], inputs: dict, outputs: dict, *, scalar: bool
) -> Any:
    """A batch-coupled term over each device's share of the batch (``global_batch=False``).

    Under ``keras.distribution.DataParallel`` the step is one program over the global batch.
    To give ``global_batch=False`` the meaning it has under ``tf.distribute`` (each replica
    mines its own share), the term runs under ``jax.shard_map``: each device calls the plugin
    on its rows of the batch-shaped tensors; per-device scalars (the loss of a scalar term,
    every metric) are averaged over the devices, per-sample losses concatenated.
    ``call(inputs, outputs)`` returns the term's :class:`~lossplug.terms.TermOutput`.
    Without such a distribution it is simply called.
    """
    layout = _data_parallel_mesh()
    if layout is None:
        return call(inputs, outputs)
    from jax.sharding import PartitionSpec

    from ..errors import PluginResultError
    from ..terms import TermOutput

    mesh, axis = layout
    sizes = [v.shape[0] for v in [*inputs.values(), *outputs.values()] if len(v.shape) > 0]
    batch = max(set(sizes), key=sizes.count) if sizes else None

    def spec(value: Any) -> Any:
        if len(value.shape) > 0 and value.shape[0] == batch:
            return PartitionSpec(axis)
        return PartitionSpec()

    inner: list[TermOutput] = []

    def local(ins: dict, outs: dict) -> Any:
        out = call(ins, outs)
        if out.updates:
            raise PluginResultError(
                "a term that updates its state cannot mine each device's share under "
                "keras.distribution: use lossplug.use(..., global_batch=True)"
            )
        inner.append(out)
        loss = out.loss
        if loss is not None and not out.per_sample:
            loss = loss[None]
        flag = out.invalid if out.invalid is not None else ops.convert_to_tensor(False)
        metrics = {name: value[None] for name, (value, _) in out.metrics.items()}
        return loss, metrics, flag[None]

    in_specs = ({k: spec(v) for k, v in inputs.items()}, {k: spec(v) for k, v in outputs.items()})
    loss, metrics, flags = jax.shard_map(
        local, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(axis), check_vma=False
    )(inputs, outputs)
    first = inner[0]
    if loss is not None and not first.per_sample:
        loss = ops.mean(loss)
    return TermOutput(
        loss=loss,
        per_sample=first.per_sample,
        metrics={
            name: (ops.mean(metrics[name]), aggregation)
            for name, (_, aggregation) in first.metrics.items()
        },
        invalid=ops.any(flags) if first.invalid is not None else None,
    )


# ---------------------------------------------------------------------- tracing
def init_scope() -> Any:
    return contextlib.nullcontext()


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def host_callbacks_available() -> bool:
    return True


def host_check(value: Any, bad: Any, on_host: Callable[..., None], *args: Any) -> Any:
    """``value``; ``on_host(*numpy args)`` runs on the host (``jax.debug.callback``) if ``bad``."""
    jax.lax.cond(bad, lambda: jax.debug.callback(on_host, *args), lambda: None)
    return value


def track_new_variables(model: Any) -> None:
    """Nothing to do: variables created after build are found through the layers."""


def sync_training_state(model: Any) -> None:
    """Write the state ``fit`` keeps outside the variables back to them."""
    model.jax_state_sync()


def training_value(model: Any, variable: Any) -> Any:
    """The value of one of ``model``'s metrics variables in the state ``fit`` is running.

    Keras' JAX ``fit`` carries the state from step to step outside the variables (in
    ``model._jax_state`` after each step) and writes it back only at the end of the epoch
    or when a callback calls ``jax_state_sync``; a sync also makes the next step gather
    and purge every variable again. Reading one scalar this way (the finite guard's flag,
    polled during the epoch) waits for the last dispatched step but writes nothing back.
    Outside such a step, or once synced, it is the variable's own value.
    """
    state = getattr(model, "_jax_state", None)
    if state and not getattr(model, "_jax_state_synced", True):
        values = state.get("metrics_variables")
        if values:
            for held, value in zip(model.metrics_variables, values, strict=True):
                if held is variable:
                    return value
    return variable.value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    yield


def check_compile(model: Any, steps_per_execution: int) -> None:
    """Nothing to refuse on JAX."""


def gradient_values(gradient: Any) -> Any:
    return gradient


def keras_loss_prediction(y_pred: Any) -> Any:
    """``y_pred`` as a Keras loss receives it: unchanged here (see ``torch.py``)."""
    return y_pred


# ---------------------------------------------------------------------- training
def _apply_if(
    ok: Any, optimizer: Any, optimizer_variables: Any, grads: Any, trainable: Any
) -> tuple[Any, Any]:
    """(trainable, optimizer variables) after the optimizer's update if ``ok``, else unchanged.

    The update runs inside ``jax.lax.cond`` on the state it receives as operands, so a
    skipped step computes nothing and an applied one updates the (donated) buffers in
    place. Without ``jax.jit`` (``jit_compile=False``) ``ok`` is a value and the branch is
    Python's: an eager ``lax.cond`` would compile both branches at every step. Computing the
    update first and then selecting it element-wise (``jnp.where``
    per variable) costs as much again as the update itself on XLA's CPU backend, and a
    ``cond`` choosing between two already computed states copies the whole state
    (``benchmarks/bench_train_step.py``, docs/decisions.md).
    """

    def apply(operands: Any) -> Any:
        optimizer_variables, grads, trainable = operands
        return optimizer.stateless_apply(optimizer_variables, grads, trainable)

    def keep(operands: Any) -> Any:
        optimizer_variables, _, trainable = operands
        return list(trainable), list(optimizer_variables)

    operands = (optimizer_variables, grads, trainable)
    if not is_traced(ok):  # jit_compile=False: op by op, and ``ok`` is a value
        return apply(operands) if bool(ok) else keep(operands)
    return jax.lax.cond(ok, apply, keep, operands)


def _select(ok: Any, new: Any, old: Any) -> Any:
    """``new`` where ``ok``, else ``old``, leaf by leaf (the layers' and plugins' state)."""
    if isinstance(ok, bool):
        return new if ok else old
    return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


#: The guard's check compiled as one call for steps run op by op (``jit_compile=False``),
#: where each of its dozen small ops would be dispatched (and differentiated) on its own.
_compiled_step_ok = jax.jit(step_ok)


class Trainer:
    """Keras' JAX ``train_step``/``test_step`` with lossplug's guard (see the module)."""

    def _lossplug_loss(
        self,
        trainable_variables: Any,
        non_trainable_variables: Any,
        metrics_variables: Any,
        optimizer_variables: Any,
        x: Any,
        y: Any,
        sample_weight: Any,
        training: bool,
    ) -> Any:
        """The loss (scaled for the optimizer) and (unscaled loss, y_pred, new state, finite)."""
        kwargs = {"training": training} if self._call_has_training_arg else {}
        y_pred, non_trainable_variables, losses = self.stateless_call(
            trainable_variables, non_trainable_variables, x, return_losses=True, **kwargs
        )
        if losses:
            self._losses_override.clear()
            self._losses_override = losses
        mapping = list(zip(self.trainable_variables, trainable_variables, strict=True))
        mapping += zip(self.non_trainable_variables, non_trainable_variables, strict=True)
        mapping += zip(self.metrics_variables, metrics_variables, strict=True)
        optimizer = self.optimizer
        if optimizer is not None and optimizer_variables is not None:
            mapping += zip(optimizer.variables, optimizer_variables, strict=True)
        with (
            keras.StatelessScope(state_mapping=mapping) as scope,
            self._lossplug_in_step(defer_updates=False),
        ):
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
            record = self._lossplug_take_record()
            unscaled = loss
            if training and optimizer is not None:
                loss = optimizer.scale_loss(loss)
        if losses:
            self._losses_override.clear()
        non_trainable_variables = [
            _current(scope, v, old)
            for v, old in zip(self.non_trainable_variables, non_trainable_variables, strict=True)
        ]
        metrics_variables = [
            _current(scope, v, old)
            for v, old in zip(self.metrics_variables, metrics_variables, strict=True)
        ]
        # the finite check runs only where the guard reads it
        finite = record.finite if training and self._lossplug.value["check_finite"] else None
        aux = (unscaled, y_pred, non_trainable_variables, metrics_variables, finite)
        return loss, aux

    def train_step(self, state: Any, data: Any) -> Any:
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self._lossplug_loss, has_aux=True)
        (_, aux), grads = grad_fn(
            trainable,
            non_trainable,
            metrics_variables,
            optimizer_variables,
            x,
            y,
            sample_weight,
            True,
        )
        unscaled, y_pred, new_non_trainable, metrics_variables, finite = aux
        if self._lossplug.value["check_finite"]:
            guard = self._lossplug_guard
            mapping = list(zip(self.metrics_variables, metrics_variables, strict=True))
            record = StepRecord(finite=finite)
            with keras.StatelessScope(state_mapping=mapping) as scope:
                if is_traced(finite):
                    ok = self._lossplug_step_ok(record, grads)
                    guard.fail(when=ops.logical_not(ok))
                else:  # jit_compile=False: the check is one call, and ok a Python bool
                    ok = bool(self._lossplug_step_ok(record, grads, _compiled_step_ok))
                    if not ok:
                        guard.fail()
            metrics_variables = [
                _current(scope, v, old)
                for v, old in zip(self.metrics_variables, metrics_variables, strict=True)
            ]
            new_trainable, new_optimizer = _apply_if(
                ok, self.optimizer, optimizer_variables, grads, trainable
            )
            new_non_trainable = _select(ok, new_non_trainable, non_trainable)
        else:
            new_trainable, new_optimizer = self.optimizer.stateless_apply(
                optimizer_variables, grads, trainable
            )
        logs, metrics_variables = self._update_metrics_variables(
            metrics_variables, unscaled, x, y, y_pred, sample_weight
        )
        return self._lossplug_logs(logs), (
            new_trainable,
            new_non_trainable,
            new_optimizer,
            metrics_variables,
        )

    def test_step(self, state: Any, data: Any) -> Any:
        trainable, non_trainable, metrics_variables = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, aux = self._lossplug_loss(
            trainable, non_trainable, metrics_variables, None, x, y, sample_weight, False
        )
        unscaled, y_pred, non_trainable, metrics_variables, _ = aux
        logs, metrics_variables = self._update_metrics_variables(
            metrics_variables, unscaled, x, y, y_pred, sample_weight
        )
        return self._lossplug_logs(logs), (trainable, non_trainable, metrics_variables)

    def _lossplug_logs(self, logs: Any) -> Any:
        return logs


def _current(scope: Any, variable: Any, old: Any) -> Any:
    value = scope.get_current_value(variable)
    return old if value is None else value


# ---------------------------------------------------------------------- float64
#: The JAX functions behind the ``keras.ops`` that Keras 3.15 computes in float32 for
#: float64 tensors: its dtype promotion (``keras.backend.result_type``) maps float64 to
#: float32 on every backend but TensorFlow, also under ``jax.enable_x64``, and these ops
#: cast their inputs to that type. :mod:`lossplug.numerics` calls them, with float64
#: arguments only, in place of the Keras op (see docs/decisions.md, upstream limitations).
FLOAT64_OPS: dict[str, Callable[..., Any]] = {
    "arctan2": jnp.arctan2,
    "cos": jnp.cos,
    "cumsum": jnp.cumsum,
    "floor": jnp.floor,
    "logaddexp": jnp.logaddexp,
    "matmul": jnp.matmul,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
}


__all__ = [
    "FLOAT64_OPS",
    "NAME",
    "Trainer",
    "all_gather",
    "all_replicas_true",
    "check_compile",
    "gradient_values",
    "host_callbacks_available",
    "host_check",
    "init_scope",
    "is_traced",
    "keras_loss_prediction",
    "num_replicas",
    "per_replica",
    "quiet",
    "sync_training_state",
    "track_new_variables",
    "training_value",
]


# ---------------------------------------------------------------------- the conformance kit
KIT_MODES = {"jit": "jax.jit"}


def kit_scope() -> Any:
    """The kit compares against float64 references: enable 64-bit values while it runs."""
    return jax.enable_x64(True)


def kit_compile(fn: Callable[..., Any], mode: str, args: Any, dynamic: Any, variables: Any) -> Any:
    """``fn`` under ``jax.jit``, the variables it reads passed in as arguments (stateless)."""

    def pure(values: Any, *arguments: Any) -> Any:
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return fn(*arguments)

    compiled = jax.jit(pure)
    return lambda *arguments: compiled([v.value for v in variables], *arguments)


def kit_gradients(fn: Callable[[dict], Any], tensors: dict, variables: list) -> Any:
    """(objective, aux, gradients by tensor name, gradients of ``variables``), via ``jax.grad``."""

    def pure(tensors: dict, values: list) -> Any:
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return fn(tensors)

    grad_fn = jax.value_and_grad(pure, argnums=(0, 1), has_aux=True)
    (objective, aux), (tensor_grads, variable_grads) = grad_fn(
        dict(tensors), [v.value for v in variables]
    )
    return objective, aux, dict(tensor_grads), list(variable_grads)

"""TensorFlow: ``tf.distribute`` replicas, ``tf.function`` host checks, the guarded step."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..errors import CompileError
from ._tf_multi_worker import first_local_batch, in_multi_worker_mode, logs_for_replica_mean

NAME = "tensorflow"


# ---------------------------------------------------------------------- replicas
def num_replicas() -> int:
    """Replicas in sync under the current ``tf.distribute`` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_gather(value: Any, axis: int = 0) -> Any:
    """Concatenate ``value`` over the replicas (identity with one replica).

    Gradients flow back to each replica's own slice.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_gather(value, axis=axis)


def per_replica(
    call: Callable[[dict, dict], Any], inputs: dict, outputs: dict, *, scalar: bool
) -> Any:
    """The term over this replica's share: what the step computes already (see jax.py)."""
    return call(inputs, outputs)


def all_replicas_true(flag: Any) -> Any:
    """``flag`` (scalar bool) AND-ed over the replicas, the same on each of them."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return flag
    failures = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(flag, tf.float32))
    return failures < 0.5


# ---------------------------------------------------------------------- tracing
def init_scope() -> Any:
    """Lift variable creation out of any ``tf.function`` being traced."""
    return tf.init_scope()


def is_traced(value: Any) -> bool:
    """Whether ``value`` is symbolic (inside ``tf.function``) rather than an eager value."""
    return not tf.executing_eagerly() or (tf.is_tensor(value) and not hasattr(value, "numpy"))


def _in_xla() -> bool:
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - private TensorFlow modules moved
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def host_callbacks_available() -> bool:
    """Whether the function being traced can call the host (not under XLA)."""
    return not _in_xla()


def host_check(value: Any, bad: Any, on_host: Callable[..., None], *args: Any) -> Any:
    """``value``, after ``on_host(*numpy args)`` ran on the host if ``bad`` (scalar bool) holds.

    In ``tf.function`` the call is a ``tf.numpy_function`` inside ``tf.cond`` and
    ``value`` gets a control dependency on it, so the check runs before anything
    that consumes ``value`` (a gather, say).
    """

    def call() -> Any:
        def run(*arrays: np.ndarray) -> np.int32:
            on_host(*arrays)
            return np.int32(0)

        return tf.numpy_function(run, list(args), tf.int32, stateful=True)

    done = tf.cond(bad, call, lambda: tf.constant(0, tf.int32))
    with tf.control_dependencies([done]):
        return tf.identity(value)


def track_new_variables(model: Any) -> None:
    """Nothing to do: variables created after build are found through the layers."""


def sync_training_state(model: Any) -> None:
    """Nothing to do: TensorFlow updates variables in place."""


def training_value(model: Any, variable: Any) -> Any:
    """``variable``'s value: TensorFlow trains the variables themselves."""
    return variable.value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence TensorFlow's retracing warnings (the kit traces many small functions)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------- training
def gradient_values(gradient: Any) -> Any:
    """The values of a gradient (the rows of an ``IndexedSlices``, without densifying)."""
    if isinstance(gradient, tf.IndexedSlices):
        return gradient.values
    return gradient


def keras_loss_prediction(y_pred: Any) -> Any:
    """``y_pred`` as a Keras loss receives it: unchanged here (see ``torch.py``)."""
    return y_pred


def check_compile(model: Any, steps_per_execution: int) -> None:
    """Refuse what Keras 3.15 cannot run, before it fails with a TensorFlow graph error.

    Keras' TensorFlow trainer runs ``steps_per_execution > 1`` steps in a
    ``tf.while_loop`` whose conditional branches cannot hold a cross-replica step
    (keras-team/keras#19246): with two or more replicas even a plain Keras model
    fails with "You must feed a value for placeholder tensor". tests/test_distribute.py
    keeps a canary that turns red when Keras is fixed.
    """
    strategy = model.distribute_strategy
    replicas = strategy.num_replicas_in_sync
    if steps_per_execution > 1 and replicas > 1:
        raise CompileError(
            f"compile(steps_per_execution={steps_per_execution}) under "
            f"{type(strategy).__name__} with {replicas} replicas: Keras 3 cannot run several "
            "steps per execution across replicas (keras-team/keras#19246; a plain Keras "
            "model fails too). Use steps_per_execution=1 with a strategy, or train "
            "without the strategy."
        )


class Trainer:
    """``train_step`` of Keras' TensorFlow trainer, with lossplug's guard around the update.

    The forward pass, the loss and the gradients are computed as in Keras; then
    the step is applied (optimizer update, then the plugins' own state updates)
    only if :meth:`LossModel._lossplug_step_ok` says so, and otherwise skipped
    entirely (no variable changes, not even the optimizer's iteration count).

    Also works around Keras 3.15's TensorFlow trainer under a multi-worker
    ``MultiWorkerMirroredStrategy`` (see :mod:`._tf_multi_worker`): the
    overrides are inert otherwise.
    """

    def train_step(self, data: Any) -> Any:
        from keras.src.losses.loss import unscale_loss_for_distribution

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True) if self._call_has_training_arg else self(x)
            with self._lossplug_in_step(defer_updates=True):
                loss = self.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
            record = self._lossplug_take_record()
            self._loss_tracker.update_state(
                unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0],
            )
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        if self.trainable_weights:
            variables = self.trainable_weights
            gradients = tape.gradient(loss, variables)
            if self._lossplug.value["check_finite"]:
                ok = self._lossplug_step_ok(record, [gradient_values(g) for g in gradients])
                self._lossplug_apply(ok, gradients, variables, record)
            else:
                self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
                record.apply_updates()
        else:
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
            # No optimizer step, but the plugins' own rules still run once per step.
            ok = self._lossplug_step_ok(record, None)
            record.apply_updates(ok)
            self._lossplug_guard.fail(when=tf.logical_not(ok))
        return self._lossplug_logs(self.compute_metrics(x, y, y_pred, sample_weight))

    def test_step(self, data: Any) -> Any:
        with self._lossplug_in_step(defer_updates=False):
            return self._lossplug_logs(super().test_step(data))

    def _lossplug_logs(self, logs: Any) -> Any:
        if in_multi_worker_mode(self.distribute_strategy):
            return logs_for_replica_mean(logs)
        return logs

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self.distribute_strategy
        if iterator is not None and data_batch is None and in_multi_worker_mode(strategy):
            data_batch = first_local_batch(strategy, iterator)
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _lossplug_apply(
        self, ok: Any, gradients: Sequence[Any], variables: Sequence[Any], record: Any
    ) -> None:
        targets = [var for var, _ in record.updates]

        def apply(gradients: Sequence[Any], values: Sequence[Any]) -> Any:
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            for var, value in zip(targets, values, strict=True):
                var.assign(value)
            return tf.constant(True)

        def skip() -> Any:
            self._lossplug_guard.fail()
            return tf.constant(False)

        values = [value for _, value in record.updates]
        if not tf.distribute.has_strategy() or (
            tf.__internal__.distribute.strategy_supports_no_merge_call()
        ):
            tf.cond(ok, lambda: apply(gradients, values), skip)
            return

        # MirroredStrategy: the optimizer's update calls merge_call, which cannot sit in
        # a tf.cond in replica context; branch in cross-replica context, as Keras'
        # LossScaleOptimizer does. ``ok`` is the same on every replica; each replica's
        # gradients and update values reach it through merge_call's arguments.
        def branch(distribution: Any, ok: Any, gradients: Any, values: Any) -> None:
            ok = distribution.experimental_local_results(ok)[0]

            def apply_all() -> Any:
                distribution.extended.call_for_each_replica(apply, args=(gradients, values))
                return tf.constant(True)

            def skip_all() -> Any:
                distribution.extended.call_for_each_replica(skip)
                return tf.constant(False)

            tf.cond(ok, apply_all, skip_all)

        tf.distribute.get_replica_context().merge_call(branch, args=(ok, gradients, values))


# ---------------------------------------------------------------------- float64
#: No replacements: Keras' TensorFlow ops keep float64 tensors in float64 (the JAX and
#: torch modules list the ops that need one, see :mod:`lossplug.numerics`).
FLOAT64_OPS: dict[str, Callable[..., Any]] = {}


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
#: The kit's compiled modes on this backend, with the text its reports use.
KIT_MODES = {"function": "tf.function", "jit": "tf.function(jit_compile=True)"}


def kit_scope() -> Any:
    """Nothing to set up: TensorFlow has float64 by default."""
    return contextlib.nullcontext()


def kit_compile(fn: Callable[..., Any], mode: str, args: Any, dynamic: Any, variables: Any) -> Any:
    """``fn`` compiled as Keras' fit would: traced with an unknown batch size.

    ``args`` are example arguments (nested structures of tensors); ``dynamic(path)``
    says whether the first axis of the tensor at that position is the batch.
    """

    def spec(path: Any, value: Any) -> tf.TensorSpec:
        shape = list(value.shape)
        if shape and dynamic(path):
            shape[0] = None
        return tf.TensorSpec(shape, value.dtype)

    signature = [
        _map_with_path(lambda p, v, i=i: spec((i, *p), v), arg) for i, arg in enumerate(args)
    ]
    compiled = tf.function(
        fn, input_signature=signature, jit_compile=mode == "jit", autograph=False
    )
    return compiled


def _map_with_path(fn: Callable[..., Any], structure: Any) -> Any:
    if isinstance(structure, dict):
        return {
            k: _map_with_path(lambda p, v, k=k: fn((k, *p), v), v) for k, v in structure.items()
        }
    return fn((), structure)


def kit_gradients(fn: Callable[[dict], Any], tensors: dict, variables: list) -> Any:
    """(objective, aux, gradients by tensor name, gradients of ``variables``).

    ``fn(tensors)`` returns ``(objective, aux)``, the objective a scalar.
    """
    with tf.GradientTape() as tape:
        for value in tensors.values():
            tape.watch(value)
        objective, aux = fn(tensors)
    grads = tape.gradient(objective, [*tensors.values(), *variables])
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    names = list(tensors)
    return objective, aux, dict(zip(names, grads[: len(names)], strict=True)), grads[len(names) :]

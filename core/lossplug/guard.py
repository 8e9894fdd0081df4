"""The finite guard: no training step with a non-finite loss is ever applied.

Every training step computes ``ok``: the total loss is finite, every gradient is
finite (unless a ``LossScaleOptimizer`` already handles non-finite gradients),
``ok`` holds on every replica, and no earlier step of this epoch failed. The
backend's ``train_step`` (:mod:`lossplug.backend`) applies the optimizer update
and the plugins' state updates only if ``ok``; otherwise nothing changes, not
even the optimizer's step count. Checking costs a few reductions per step.

:class:`TrainingCallback` (added by ``LossModel.fit``) then reads the guard
(after the first batch of an epoch, every half second, before the epoch's validation and
at its end): a failed step stops training with a :class:`lossplug.NonFiniteLossError`
naming the term whose running mean is NaN or infinite, the epoch and the batch.
The weights, the optimizer and the plugins' state are left as they were before
that batch. Errors recorded inside compiled steps (:mod:`lossplug.runtime`,
e.g. class ids out of range) are raised by the same callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from . import runtime
from .errors import LossplugError, NonFiniteLossError


@keras.saving.register_keras_serializable(package="lossplug")
class StepGuard(keras.metrics.Metric):
    """Remembers within an epoch that a step was skipped, so later steps are skipped too.

    A metric so that every backend carries its variable through the compiled
    step as it carries metrics (JAX's stateless state included); its result is
    empty, so it shows nowhere.
    """

    def __init__(self, name: str = "lossplug_step_guard", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

        def variable(name: str, shape: tuple[int, ...] = ()) -> Any:
            # Every replica holds the same values: read the first one's, never their sum.
            return self.add_variable(
                shape=shape,
                initializer="zeros",
                dtype="int32",
                aggregation="only_first_replica",
                name=name,
            )

        self.failed = variable("failed")
        #: training steps of this epoch so far (applied or not)
        self.batches = variable("batches")
        #: the batch (of this epoch) whose step failed first
        self.step = variable("step")
        #: a failed check the compiler could not report (lossplug.runtime.check): its
        #: factory id (0: none) and its two values
        self.check = variable("check")
        self.values = variable("values", (2,))
        #: set while a step is traced that keeps failed checks in :attr:`check` (XLA on
        #: TensorFlow: no host callbacks there); the callbacks read them only then
        self.holds_checks = False

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the guard is set by :meth:`count` and :meth:`fail`."""

    def count(self) -> None:
        """One more training step in this epoch (called once per step, before :meth:`fail`)."""
        self.batches.assign(self.batches.value + 1)

    def fail(self, when: Any = None) -> None:
        """Record that this step is skipped; only where ``when``, if given."""
        first = self.failed.value == 0
        if when is not None:
            first = ops.logical_and(first, when)
        self.step.assign(ops.where(first, self.batches.value - 1, self.step.value))
        failed = ops.ones((), "int32")
        self.failed.assign(failed if when is None else ops.where(when, failed, self.failed.value))

    def record(self, bad: Any, identifier: int, a: Any, b: Any) -> None:
        """Keep the first failed check of the epoch (``bad``: scalar bool tensor)."""
        self.holds_checks = True
        first = ops.logical_and(self.check.value == 0, bad)
        self.check.assign(ops.where(first, identifier, self.check.value))
        pair = ops.cast(ops.stack([a, b]), "int32")
        self.values.assign(ops.where(first, pair, self.values.value))

    def recorded_error(self) -> LossplugError | None:
        """The error of the recorded check, if any (read outside the step)."""
        if not self.holds_checks:
            return None
        identifier = int(ops.convert_to_numpy(self.check))
        make = runtime.factory(identifier)
        if make is None:
            return None
        a, b = (int(v) for v in ops.convert_to_numpy(self.values))
        return make(a, b)

    def result(self) -> dict[str, Any]:
        return {}

    def reset_state(self) -> None:
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))


def all_finite(values: Sequence[Any]) -> Any:
    """Scalar bool: every element of every tensor in ``values`` is finite.

    Summing first (in float32) costs one pass over the values; a NaN or an
    infinity anywhere makes the sum non-finite (so does a sum beyond float32's
    range, which no usable gradient reaches).
    """
    sums = [ops.sum(ops.cast(v, "float32")) for v in values if v is not None]
    if not sums:
        return ops.convert_to_tensor(True)
    return ops.all(ops.isfinite(ops.stack(sums)))


def step_ok(finite: Any, gradients: Sequence[Any], failed: Any) -> Any:
    """Scalar bool: a step may be applied.

    ``finite`` (its loss is finite) and every gradient in ``gradients`` is finite, on
    every replica, and no earlier step of the epoch failed (``failed``: the guard's flag).
    A pure function of tensors, so a backend may compile it as one call.
    """
    from . import backend

    ok = ops.logical_and(finite, all_finite(gradients)) if gradients else finite
    ok = backend.current().all_replicas_true(ok)
    return ops.logical_and(ok, failed == 0)


class StepRecord:
    """What one ``compute_loss`` call leaves for the training step that called it.

    Give either ``finite`` (a scalar bool tensor) or the ``loss`` it is computed from,
    on first use: a step that never asks (no guard, no state updates) runs no check.
    """

    __slots__ = ("_finite", "_loss", "updates")

    def __init__(
        self,
        finite: Any = None,
        updates: list[tuple[Any, Any]] | None = None,
        *,
        loss: Any = None,
    ) -> None:
        if (finite is None) == (loss is None):
            raise TypeError("StepRecord takes one of finite= and loss=")
        self._finite, self._loss = finite, loss
        self.updates = updates or []  #: plugin state updates (variable, value)

    @property
    def finite(self) -> Any:
        """Scalar bool tensor: the total loss is finite."""
        if self._finite is None:
            self._finite = ops.isfinite(self._loss)
        return self._finite

    def apply_updates(self, ok: Any = None) -> None:
        """Assign the plugins' new state (where ``ok``, when given)."""
        for var, value in self.updates:
            var.assign(value if ok is None else ops.where(ok, value, var.value))


def _who(b: Any) -> str:
    return b.who


#: Seconds between two reads of the guard within a training epoch (after the first batch).
POLL_SECONDS = 0.5


class TrainingCallback(keras.callbacks.Callback):
    """Feeds the epoch to the terms; stops on a failed step or a recorded error.

    A failed step is never applied, and every later step of the epoch is skipped
    too (:class:`StepGuard`), so the callback need not look after every batch: it
    reads the guard after the first batch of each epoch, then at most every
    :data:`POLL_SECONDS`, and at the end of the epoch (or before its validation, which
    resets every metric, the guard too). The guard holds the optimizer
    step of the first failure, so the error names that batch exactly, however late
    it is read. Reading the guard waits for the device; defining no per-batch end
    hook lets Keras dispatch the steps (and the other callbacks) asynchronously
    where the backend allows it (JAX, PyTorch), as for a plain Keras model.
    """

    #: steps that fail are skipped (``compile(check_finite=True)``)
    GUARDED = True

    def __init__(self, model: Any) -> None:
        super().__init__()
        self._owner = model
        self._epoch = 0
        self._batch = 0
        self._phase = "training"
        self._last_poll: float | None = None
        self._fitting = False

    # The owner, not ``self.model``: Keras sets ``model`` on callbacks late in evaluate.
    def on_train_begin(self, logs: Any = None) -> None:
        runtime.clear_reported()
        self._fitting = True

    def on_train_end(self, logs: Any = None) -> None:
        self._fitting = False

    def on_test_begin(self, logs: Any = None) -> None:
        if self._fitting:
            # fit's validation: Keras resets every metric (the guard too) before it runs
            # and before the epoch's end, so the training epoch is checked here first
            self._check_epoch(None)
        runtime.clear_reported()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        owner = self._owner
        owner.set_epoch(epoch)
        self._epoch = epoch
        self._last_poll = None

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch > 0 and self._poll_due():
            self._check_epoch(None)
        self._batch, self._phase = batch, "training"

    def on_test_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._batch, self._phase = batch, "evaluation"

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self._raise_reported(batch, "evaluation")

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._check_epoch(logs)

    def note(self, error: LossplugError, *, applied: bool = False) -> None:
        """Say where an error raised during a step happened, once.

        ``applied``: the step ran to its end (no guard), so it was not undone.
        """
        if getattr(error, "_lossplug_noted", False):
            return
        error._lossplug_noted = True
        where = f"found in training epoch {self._epoch}, batch {self._batch}"
        if self._phase == "training" and applied:
            error.add_note(
                f"({where}; compile(check_finite=False) skips no step: that step was applied "
                "without the gradient of the term that found the problem, as were the steps "
                "already under way when the error was read)"
            )
        elif self._phase == "training":
            error.add_note(
                f"({where}; the step was not applied: the weights and the plugins' state are "
                "those from before that batch)"
            )
        else:
            error.add_note(f"(found in evaluation, batch {self._batch})")

    # ------------------------------------------------------------------ helpers
    def _poll_due(self) -> bool:
        now = time.monotonic()
        if self._last_poll is not None and now - self._last_poll < POLL_SECONDS:
            return False
        self._last_poll = now
        return True

    def _check_epoch(self, logs: dict[str, Any] | None) -> None:
        """Stop with the error of the epoch's first failed step, if a step failed.

        ``logs``: the epoch's logs where Keras gives them, else read from the model.
        """
        from . import backend

        owner = self._owner
        guard = owner._lossplug_guard
        reported = runtime.take_reported()
        # JAX: the guard lives in fit's state; peek at its flag, sync only to report
        failed = backend.current().training_value(owner, guard.failed)
        if not int(ops.convert_to_numpy(failed)):
            if reported is not None:  # not from a training step: raise it as it is
                self._report(reported, self._batch)
            return
        backend.current().sync_training_state(owner)
        first = int(ops.convert_to_numpy(guard.step))
        error = reported if reported is not None else guard.recorded_error()
        if error is not None:
            self._report(error, first)
        if logs is None:
            logs = {k: ops.convert_to_numpy(v) for k, v in owner.get_metrics_result().items()}
        self._stop(self._non_finite_error(first, logs))

    def _non_finite_error(self, first: int, logs: dict[str, Any]) -> NonFiniteLossError:
        bad = [
            b
            for b in self._owner._lossplug_terms_bound()
            if b.name in logs and b.trained and not _finite(logs[b.name])
        ]
        where = f"epoch {self._epoch}, batch {first}"
        if bad:
            values = ", ".join(f"{b.name}={float(np.asarray(logs[b.name]))}" for b in bad)
            culprit = " and ".join(_who(b) for b in bad)
            subject = f"{culprit} produced a non-finite loss ({values}) at {where}"
            hints = [_hint(b) for b in bad]
        elif "loss" in logs and not _finite(logs["loss"]):
            subject = (
                f"the loss is non-finite ({logs['loss']}) at {where}, while every term is "
                "finite: a layer loss (activity or weight regulariser) is NaN or infinite"
            )
            hints = ["check the layers' regularisers and the data"]
        else:
            subject = (
                f"the training step at {where} had a non-finite gradient (every loss term "
                "was finite)"
            )
            hints = ["Check the plugins' gradients (lossplug check NAME), the layers and the data."]
        return NonFiniteLossError(
            f"{subject}. Training stopped and that step was not applied: the model's "
            f"weights, the optimizer and the plugins' state are those from before batch "
            f"{first} (compile(check_finite=False) turns this check off). "
            + " ".join(dict.fromkeys(hints))
        )

    def _report(self, error: LossplugError, batch: int, phase: str = "training") -> None:
        """Raise ``error``, recorded by the compiled step of ``batch``, where it was found."""
        self._batch, self._phase = batch, phase
        self.note(error, applied=not self.GUARDED)
        self._stop(error)

    def _stop(self, error: LossplugError) -> None:
        from . import backend

        owner = self._owner
        owner.stop_training = True
        backend.current().sync_training_state(owner)
        raise error

    def _raise_reported(self, batch: int, phase: str) -> None:
        """Raise an error the steps so far recorded: on the host, or in the step guard."""
        error = runtime.take_recorded(self._owner)
        if error is not None:
            self._report(error, batch, phase)


class UnguardedTrainingCallback(TrainingCallback):
    """``compile(check_finite=False)``: no finite guard, and nothing to wait for.

    An error a step recorded is raised when the next batch begins (or the epoch's
    validation, or its end). Errors recorded on the host carry the optimizer's step of
    the step that found them, so the batch named is exact also where Keras runs steps
    ahead of the callbacks (JAX, PyTorch): defining no per-batch end hook keeps that
    asynchronous dispatch, as for the guarded model.
    """

    GUARDED = False

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._first_step: int | None = None

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        super().on_epoch_begin(epoch, logs)
        optimizer = getattr(self._owner, "optimizer", None)
        self._first_step = (
            None if optimizer is None else int(ops.convert_to_numpy(optimizer.iterations))
        )

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch > 0:
            self._raise_reported(batch - 1, "training")  # the last batch, where not known
        self._batch, self._phase = batch, "training"

    def _check_epoch(self, logs: dict[str, Any] | None) -> None:
        self._raise_reported(self._batch, "training")

    def _report(self, error: LossplugError, batch: int, phase: str = "training") -> None:
        step = runtime.reported_step(error)
        if phase == "training" and step is not None and self._first_step is not None:
            batch = step - self._first_step
        super()._report(error, batch, phase)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(np.asarray(value)))
    except (TypeError, ValueError):
        return True


def _hint(b: Any) -> str:
    spec = b.term.spec
    if spec is None:
        return (
            f"Check the targets and outputs Keras loss {b.term.name!r} receives (NaN or "
            "infinite values, probabilities of exactly 0 or 1)."
        )
    return (
        f"Check the inputs {spec.name!r} reads (from_logits, label range, NaN in the data) "
        f"and its config; `lossplug check {spec.name}` tests the plugin."
    )


__all__ = [
    "StepGuard",
    "StepRecord",
    "TrainingCallback",
    "UnguardedTrainingCallback",
    "all_finite",
    "step_ok",
]

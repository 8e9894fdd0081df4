"""Checks of state a plugin changes by its own rule (``extras.state.update``).

A plugin may set its non-trainable state during a training step (the centres of
``center(update="paper")``, the ring buffer of ``cross_batch_memory``): it asks
with ``extras.state.update(name, value)`` and the core applies the value once per
training step, after the optimizer, only if the step is finite. These checks hold
every plugin to that contract (a plugin with no state, or none it updates, passes
them trivially):

``state_updates``
    * no state changes during a call: neither with ``training=False`` (``evaluate``,
      ``predict``, the compile-time probe) nor with ``training=True``, where a
      direct ``variable.assign`` would bypass the core (applied on every trace,
      before the optimizer, also for a step the finite guard skips);
    * no update is asked for with ``training=False``;
    * each update has its variable's shape and dtype, whatever the input dtype;
    * the same batch from the same state asks for the same update (deterministic),
      in eager and in the backend's compiled modes alike;
    * updates are finite wherever the loss is.
``state_updates_extremes``
    the updates are finite at extreme inputs (zero rows, huge logits) too.

That the updated state is saved with the model (and that ``evaluate`` and
``predict`` leave it alone) is part of the ``save_load`` check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..properties import Example
from .harness import Outcome, Session, mode_text, modes
from .report import KitFailure

#: Input dtypes the update's dtype must not depend on.
INPUT_DTYPES = ("float16", "float32", "float64")


def _changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> list[str]:
    return [
        name
        for name, value in before.items()
        if not np.array_equal(value, after[name], equal_nan=True)
    ]


def _no_change(session: Session, example: Example, training: bool) -> Outcome:
    session.restore(example.state)
    before = session.store.values()
    outcome = session.call(example, training=training)
    changed = _changed(before, session.store.values())
    if changed:
        where = (
            "a training step"
            if training
            else "a call with training=False (evaluate, predict or the compile-time probe)"
        )
        raise KitFailure(
            f"the plugin changed its state variable(s) {changed} during {where}: assign "
            "state only through extras.state.update(name, value), which the core applies "
            "once per training step, after the optimizer and only if the step is finite",
            example=example,
        )
    return outcome


def _finite_updates(outcome: Outcome, example: Example, where: str) -> None:
    loss_finite = all(
        np.all(np.isfinite(np.asarray(v, np.float64))) for v in outcome.values().values()
    )
    if not loss_finite:
        return  # the guard skips such a step: its updates are never applied
    for name, value in outcome.updates.items():
        value = np.asarray(value, np.float64)
        if not np.all(np.isfinite(value)):
            raise KitFailure(
                f"the update of state variable {name!r} is not finite {where} although the "
                f"loss is ({value.ravel()[~np.isfinite(value.ravel())][:4].tolist()}); the "
                "core would write it into the model",
                example=example,
            )


def state_updates(ctx: Any, example: Example) -> None:
    example = ctx.prepare(example)
    session = ctx.harness.session(example)
    evaluated = _no_change(session, example, training=False)
    if evaluated.updates:
        raise KitFailure(
            f"the plugin asked to update {sorted(evaluated.updates)} in a call with "
            "training=False (the core ignores such updates): update state only when "
            "extras.training is True",
            example=example,
        )
    trained = _no_change(session, example, training=True)
    if not trained.updates:
        return
    _finite_updates(trained, example, "on a typical batch")
    variables = session.store.values()
    for name, value in trained.updates.items():
        if value.shape != variables[name].shape or value.dtype != variables[name].dtype:
            raise KitFailure(
                f"the update of {name!r} has shape {value.shape} and dtype {value.dtype}; the "
                f"variable has {variables[name].shape} and {variables[name].dtype}",
                example=example,
            )
    again = session.call(example, training=True)
    for name, value in trained.updates.items():
        if not np.array_equal(again.updates.get(name), value, equal_nan=True):
            raise KitFailure(
                f"the update of {name!r} differs between two training calls on the same batch "
                "from the same state: updates must be deterministic (no random draws without "
                "a seed derived from the step)",
                example=example,
            )
    for mode in modes()[1:]:
        compiled = session.call(example, training=True, mode=mode)
        for name, value in trained.updates.items():
            got = compiled.updates.get(name)
            if got is None or not np.allclose(got, value, rtol=1e-4, atol=1e-5, equal_nan=True):
                raise KitFailure(
                    f"the update of {name!r} is {_head(value)} eagerly and {_head(got)} "
                    f"{mode_text(mode)}",
                    example=example,
                )
    for dtype in INPUT_DTYPES:
        cast = session.call(example, training=True, dtype=dtype)
        for name, value in cast.updates.items():
            if value.dtype != variables[name].dtype:
                raise KitFailure(
                    f"with {dtype} inputs the update of {name!r} has dtype {value.dtype}, the "
                    f"variable {variables[name].dtype}",
                    example=example,
                )
        if dtype != "float16":  # float16 may overflow where the loss does not
            _finite_updates(cast, example, f"with {dtype} inputs")


def state_updates_extremes(ctx: Any, example: Example) -> None:
    example = ctx.prepare(example)
    session = ctx.harness.session(example)
    _finite_updates(session.call(example, training=True), example, "at extreme inputs")


def _head(value: Any) -> str:
    if value is None:
        return "missing"
    return str(np.asarray(value).ravel()[:4].tolist())


__all__ = ["INPUT_DTYPES", "state_updates", "state_updates_extremes"]

"""What the core knows while a term is evaluated, and problems found inside compiled steps.

While the core evaluates one term it opens a :func:`term_scope`: helpers such as
:func:`lossplug.numerics.class_ids` read it to name the plugin and the term in
their errors, and to report problems found in the data.

A problem found *eagerly* (concrete values) raises at once. Inside a compiled
step (``tf.function``, ``jax.jit``, XLA) a Python exception cannot be raised
in the middle of the computation without losing the step's state (on JAX the
model state is donated to the step), so the check instead:

1. records the error on the host (:func:`report`, called from a host callback
   with the offending values), and
2. marks the term as failed (:func:`mark_invalid`): the core turns the term's
   value into NaN, so the training step is skipped by the finite guard and
   no weight or plugin state is updated from the bad batch.

``LossModel``'s training callback then raises the recorded error (with the
epoch and batch) as the first thing the user reads. In a custom training loop,
:func:`raise_reported` (given the model) raises it; ``LossModel.compute_loss`` calls it
when run eagerly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .errors import LossplugError


class TermScope:
    """The term being evaluated: its display name, plugin, and what its checks found.

    A plain class (no attrs): it is built inside compiled steps, and torch.compile's
    tracer cannot follow attrs' generated ``__init__``.
    """

    __slots__ = ("invalid", "plugin", "step", "term", "training", "unreported", "updates")

    def __init__(
        self, term: str, plugin: str | None, training: bool = True, step: Any = None
    ) -> None:
        self.term = term
        self.plugin = plugin
        self.training = training
        #: the optimizer's step counter (a tensor or variable) of the step being traced, if any
        self.step = step
        #: tensors whose truth means the term's value must not be used (bad class ids, ...)
        self.invalid: list[Any] = []
        #: (variable, new value) pairs the plugin asked for with ``extras.state.update``
        self.updates: list[tuple[Any, Any]] = []
        #: checks that could not call the host (XLA): (bad flag, factory id, two int values)
        self.unreported: list[tuple[Any, int, Any, Any]] = []

    def who(self) -> str:
        if self.plugin is None:
            return f"term {self.term!r}"
        if self.plugin == self.term:
            return f"loss plugin {self.plugin!r}"
        return f"loss plugin {self.plugin!r} (term {self.term!r})"


_local = threading.local()
_reported: list[LossplugError] = []
_reported_lock = threading.Lock()


def current() -> TermScope | None:
    """The innermost open term scope of this thread, or None outside term evaluation."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def term_scope(
    term: str, plugin: str | None, *, training: bool = True, step: Any = None
) -> Iterator[TermScope]:
    """Open a scope for one evaluation of ``term`` (see the module docstring).

    ``step``: the optimizer's step counter, which errors recorded on the host carry
    (:func:`reported_step`).
    """
    scope = TermScope(term=term, plugin=plugin, training=training, step=step)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(scope)
    try:
        yield scope
    finally:
        stack.pop()


def who(plugin: str) -> str:
    """``loss plugin 'NAME'`` plus the term's name when it differs, for error messages."""
    scope = current()
    if scope is not None and scope.plugin == plugin:
        return scope.who()
    return f"loss plugin {plugin!r}"


def mark_invalid(flag: Any) -> None:
    """Within a term scope: the term's value is unusable where ``flag`` (scalar bool) is true."""
    scope = current()
    if scope is not None:
        scope.invalid.append(flag)


_factories: list[Callable[..., LossplugError]] = []


def factory_id(factory: Callable[..., LossplugError]) -> int:
    """A small int (>= 1) standing for ``factory`` inside compiled steps."""
    _factories.append(factory)
    return len(_factories)


def factory(identifier: int) -> Callable[..., LossplugError] | None:
    return _factories[identifier - 1] if 0 < identifier <= len(_factories) else None


def check(value: Any, bad: Any, error: Callable[[Any, Any], LossplugError], a: Any, b: Any) -> Any:
    """``value``, after making sure ``error(a, b)`` reaches the user if ``bad`` holds.

    ``bad`` is a scalar bool tensor, ``a`` and ``b`` integer scalars describing the
    problem (the smallest and largest offending class id, say). With concrete
    values the error is raised at once. Inside a compiled step the term is marked
    invalid (its value becomes NaN, so the step is not applied) and the error is
    recorded: through a host callback, or where the compiler cannot call the host
    (XLA on TensorFlow) in the model's step guard, from which ``fit`` rebuilds it.
    """
    from keras import ops

    from . import backend

    impl = backend.current()
    if not impl.is_traced(bad):
        if bool(ops.convert_to_numpy(bad)):
            raise error(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
        return value
    mark_invalid(bad)
    scope = current()
    if impl.host_callbacks_available():
        step = scope.step if scope is not None and scope.step is not None else -1
        step = ops.cast(ops.convert_to_tensor(step), "int32")

        def on_host(x: Any, y: Any, at: Any) -> None:
            report(error(x, y), step=int(at))

        return impl.host_check(value, bad, on_host, a, b, step)
    if scope is not None:
        scope.unreported.append((bad, factory_id(error), a, b))
    return value


def report(error: LossplugError, step: int | None = None) -> None:
    """Record an error found inside a compiled step (called on the host).

    ``step``: the optimizer's step counter in that step (negative or None: unknown).
    """
    if step is not None and step >= 0:
        error._lossplug_step = step
    with _reported_lock:
        _reported.append(error)


def reported_step(error: LossplugError) -> int | None:
    """The optimizer's step counter in the step that recorded ``error``, if known."""
    return getattr(error, "_lossplug_step", None)


def take_reported() -> LossplugError | None:
    """The first recorded error (and forget all of them), or None."""
    with _reported_lock:
        first = _reported[0] if _reported else None
        _reported.clear()
    return first


def clear_reported() -> None:
    with _reported_lock:
        _reported.clear()


def take_recorded(model: Any = None) -> LossplugError | None:
    """The first error compiled steps recorded (those on the host are forgotten), or None.

    ``model``: the ``LossModel`` whose steps ran; then also a failed check its compiled step
    kept in the model's step guard, where the compiler cannot call the host (XLA on
    TensorFlow). The guard is a metric: ``reset_metrics()`` forgets it.
    """
    error = take_reported()
    if error is None and model is not None:
        error = model._lossplug_guard.recorded_error()
    return error


def raise_reported(model: Any = None) -> None:
    """Raise :func:`take_recorded`'s error, if any (for custom training loops)."""
    error = take_recorded(model)
    if error is not None:
        raise error


__all__ = [
    "TermScope",
    "check",
    "clear_reported",
    "current",
    "mark_invalid",
    "raise_reported",
    "report",
    "reported_step",
    "take_recorded",
    "take_reported",
    "term_scope",
    "who",
]

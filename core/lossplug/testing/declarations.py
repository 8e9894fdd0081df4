"""Checks of what a plugin declares but the other checks cannot see.

``state_store``
    every variable a plugin creates comes from ``extras.state.variable``: a variable
    created any other way (``keras.Variable(...)`` inside ``build_loss_graph``) is
    neither trained by the model's optimizer nor saved with the model, yet a plugin
    built that way passes every other check (its values are the same before and
    after a save, since they are never saved: they are just lost on reload).
``declared_ranges``
    a float parameter without a declared range (``lossplug.param(low=..., high=...)``)
    is also tried at 0 and below, values the kit otherwise never draws: if the plugin
    then fails or gives a non-finite loss, the range the math needs must be declared,
    so that users get an error naming the parameter instead of a NaN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from ..errors import LossplugError
from ..properties import Example
from ..specs import PluginSpec, make_config
from .report import KitFailure

#: The values tried for a float parameter whose range is not declared.
UNDECLARED_PROBES = (0.0, -1.0)


@contextlib.contextmanager
def created_variables() -> Iterator[list[Any]]:
    """Collect every Keras variable created inside the block (all backends)."""
    from keras.src.backend.common import variables

    created: list[Any] = []
    original = variables.Variable.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    variables.Variable.__init__ = recording
    try:
        yield created
    finally:
        variables.Variable.__init__ = original


def state_store(ctx: Any, example: Example) -> None:
    from .harness import Session

    session = Session(ctx.harness, example.config)
    with created_variables() as created:
        session.ensure(example)  # the probe, as LossModel.compile calls it
        session.call(example, training=True)
    stored = {id(v) for v in session.store.variables}
    outside = [v for v in created if id(v) not in stored]
    if outside:
        names = ", ".join(repr(str(getattr(v, "path", v.name))) for v in outside)
        raise KitFailure(
            f"the plugin created the variable(s) {names} outside its state store: a variable "
            "made with keras.Variable (or a layer) inside build_loss_graph is neither trained "
            "by the model's optimizer nor saved with the model. Create it with "
            "extras.state.variable(name, shape, initializer, trainable=...)"
        )


def undeclared_float_fields(spec: PluginSpec) -> list[str]:
    """Float Config fields with neither a range nor choices declared."""
    names = []
    for field in attrs.fields(spec.config):
        meta = field.metadata.get("lossplug", {})
        if isinstance(field.default, bool) or not isinstance(field.default, float):
            continue
        if meta.get("low") is None and meta.get("high") is None and meta.get("choices") is None:
            names.append(field.name)
    return names


def declared_ranges(ctx: Any, example: Example) -> None:
    spec = ctx.spec
    base = {f.name: getattr(example.config, f.name) for f in attrs.fields(spec.config) if f.init}
    for name in undeclared_float_fields(spec):
        for value in UNDECLARED_PROBES:
            try:
                config = make_config(spec, {**base, name: value})
            except LossplugError:
                continue  # refused with a clear error: that is a declaration too
            at = ctx.prepare(example.replace(config=config, state={}))
            problem = _problem(ctx, at)
            if problem is not None:
                raise KitFailure(
                    f"parameter {name!r} has no declared range, and at {name}={value!r} "
                    f"{problem}. Declare the range the math needs, e.g. "
                    f"lossplug.param(..., low=0.0, low_inclusive=False), so that such values "
                    "are refused with an error naming the parameter",
                    example=at,
                )


def _problem(ctx: Any, example: Example) -> str | None:
    try:
        outcome = ctx.evaluate(example)
    except LossplugError:
        return None  # a clear error naming the plugin already
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"the plugin raises {type(exc).__name__}: {first}"
    for label, value in outcome.values().items():
        value = np.asarray(value, np.float64)
        if not np.all(np.isfinite(value)):
            return f"{label} is not finite ({value.ravel()[:4].tolist()})"
    return None


__all__ = ["created_variables", "declared_ranges", "state_store", "undeclared_float_fields"]

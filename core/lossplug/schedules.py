"""Weights that follow training: schedules of the epoch or of the step.

A schedule maps the current epoch (or optimizer step) to a weight. Built-in
schedules are computed with ``keras.ops`` inside the compiled training step
from tensors that change every epoch/step, so a weight changes without
retracing. :class:`FromCallable` wraps any Python function of the epoch; the
core evaluates it at the start of every epoch and feeds the value in through a
variable, which also needs no retracing.

Every schedule is Keras-serializable, so a model compiled with one saves and
loads with ``safe_mode`` on (:class:`FromCallable` only when its function is
registered with ``keras.saving.register_keras_serializable``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from .errors import PluginConfigError

_UNITS = ("epoch", "step")


def _check_unit(unit: str) -> str:
    if unit not in _UNITS:
        raise PluginConfigError(f"schedule unit must be 'epoch' or 'step', got {unit!r}")
    return unit


class Schedule:
    """Base class: ``schedule(t)`` returns the weight at epoch or step ``t`` (a float tensor)."""

    unit: str = "epoch"
    #: ``True`` when the value is computed in the graph from ``t``; ``False`` when the
    #: core must evaluate :meth:`value_at` in Python at each epoch start.
    in_graph: bool = True

    def __call__(self, t: Any) -> Any:
        raise NotImplementedError

    def value_at(self, t: int) -> float:
        """The weight at ``t`` as a Python float (for plots, docs and tests)."""
        return float(ops.convert_to_numpy(self(ops.convert_to_tensor(float(t)))))

    def lowest(self) -> float | None:
        """The smallest value the schedule takes, or None when only evaluation can tell."""
        return None

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        return cls(**config)


@keras.saving.register_keras_serializable(package="lossplug")
class Constant(Schedule):
    """w(t) = value."""

    def __init__(self, value: float, unit: str = "epoch") -> None:
        self.value = float(value)
        self.unit = _check_unit(unit)

    def __call__(self, t: Any) -> Any:
        return ops.cast(self.value, "float32")

    def lowest(self) -> float:
        return self.value

    def get_config(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit}

    def __repr__(self) -> str:
        return f"Constant({self.value})"


@keras.saving.register_keras_serializable(package="lossplug")
class LinearRamp(Schedule):
    """Linear warm-up or decay.

    w(t) = start                                  for t <= begin
    w(t) = start + (end - start) (t - begin) / (stop - begin)   in between
    w(t) = end                                    for t >= stop
    """

    def __init__(
        self, start: float, end: float, begin: int = 0, stop: int = 10, unit: str = "epoch"
    ) -> None:
        if stop <= begin:
            raise PluginConfigError(
                f"LinearRamp: stop ({stop}) must be greater than begin ({begin})"
            )
        self.start, self.end = float(start), float(end)
        self.begin, self.stop = int(begin), int(stop)
        self.unit = _check_unit(unit)

    def __call__(self, t: Any) -> Any:
        t = ops.cast(t, "float32")
        frac = ops.clip((t - self.begin) / float(self.stop - self.begin), 0.0, 1.0)
        return self.start + (self.end - self.start) * frac

    def lowest(self) -> float:
        return min(self.start, self.end)

    def get_config(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "begin": self.begin,
            "stop": self.stop,
            "unit": self.unit,
        }

    def __repr__(self) -> str:
        return f"LinearRamp({self.start} -> {self.end} over {self.unit}s {self.begin}..{self.stop})"


@keras.saving.register_keras_serializable(package="lossplug")
class Step(Schedule):
    """Piecewise constant: w(t) = values[i] where boundaries[i-1] <= t < boundaries[i].

    ``len(values) == len(boundaries) + 1`` and boundaries increase strictly.
    """

    def __init__(
        self, boundaries: Sequence[int], values: Sequence[float], unit: str = "epoch"
    ) -> None:
        boundaries, values = [int(b) for b in boundaries], [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise PluginConfigError(
                f"Step: needs len(values) == len(boundaries) + 1, got {len(values)} values "
                f"for {len(boundaries)} boundaries"
            )
        if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:], strict=False)):
            raise PluginConfigError(f"Step: boundaries must increase strictly, got {boundaries}")
        self.boundaries, self.values = boundaries, values
        self.unit = _check_unit(unit)

    def __call__(self, t: Any) -> Any:
        t = ops.cast(t, "float32")
        result = ops.cast(self.values[0], "float32")
        for boundary, value in zip(self.boundaries, self.values[1:], strict=True):
            result = ops.where(t >= boundary, ops.cast(value, "float32"), result)
        return result

    def lowest(self) -> float:
        return min(self.values)

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values, "unit": self.unit}

    def __repr__(self) -> str:
        return f"Step({self.boundaries}, {self.values})"


@keras.saving.register_keras_serializable(package="lossplug")
class Cosine(Schedule):
    """Cosine interpolation from ``start`` to ``end`` over ``[begin, stop]``.

    w(t) = end + (start - end) * (1 + cos(pi * frac)) / 2
    frac = clip((t - begin) / (stop - begin), 0, 1)
    """

    def __init__(
        self, start: float, end: float, begin: int = 0, stop: int = 10, unit: str = "epoch"
    ) -> None:
        if stop <= begin:
            raise PluginConfigError(f"Cosine: stop ({stop}) must be greater than begin ({begin})")
        self.start, self.end = float(start), float(end)
        self.begin, self.stop = int(begin), int(stop)
        self.unit = _check_unit(unit)

    def __call__(self, t: Any) -> Any:
        t = ops.cast(t, "float32")
        frac = ops.clip((t - self.begin) / float(self.stop - self.begin), 0.0, 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + ops.cos(math.pi * frac))

    def lowest(self) -> float:
        return min(self.start, self.end)

    def get_config(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "begin": self.begin,
            "stop": self.stop,
            "unit": self.unit,
        }

    def __repr__(self) -> str:
        return f"Cosine({self.start} -> {self.end} over {self.unit}s {self.begin}..{self.stop})"


@keras.saving.register_keras_serializable(package="lossplug")
class FromCallable(Schedule):
    """Any Python function of the epoch, evaluated at the start of every epoch.

    The value reaches the compiled step through a variable, so nothing retraces.
    """

    in_graph = False

    def __init__(self, fn: Callable[[int], float]) -> None:
        if not callable(fn):
            raise PluginConfigError(f"FromCallable needs a callable of the epoch, got {fn!r}")
        self.fn = fn
        self.unit = "epoch"

    def __call__(self, t: Any) -> Any:
        return ops.cast(self.fn(int(ops.convert_to_numpy(t))), "float32")

    def value_at(self, t: int) -> float:
        name = getattr(self.fn, "__name__", repr(self.fn))
        raw = self.fn(int(t))
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise PluginConfigError(
                f"the weight schedule {name!r} returned {raw!r} at epoch {t}; a schedule "
                "must return a number"
            ) from None
        if not math.isfinite(value):
            raise PluginConfigError(
                f"the weight schedule {name!r} returned {value} at epoch {t}; a term weight "
                "must be finite"
            )
        return value

    def check_saveable(self) -> None:
        """Raise :class:`lossplug.PluginConfigError` if the function cannot be saved."""
        self.get_config()

    def get_config(self) -> dict[str, Any]:
        is_lambda = getattr(self.fn, "__name__", "") == "<lambda>"
        serialized = None if is_lambda else keras.saving.serialize_keras_object(self.fn)
        if not isinstance(serialized, dict) or serialized.get("class_name") != "function":
            raise PluginConfigError(
                f"cannot save the schedule function {self.fn!r}: only functions registered "
                "with @keras.saving.register_keras_serializable() can be saved with safe_mode "
                "on. Register it, or use a built-in schedule (LinearRamp, Step, Cosine)."
            )
        return {"fn": serialized}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FromCallable:
        return cls(keras.saving.deserialize_keras_object(config["fn"]))

    def __repr__(self) -> str:
        return f"FromCallable({getattr(self.fn, '__name__', self.fn)!r})"


def as_schedule(weight: Any) -> Schedule:
    """Turn a number, a schedule or a callable of the epoch into a :class:`Schedule`."""
    if isinstance(weight, Schedule):
        return weight
    if isinstance(weight, bool):
        raise PluginConfigError(f"a term weight must be a number or a schedule, got {weight!r}")
    if isinstance(weight, int | float):
        if not math.isfinite(weight):
            raise PluginConfigError(f"a term weight must be finite, got {weight!r}")
        return Constant(weight)
    if callable(weight):
        return FromCallable(weight)
    raise PluginConfigError(
        f"a term weight must be a number, a lossplug.schedules.Schedule or a callable of the "
        f"epoch, got {type(weight).__name__}"
    )


__all__ = ["Constant", "Cosine", "FromCallable", "LinearRamp", "Schedule", "Step", "as_schedule"]

"""Mathematical properties a plugin can claim in its spec.

Claims are data: the conformance kit (:mod:`lossplug.testing`) turns each into
a Hypothesis property over generated inputs and checks it. Callables inside
claims receive and return an :class:`Example` of NumPy arrays, so they are
easy to write and never import TensorFlow at registration time.

Every claim takes a keyword ``at={parameter: value}``: the Config values at which
it holds. The kit then draws configs with those fields fixed (the others vary
over their declared ranges); empty (the default) means at every valid config.

Example::

    properties = (
        NonNegative(),
        ReducesTo(
            "categorical cross-entropy",
            reference=lambda ex: cce(ex.inputs["y_true"], ex.outputs["y_pred"]),
            at={"epsilon": 0.0},
        ),
        Bounded(0.0, 1.0, at={"bce_weight": 0.0}),
    )
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs


@attrs.frozen
class Example:
    """One concrete call of a plugin: NumPy arrays by name, the config and the state.

    ``state`` maps the names of the variables the plugin created through
    ``extras.state`` to their current values.
    """

    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    config: Any
    state: Mapping[str, Any] = attrs.field(factory=dict)

    def replace(self, **changes: Any) -> Example:
        return attrs.evolve(self, **changes)

    def with_tensor(self, name: str, value: Any) -> Example:
        """A copy with the tensor ``name`` (looked up in outputs, then inputs) replaced."""
        if name in self.outputs:
            return attrs.evolve(self, outputs={**self.outputs, name: value})
        if name in self.inputs:
            return attrs.evolve(self, inputs={**self.inputs, name: value})
        raise KeyError(name)

    def tensor(self, name: str) -> Any:
        if name in self.outputs:
            return self.outputs[name]
        return self.inputs[name]


def _check_at(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            f"{type(instance).__name__}(at=...) must map Config field names to values, "
            f"e.g. at={{'gamma': 0.0}}; got {value!r}"
        )


def at_field() -> Any:
    """The ``at`` field of a claim: keyword-only, a mapping of Config field -> value."""
    return attrs.field(factory=dict, kw_only=True, validator=_check_at)


class Property:
    """Base class of every claim. Subclasses are attrs classes with a ``describe()``.

    Every claim has ``at``: the Config field values at which it holds (empty:
    at every config the kit draws).
    """

    #: short identifier used in reports and test ids
    key: str = "property"
    at: Mapping[str, Any] = MappingProxyType({})

    def where(self) -> str:
        """`` at gamma=0.0, mode='mining'`` for a claim restricted by ``at`` ('' otherwise)."""
        text = ", ".join(f"{k}={v!r}" for k, v in self.at.items())
        return f" at {text}" if text else ""

    def describe(self) -> str:
        return self.key + self.where()


@attrs.frozen
class NonNegative(Property):
    """loss >= 0 for every valid input."""

    key = "non_negative"
    atol: float = 0.0
    at: Mapping[str, Any] = at_field()

    def describe(self) -> str:
        return "loss >= 0" + self.where()


@attrs.frozen
class ZeroAtPerfect(Property):
    """The loss is ``value`` (0 by default) at a perfect prediction.

    ``perfect`` turns a generated example into a perfect one (for instance
    one-hot targets turned into very confident logits, features moved onto
    their class centres). With ``minimal=True`` the claim is instead that no
    other prediction for the same targets has a smaller loss.
    """

    key = "zero_at_perfect"
    perfect: Callable[[Example], Example]
    value: float = 0.0
    atol: float = 1e-4
    minimal: bool = False
    description: str = "a perfect prediction"
    at: Mapping[str, Any] = at_field()

    def describe(self) -> str:
        where = f" ({self.where().strip()})" if self.at else ""
        if self.minimal:
            return f"loss is minimal at {self.description}{where}"
        return f"loss == {self.value} at {self.description}{where}"


@attrs.frozen
class Bounded(Property):
    """low <= loss <= high."""

    key = "bounded"
    low: float | None = None
    high: float | None = None
    atol: float = 1e-6
    at: Mapping[str, Any] = at_field()

    def describe(self) -> str:
        low = self.low if self.low is not None else "-inf"
        high = self.high if self.high is not None else "inf"
        return f"{low} <= loss <= {high}{self.where()}"


@attrs.frozen
class ReducesTo(Property):
    """At the parameter values ``at``, the loss equals ``reference(example)`` per sample.

    ``reference`` returns per-sample values (NumPy or tensors) of the named
    loss, e.g. Keras' categorical cross-entropy.
    """

    key = "reduces_to"
    name: str
    reference: Callable[[Example], Any]
    # positional (third) for compatibility; the other claims take ``at`` by keyword only
    at: Mapping[str, Any] = attrs.field(factory=dict, validator=_check_at)
    rtol: float = 1e-4
    atol: float = 1e-5

    def describe(self) -> str:
        return f"equals {self.name}{self.where()}"


@attrs.frozen
class Symmetric(Property):
    """Swapping the tensors ``first`` and ``second`` leaves the loss unchanged."""

    key = "symmetric"
    first: str
    second: str
    rtol: float = 1e-4
    atol: float = 1e-6
    at: Mapping[str, Any] = at_field()

    def describe(self) -> str:
        return f"symmetric in {self.first} and {self.second}{self.where()}"


@attrs.frozen
class ScaleInvariant(Property):
    """Multiplying the tensor ``tensor`` by any factor in [low, high] leaves the loss unchanged."""

    key = "scale_invariant"
    tensor: str
    low: float = 0.1
    high: float = 10.0
    rtol: float = 1e-3
    atol: float = 1e-5
    at: Mapping[str, Any] = at_field()

    def describe(self) -> str:
        return f"invariant to scaling {self.tensor} by [{self.low}, {self.high}]{self.where()}"


@attrs.frozen
class Monotone(Property):
    """The loss is non-increasing (or non-decreasing) in the parameter ``parameter``.

    ``values`` are the parameter values compared, in increasing order; ``at``
    fixes other parameters (not ``parameter`` itself).
    """

    key = "monotone"
    parameter: str
    values: tuple[Any, ...] = attrs.field(converter=tuple)
    increasing: bool = False
    atol: float = 1e-6
    at: Mapping[str, Any] = at_field()

    def __attrs_post_init__(self) -> None:
        if self.parameter in self.at:
            raise ValueError(
                f"Monotone({self.parameter!r}) varies {self.parameter!r} over {self.values!r}; "
                f"it cannot also be fixed by at={dict(self.at)!r} (at fixes the other parameters)"
            )

    def describe(self) -> str:
        direction = "non-decreasing" if self.increasing else "non-increasing"
        return f"loss is {direction} in {self.parameter}{self.where()}"


@attrs.frozen
class Custom(Property):
    """A plugin's own claim: ``check(example, loss_fn)`` raises AssertionError when it fails.

    ``loss_fn(example)`` returns the per-sample (or scalar) loss as a NumPy array.
    With ``at``, the examples the kit passes have those Config fields fixed.
    """

    key = "custom"
    name: str
    check: Callable[[Example, Callable[[Example], Any]], None]
    description: str = ""
    at: Mapping[str, Any] = at_field()

    def describe(self) -> str:
        return (self.description or self.name) + self.where()

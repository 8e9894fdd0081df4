"""Mathematical properties a plugin can claim in its spec.

Claims are data: the conformance kit (:mod:`lossplug.testing`) turns each into
a Hypothesis property over generated inputs and checks it. Callables inside
claims receive and return an :class:`Example` of NumPy arrays, so they are
easy to write and never import TensorFlow at registration time.

Example::

    properties = (
        NonNegative(),
        ReducesTo(
            "categorical cross-entropy",
            reference=lambda ex: cce(ex.inputs["y_true"], ex.outputs["y_pred"]),
            at={"epsilon": 0.0},
        ),
    )
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


class Property:
    """Base class of every claim. Subclasses are attrs classes with a ``describe()``."""

    #: short identifier used in reports and test ids
    key: str = "property"

    def describe(self) -> str:
        return self.key


@attrs.frozen
class NonNegative(Property):
    """loss >= 0 for every valid input."""

    key = "non_negative"
    atol: float = 0.0

    def describe(self) -> str:
        return "loss >= 0"


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

    def describe(self) -> str:
        if self.minimal:
            return f"loss is minimal at {self.description}"
        return f"loss == {self.value} at {self.description}"


@attrs.frozen
class Bounded(Property):
    """low <= loss <= high."""

    key = "bounded"
    low: float | None = None
    high: float | None = None
    atol: float = 1e-6

    def describe(self) -> str:
        return f"{self.low if self.low is not None else '-inf'} <= loss <= " + (
            f"{self.high if self.high is not None else 'inf'}"
        )


@attrs.frozen
class ReducesTo(Property):
    """At the parameter values ``at``, the loss equals ``reference(example)`` per sample.

    ``reference`` returns per-sample values (NumPy or tensors) of the named
    loss, e.g. Keras' categorical cross-entropy.
    """

    key = "reduces_to"
    name: str
    reference: Callable[[Example], Any]
    at: Mapping[str, Any] = attrs.field(factory=dict)
    rtol: float = 1e-4
    atol: float = 1e-5

    def describe(self) -> str:
        where = ", ".join(f"{k}={v!r}" for k, v in self.at.items())
        return f"equals {self.name}" + (f" at {where}" if where else "")


@attrs.frozen
class Symmetric(Property):
    """Swapping the tensors ``first`` and ``second`` leaves the loss unchanged."""

    key = "symmetric"
    first: str
    second: str
    rtol: float = 1e-4
    atol: float = 1e-6

    def describe(self) -> str:
        return f"symmetric in {self.first} and {self.second}"


@attrs.frozen
class ScaleInvariant(Property):
    """Multiplying the tensor ``tensor`` by any factor in [low, high] leaves the loss unchanged."""

    key = "scale_invariant"
    tensor: str
    low: float = 0.1
    high: float = 10.0
    rtol: float = 1e-3
    atol: float = 1e-5

    def describe(self) -> str:
        return f"invariant to scaling {self.tensor} by [{self.low}, {self.high}]"


@attrs.frozen
class Monotone(Property):
    """The loss is non-increasing (or non-decreasing) in the parameter ``parameter``.

    ``values`` are the parameter values compared, in increasing order.
    """

    key = "monotone"
    parameter: str
    values: tuple[Any, ...] = attrs.field(converter=tuple)
    increasing: bool = False
    atol: float = 1e-6

    def describe(self) -> str:
        direction = "non-decreasing" if self.increasing else "non-increasing"
        return f"loss is {direction} in {self.parameter}"


@attrs.frozen
class Custom(Property):
    """A plugin's own claim: ``check(example, loss_fn)`` raises AssertionError when it fails.

    ``loss_fn(example)`` returns the per-sample (or scalar) loss as a NumPy array.
    """

    key = "custom"
    name: str
    check: Callable[[Example, Callable[[Example], Any]], None]
    description: str = ""

    def describe(self) -> str:
        return self.description or self.name

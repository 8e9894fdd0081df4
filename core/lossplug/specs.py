"""The data types of the plugin contract: what a plugin declares and returns.

Everything here is an attrs class, frozen and validated, and imports neither
TensorFlow nor Keras, so the registry and the command line stay cheap.
"""

from __future__ import annotations

import enum
import keyword
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import attrs

from ._version import API_VERSION
from .errors import InvalidSpecError, PluginConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Names Keras already gives a meaning in ``compile(loss=...)``; a plugin may not
#: shadow them, so that ``loss="mse"`` always means Keras' mean squared error.
KERAS_LOSS_NAMES = frozenset(
    {
        "binary_crossentropy",
        "binary_focal_crossentropy",
        "categorical_crossentropy",
        "categorical_focal_crossentropy",
        "categorical_hinge",
        "circle",
        "cosine_similarity",
        "ctc",
        "dice",
        "hinge",
        "huber",
        "kl_divergence",
        "kld",
        "kullback_leibler_divergence",
        "log_cosh",
        "logcosh",
        "mae",
        "mape",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_error",
        "mean_squared_logarithmic_error",
        "mse",
        "msle",
        "poisson",
        "sparse_categorical_crossentropy",
        "squared_hinge",
        "tversky",
    }
)
# ``dice`` is a Keras loss name too, but our ``dice`` plugin is a superset
# (multi-class, optional BCE term); a plugin may shadow a name only if it is
# listed here, which keeps the exception visible and deliberate.
SHADOWABLE_KERAS_NAMES = frozenset({"dice", "tversky"})


class Kind(enum.StrEnum):
    """What a tensor holds. The conformance kit generates data from the kind."""

    LOGITS = "logits"  #: unnormalised class scores, shape (B, C)
    PROBABILITIES = "probabilities"  #: rows on the simplex, shape (B, C)
    ONE_HOT = "one_hot"  #: one-hot (or soft) targets, shape (B, C)
    SPARSE_LABELS = "sparse_labels"  #: integer class ids, shape (B,)
    LABELS = "labels"  #: sparse or one-hot targets; the plugin accepts both
    BINARY_LABELS = "binary_labels"  #: 0/1 targets, any shape
    EMBEDDINGS = "embeddings"  #: real vectors, shape (B, D)
    IMAGES = "images"  #: real values in [0, 1], shape (B, H, W, C) or (B, N)
    MASKS = "masks"  #: values in [0, 1], shape (B, H, W, C)
    REAL = "real"  #: unconstrained real values, any shape
    ANY = "any"  #: anything; the plugin documents it

    def __str__(self) -> str:
        return self.value


class Source(enum.StrEnum):
    """Which mapping of ``build_loss_graph`` a tensor is read from."""

    INPUTS = "inputs"
    OUTPUTS = "outputs"

    def __str__(self) -> str:
        return self.value


def _check_identifier(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise InvalidSpecError(
            f"{type(instance).__name__}.{attribute.name} must be a Python identifier, got {value!r}"
        )


@attrs.frozen
class TensorSpec:
    """A tensor a plugin reads.

    Attributes:
        name: the key the plugin reads it under (``inputs[name]`` or
            ``outputs[name]``); users bind it to their model's names.
        kind: what the tensor holds (:class:`Kind`).
        source: ``"inputs"`` (model inputs and targets) or ``"outputs"``
            (predictions and exposed layers).
        shape: symbolic shape, one entry per axis: an ``int``, or a name shared
            between tensors (``"B"`` is the batch, ``"C"`` classes...). A name
            equal to a ``Config`` field means "this axis has that many entries".
            ``None`` means "any shape" (the kit uses the kind's usual shape).
        classes: for label kinds, the symbol or ``Config`` field bounding the
            class ids (``"C"`` or ``"num_classes"``).
        optional: the plugin works without it (for example ``y_true`` for a
            self-supervised loss).
        description: one line for ``lossplug info``.
        from_logits: for a tensor of kind ``logits``: the name of the plugin's bool
            ``Config`` field that says whether it holds logits (``True``) or
            probabilities (``False``). The core uses it to warn when a model output
            ends in a softmax/sigmoid but the config says logits (or the reverse).
    """

    name: str = attrs.field(validator=_check_identifier)
    kind: Kind = attrs.field(converter=Kind)
    source: Source = attrs.field(converter=Source, default=Source.OUTPUTS)
    shape: tuple[int | str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    classes: str | None = None
    optional: bool = False
    description: str = ""
    from_logits: str | None = None


def mask_tensors(
    prediction: str = "predicted probabilities (sigmoid or softmax outputs)",
    kind: Kind | str = Kind.MASKS,
) -> tuple[TensorSpec, TensorSpec]:
    """The tensors of a segmentation loss: ``y_true`` and ``y_pred``, masks (B, H, W, C).

    ``y_true`` (from the inputs) holds the target masks, channels last: one-hot over C
    classes (C = 1 for a binary mask) or class ids (B, H, W), the layouts
    :func:`lossplug.numerics.segmentation_masks` reads. ``y_pred`` (a model output) holds
    the predictions, described by ``prediction``: by default probabilities in [0, 1] (kind
    ``masks``); a loss on logits passes ``kind=Kind.REAL`` and says so. Use it as
    ``PluginSpec(..., tensors=mask_tensors())``.
    """
    shape = ("B", "H", "W", "C")
    return (
        TensorSpec(
            "y_true",
            Kind.MASKS,
            source=Source.INPUTS,
            shape=shape,
            description="target masks (one-hot over C classes, C = 1 for binary; or class ids "
            "(B, H, W))",
        ),
        TensorSpec("y_pred", kind, shape=shape, description=prediction),
    )


def param(
    default: Any = attrs.NOTHING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    choices: tuple[Any, ...] | None = None,
    kind: type | tuple[type, ...] | None = None,
    doc: str = "",
    neutral: Any = attrs.NOTHING,
) -> Any:
    """Declare one hyper-parameter of a plugin's ``Config``.

    Returns an ``attrs.field`` whose validators enforce the type, range and
    choices, and whose metadata tells the conformance kit and ``lossplug info``
    the rules. ``neutral`` records a value at which the parameter has no effect
    (for documentation and the kit's reduces-to checks).

    Example::

        @attrs.frozen
        class Config:
            epsilon: float = lossplug.param(0.1, low=0.0, high=1.0, high_inclusive=False,
                                            doc="smoothing mass spread over the classes")
    """
    validators: list[Any] = []
    if kind is None and default is not attrs.NOTHING and default is not None:
        kind = (int, float) if isinstance(default, float) else type(default)
    if kind is bool:
        kind = (bool,)
    if kind is not None:
        validators.append(_TypeRule(kind if isinstance(kind, tuple) else (kind,)))
    if choices is not None:
        validators.append(_ChoiceRule(tuple(choices)))
    if low is not None or high is not None:
        validators.append(_RangeRule(low, high, low_inclusive, high_inclusive))
    metadata = {
        "lossplug": {
            "low": low,
            "high": high,
            "low_inclusive": low_inclusive,
            "high_inclusive": high_inclusive,
            "choices": tuple(choices) if choices is not None else None,
            "doc": doc,
            "neutral": neutral,
        }
    }
    return attrs.field(default=default, validator=validators, metadata=metadata)


@attrs.frozen
class _TypeRule:
    types: tuple[type, ...]

    def describe(self) -> str:
        return " or ".join(t.__name__ for t in self.types)

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        ok = isinstance(value, self.types)
        if ok and bool not in self.types and isinstance(value, bool):
            ok = False  # True is an int in Python, never a valid number of classes
        if not ok:
            raise PluginConfigError(f"must be {self.describe()}, got {type(value).__name__}")


@attrs.frozen
class _ChoiceRule:
    choices: tuple[Any, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in self.choices:
            raise PluginConfigError(f"must be {self.describe()}")


@attrs.frozen
class _RangeRule:
    low: float | None
    high: float | None
    low_inclusive: bool
    high_inclusive: bool

    def describe(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        low = "-inf" if self.low is None else repr(self.low)
        high = "inf" if self.high is None else repr(self.high)
        return f"in {left}{low}, {high}{right}"

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        try:
            below = self.low is not None and (
                value < self.low or (value == self.low and not self.low_inclusive)
            )
            above = self.high is not None and (
                value > self.high or (value == self.high and not self.high_inclusive)
            )
        except TypeError:
            raise PluginConfigError(f"must be a number {self.describe()}") from None
        if below or above or value != value:  # value != value catches NaN
            raise PluginConfigError(f"must be {self.describe()}")


def describe_rules(field: attrs.Attribute) -> str:
    """Human-readable rules of one Config field, for errors and ``lossplug info``."""
    validator = field.validator
    rules = getattr(validator, "_validators", None)
    if rules is None:
        rules = () if validator is None else (validator,)
    parts = [r.describe() for r in rules if hasattr(r, "describe")]
    return "; ".join(parts) if parts else "any value"


def _check_config_class(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, type) and attrs.has(value)):
        raise InvalidSpecError(
            f"plugin spec {instance_name(instance)!r}: config must be an attrs class "
            f"(decorate it with @attrs.frozen), got {value!r}"
        )
    for field in attrs.fields(value):
        if field.default is attrs.NOTHING:
            raise InvalidSpecError(
                f"plugin spec {instance_name(instance)!r}: Config field {field.name!r} has no "
                "default; every hyper-parameter needs one so that the loss works by name alone"
            )


def instance_name(instance: Any) -> str:
    return getattr(instance, "name", "?")


def _check_name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidSpecError(
            f"plugin name {value!r} is invalid: use lower case letters, digits and "
            "underscores, starting with a letter (e.g. 'label_smoothing')"
        )
    if value in KERAS_LOSS_NAMES and value not in SHADOWABLE_KERAS_NAMES:
        raise InvalidSpecError(
            f"plugin name {value!r} is a Keras built-in loss name; choose another name so "
            f"that compile(loss={value!r}) keeps meaning Keras' loss"
        )


def _check_description(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
        raise InvalidSpecError(
            f"plugin spec {instance_name(instance)!r}: description must be one non-empty line"
        )


def _check_tensors(instance: Any, attribute: attrs.Attribute, value: tuple) -> None:
    seen: set[tuple[str, str]] = set()
    for tensor in value:
        if not isinstance(tensor, TensorSpec):
            raise InvalidSpecError(
                f"plugin spec {instance_name(instance)!r}: tensors must be TensorSpec "
                f"instances, got {tensor!r}"
            )
        key = (tensor.source.value, tensor.name)
        if key in seen:
            raise InvalidSpecError(
                f"plugin spec {instance_name(instance)!r}: tensor {tensor.name!r} is declared "
                f"twice in {tensor.source.value}"
            )
        seen.add(key)


def _check_properties(instance: Any, attribute: attrs.Attribute, value: tuple) -> None:
    from .properties import Property

    for prop in value:
        if not isinstance(prop, Property):
            raise InvalidSpecError(
                f"plugin spec {instance_name(instance)!r}: properties must be "
                f"lossplug.properties.Property instances, got {prop!r}"
            )


def _check_backends(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    known = ("tensorflow", "jax", "torch")
    if value is not None and (not value or any(b not in known for b in value)):
        raise InvalidSpecError(
            f"plugin spec {instance_name(instance)!r}: backends must be None (every backend) "
            f"or a non-empty tuple of {known}, got {value!r}"
        )


def _check_api_version(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidSpecError(
            f"plugin spec {instance_name(instance)!r}: api_version must be a positive int, "
            f"got {value!r}"
        )


@attrs.frozen
class PluginSpec:
    """Everything a plugin declares about itself.

    Attributes:
        name: the loss name users write in ``compile``.
        description: one line for ``lossplug list``.
        config: an attrs class (frozen) with a default for every field; its
            validators reject bad hyper-parameters. Use :func:`param`.
        tensors: the :class:`TensorSpec` the plugin reads.
        properties: the mathematical properties it claims, checked by the
            conformance kit (:mod:`lossplug.properties`).
        batch_coupled: one sample's loss depends on the others (in-batch
            mining); the kit then skips the per-sample independence check.
        returns: ``"per_sample"``, ``"scalar"`` or ``"metrics"`` (no loss).
        api_version: the plugin API the plugin was built for.
        backends: the Keras backends the plugin supports (``("tensorflow", "jax",
            "torch")`` or a subset); ``None`` (the default) means every backend, which a
            plugin written in ``keras.ops`` gets. Using the plugin on another backend is
            an :class:`lossplug.UnsupportedBackendError` naming both.
    """

    name: str = attrs.field(validator=_check_name)
    description: str = attrs.field(validator=_check_description)
    config: type = attrs.field(validator=_check_config_class)
    tensors: tuple[TensorSpec, ...] = attrs.field(converter=tuple, validator=_check_tensors)
    properties: tuple[Any, ...] = attrs.field(
        factory=tuple, converter=tuple, validator=_check_properties
    )
    batch_coupled: bool = False
    returns: str = attrs.field(
        default="per_sample", validator=attrs.validators.in_(("per_sample", "scalar", "metrics"))
    )
    api_version: int = attrs.field(default=API_VERSION, validator=_check_api_version)
    backends: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple), validator=_check_backends
    )

    def __attrs_post_init__(self) -> None:
        fields = {f.name for f in attrs.fields(self.config)}
        for tensor in self.tensors:
            if tensor.from_logits is not None and tensor.from_logits not in fields:
                raise InvalidSpecError(
                    f"plugin spec {self.name!r}: tensor {tensor.name!r} says "
                    f"from_logits={tensor.from_logits!r}, which is not a field of its Config "
                    f"(fields: {', '.join(sorted(fields)) or '(none)'})"
                )

    def kind_of(self, tensor: TensorSpec, config: Any) -> Kind:
        """The kind ``tensor`` has under ``config`` (``from_logits=False``: probabilities)."""
        says_probabilities = (
            tensor.from_logits is not None
            and config is not None
            and not getattr(config, tensor.from_logits, True)
        )
        if says_probabilities and tensor.kind == Kind.LOGITS:
            return Kind.PROBABILITIES
        return tensor.kind

    def tensor(self, name: str) -> TensorSpec:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def make_config(self, values: Mapping[str, Any] | None = None) -> Any:
        """Validate ``values`` into a ``Config`` instance, with errors naming the field."""
        return make_config(self, values or {})


def make_config(spec: PluginSpec, values: Mapping[str, Any]) -> Any:
    """Build ``spec.config(**values)``; every failure names the plugin, field, value and rule."""
    fields = {f.name: f for f in attrs.fields(spec.config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "(none)"
        raise PluginConfigError(
            f"plugin {spec.name!r} has no parameter {unknown[0]!r}; its parameters are: {known}"
        )
    values = dict(values)
    for key, value in values.items():
        field = fields[key]
        if isinstance(value, list) and isinstance(field.default, tuple):
            # JSON (saved models, Term configs) has no tuples: restore them.
            value = values[key] = tuple(value)
        if field.validator is None:
            continue
        try:
            field.validator(None, field, value)
        except (PluginConfigError, TypeError, ValueError) as exc:
            raise PluginConfigError(
                f"plugin {spec.name!r}: parameter {key}={value!r} is invalid: {exc} "
                f"(rule: {describe_rules(field)})"
            ) from None
    try:
        return spec.config(**values)
    except (PluginConfigError, TypeError, ValueError) as exc:
        # Cross-field validation (an attrs __attrs_post_init__) ends up here.
        raise PluginConfigError(f"plugin {spec.name!r}: invalid configuration: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON-friendly dict of a Config instance (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(config).items()}


_NO_METRICS: Mapping[str, Any] = MappingProxyType({})


class Metric(NamedTuple):
    """A named metric a plugin returns next to its loss.

    ``aggregation="mean"`` averages over the epoch (weighted by batch size);
    ``"sum"`` accumulates a total that is reset at each epoch (counts). The core
    refuses any other value, naming the plugin.

    A named tuple (immutable), like :class:`LossResult`: plugins build them inside
    compiled steps, which every backend's tracer follows.
    """

    value: Any
    aggregation: str = "mean"


class LossResult(NamedTuple):
    """What ``build_loss_graph`` returns.

    Attributes:
        loss: per-sample losses (shape ``(batch, ...)``), a scalar already
            reduced over the batch, or ``None`` for metric-only plugins.
        metrics: named values shown in the progress bar and ``History`` as
            ``<term>_<metric>``; a tensor or a :class:`Metric`.
    """

    loss: Any = None
    metrics: Mapping[str, Any] = _NO_METRICS

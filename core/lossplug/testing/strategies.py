"""Hypothesis strategies derived from a plugin's spec.

:func:`examples` draws :class:`lossplug.properties.Example` objects whose
tensors have consistent symbolic shapes and data that fit their kind;
:func:`configs` draws ``Config`` instances from the ranges and choices the
plugin declared with :func:`lossplug.param`.

Shapes: every axis of a :class:`lossplug.TensorSpec` shape is an ``int`` or a
symbol shared between tensors. ``"B"`` is the batch (``batch_sizes``, 1
included by default), ``"C"`` the classes (2 to 5), ``"D"`` feature
dimensions (1 to 6), a ``Config`` field name takes that field's value, and any
other symbol (``"H"``, ``"W"``, ``"T"`` ...) is 1 to 4. Label kinds draw class
ids below the tensor's ``classes`` symbol (``"C"`` by default).

Data per kind (typical / ``extremes=True``):

===================  ===========================  ====================================
kind                 typical                      extremes
===================  ===========================  ====================================
logits               uniform in [-20, 20]         +-1e4 and 0 mixed with any value
probabilities        rows on the simplex, > 0     rows with exact 0 and 1 entries
one_hot, labels      one-hot / ids in [0, C)      often all labels equal
binary_labels        0 / 1                        0 / 1, often all equal
embeddings           uniform in [-10, 10]         rows of norm 0 (zero rows), 1e-6,
                                                  1 or 1e4
images, masks        uniform in [0, 1]            exactly 0 or 1
                     (target masks: 0 / 1)
real, any            uniform in [-10, 10]         +-1e4 and 0 mixed with any value
===================  ===========================  ====================================

Authors pass their own strategies for special inputs, for example::

    from hypothesis import strategies as st
    from lossplug.testing import conformance_tests, strategies

    spec = lossplug.registry.spec("my_loss")
    test_conformance = conformance_tests(
        "my_loss", config_strategy=strategies.configs(spec, margin=st.floats(0.1, 0.5))
    )
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..errors import PluginConfigError
from ..properties import Example
from ..specs import Kind, PluginSpec, Source, TensorSpec, make_config
from ._data import np_dtype, resolved_shape

#: Default ranges of the symbolic dimensions (inclusive).
DIM_RANGES: dict[str, tuple[int, int]] = {"C": (2, 5), "D": (1, 6)}
OTHER_DIM_RANGE = (1, 4)
#: Largest value drawn for an int Config field used as a dimension (keeps arrays small).
DIM_FIELD_SPAN = 4

LOGIT_RANGE = 20.0
REAL_RANGE = 10.0
EXTREME = 1e4
#: Row norms of extreme embeddings: zero and near-zero rows (where a normalisation
#: x / ||x|| has its singular point) among tiny, unit and huge ones.
EMBEDDING_NORMS = (0.0, 1e-6, 1.0, 1e4)
#: Rows of typical embeddings have at least this norm (smaller ones are extremes).
MIN_TYPICAL_NORM = 0.1

_FLOATS = dict(allow_nan=False, allow_infinity=False, allow_subnormal=False)


# ----------------------------------------------------------------------- configs
def _dimension_fields(spec: PluginSpec) -> set[str]:
    """Config fields used as a tensor dimension or a label range."""
    names = {f.name for f in attrs.fields(spec.config)}
    used: set[str] = set()
    for tensor in spec.tensors:
        for axis in resolved_shape(tensor):
            if isinstance(axis, str) and axis in names:
                used.add(axis)
        if tensor.classes in names:
            used.add(tensor.classes)
    return used


def _number_strategy(field: attrs.Attribute, meta: Mapping[str, Any], as_dim: bool) -> Any:
    default = field.default
    low, high = meta.get("low"), meta.get("high")
    low_inc, high_inc = meta.get("low_inclusive", True), meta.get("high_inclusive", True)
    is_int = isinstance(default, int) and not isinstance(default, bool)
    if is_int:
        lo = low if low is not None else default
        if low is not None and not low_inc:
            lo = math.floor(low) + 1
        lo = math.ceil(lo)
        if as_dim:
            lo = max(lo, 1)
        hi = high if high is not None else max(lo, default) + (DIM_FIELD_SPAN if as_dim else 8)
        if high is not None and not high_inc:
            hi = math.ceil(high) - 1
        hi = math.floor(hi)
        if as_dim:
            hi = min(hi, lo + DIM_FIELD_SPAN)
        if hi < lo:
            return st.just(default)
        inner = st.integers(int(lo), int(hi))
        if as_dim and not (lo <= default <= hi):
            return inner
        return st.one_of(st.just(default), inner)
    # floats
    default_f = float(default)
    lo = float(low) if low is not None else min(default_f, 0.0)
    hi = float(high) if high is not None else max(default_f, lo) * 4.0 + 1.0
    if hi < lo or (hi == lo and not (low_inc and high_inc)):
        return st.just(default)
    inner = st.floats(
        lo,
        hi,
        exclude_min=low is not None and not low_inc,
        exclude_max=high is not None and not high_inc,
        **_FLOATS,
    )
    return st.one_of(st.just(default), inner)


def field_strategy(spec: PluginSpec, field: attrs.Attribute) -> Any:
    """The strategy for one Config field, from its :func:`lossplug.param` metadata."""
    meta = field.metadata.get("lossplug", {})
    default = field.default
    choices = meta.get("choices")
    if choices:
        ordered = (
            [default, *[c for c in choices if c != default]]
            if default in choices
            else list(choices)
        )
        return st.sampled_from(ordered)
    if isinstance(default, bool):
        return st.sampled_from([default, not default])
    if isinstance(default, int | float):
        return _number_strategy(field, meta, field.name in _dimension_fields(spec))
    return st.just(default)


def configs(spec: PluginSpec, **fixed: Any) -> Any:
    """Strategy of valid ``spec.config`` instances.

    Each field is drawn from its declared choices or range (shrinking towards
    the default); fields without a range keep values near their default. A
    keyword fixes a field to a value, or to a strategy of values. Combinations
    the Config rejects (cross-field validation) are filtered out.
    """
    fields = attrs.fields(spec.config)
    known = {f.name for f in fields}
    unknown = sorted(set(fixed) - known)
    if unknown:
        raise PluginConfigError(
            f"plugin {spec.name!r} has no parameter {unknown[0]!r}; its parameters are: "
            f"{', '.join(sorted(known)) or '(none)'}"
        )
    parts = {}
    for field in fields:
        if not field.init:
            continue
        if field.name in fixed:
            value = fixed[field.name]
            parts[field.name] = value if isinstance(value, st.SearchStrategy) else st.just(value)
        else:
            parts[field.name] = field_strategy(spec, field)

    @st.composite
    def build(draw: Any) -> Any:
        values = {name: draw(strategy) for name, strategy in parts.items()}
        try:
            return make_config(spec, values)
        except PluginConfigError:
            assume(False)

    return build()


# ----------------------------------------------------------------------- examples
def _floats_array(shape: tuple[int, ...], elements: Any) -> Any:
    return hnp.arrays(np.float64, shape, elements=elements)


def _label_array(draw: Any, shape: tuple[int, ...], classes: int, labels: str) -> np.ndarray:
    """Integer class ids in [0, classes) with the requested pattern."""
    size = int(np.prod(shape, dtype=np.int64))
    if labels == "equal":
        value = draw(st.integers(0, classes - 1))
        return np.full(shape, value, dtype=np.int32)
    if labels == "distinct":
        assume(size <= classes)
        perm = draw(st.permutations(list(range(classes))))
        return np.asarray(perm[:size], dtype=np.int32).reshape(shape)
    values = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, classes - 1)))
    return np.asarray(values, dtype=np.int32)


def _one_hot(ids: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float64)[ids]


def _probabilities(draw: Any, shape: tuple[int, ...], extremes: bool) -> np.ndarray:
    if len(shape) < 2:
        # Per-element probabilities (binary predictions), not rows of a simplex.
        elements = st.sampled_from([0.0, 1.0]) if extremes else st.floats(0.01, 0.99, **_FLOATS)
        return draw(_floats_array(shape, elements))
    if extremes:
        weights = draw(
            _floats_array(shape, st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, **_FLOATS)))
        )
    else:
        weights = draw(_floats_array(shape, st.floats(0.05, 1.0, **_FLOATS)))
    total = weights.sum(axis=-1, keepdims=True)
    empty = total[..., 0] == 0
    if np.any(empty):
        weights[empty, 0] = 1.0
        total = weights.sum(axis=-1, keepdims=True)
    return weights / total


def _embeddings(draw: Any, shape: tuple[int, ...], extremes: bool) -> np.ndarray:
    if not extremes:
        values = draw(_floats_array(shape, st.floats(-REAL_RANGE, REAL_RANGE, **_FLOATS)))
        # Typical embeddings are not (nearly) zero vectors: those are extremes.
        if values.ndim >= 2 and values.size:
            small = np.linalg.norm(values, axis=-1) < MIN_TYPICAL_NORM
            if np.any(small):
                values[small] = 0.0
                values[small, 0] = 1.0
        elif values.ndim == 1:
            values[np.abs(values) < MIN_TYPICAL_NORM] = 1.0
        return values
    if len(shape) < 2:
        signed = [s * n for n in EMBEDDING_NORMS for s in (1.0, -1.0)]
        return draw(_floats_array(shape, st.sampled_from(signed)))
    direction = draw(_floats_array(shape, st.floats(-1.0, 1.0, **_FLOATS)))
    norms_shape = (*shape[:-1], 1)
    norms = draw(_floats_array(norms_shape, st.sampled_from(EMBEDDING_NORMS)))
    length = np.linalg.norm(direction, axis=-1, keepdims=True)
    zero = length[..., 0] == 0
    if np.any(zero):
        direction[zero, 0] = 1.0
        length = np.linalg.norm(direction, axis=-1, keepdims=True)
    return direction / length * norms


def _unbounded(draw: Any, shape: tuple[int, ...], extremes: bool, scale: float) -> np.ndarray:
    if extremes:
        elements = st.one_of(
            st.sampled_from([-EXTREME, EXTREME, 0.0]), st.floats(-EXTREME, EXTREME, **_FLOATS)
        )
    else:
        elements = st.floats(-scale, scale, **_FLOATS)
    return draw(_floats_array(shape, elements))


def _unit_interval(draw: Any, shape: tuple[int, ...], extremes: bool) -> np.ndarray:
    elements = st.sampled_from([0.0, 1.0]) if extremes else st.floats(0.0, 1.0, **_FLOATS)
    return draw(_floats_array(shape, elements))


def tensor_value(
    draw: Any,
    tensor: TensorSpec,
    shape: tuple[int, ...],
    classes: int,
    *,
    extremes: bool = False,
    labels: str = "random",
) -> np.ndarray:
    """Draw one tensor of ``tensor.kind`` with the concrete ``shape`` (float64 or int32)."""
    kind = tensor.kind
    if kind == Kind.LOGITS:
        return _unbounded(draw, shape, extremes, LOGIT_RANGE)
    if kind == Kind.PROBABILITIES:
        return _probabilities(draw, shape, extremes)
    if kind in (Kind.SPARSE_LABELS, Kind.LABELS, Kind.ONE_HOT):
        one_hot = kind == Kind.ONE_HOT or (kind == Kind.LABELS and len(shape) >= 2)
        if one_hot:
            ids = _label_array(draw, shape[:-1], shape[-1], labels)
            return _one_hot(ids, shape[-1])
        return _label_array(draw, shape, classes, labels)
    if kind == Kind.BINARY_LABELS:
        if labels == "equal":
            value = draw(st.sampled_from([0.0, 1.0]))
            return np.full(shape, value, dtype=np.float64)
        return draw(_floats_array(shape, st.sampled_from([0.0, 1.0])))
    if kind == Kind.EMBEDDINGS:
        return _embeddings(draw, shape, extremes)
    if kind == Kind.MASKS and tensor.source == Source.INPUTS:
        # Target masks are binary; predicted masks (outputs) are soft, in [0, 1].
        return draw(_floats_array(shape, st.sampled_from([0.0, 1.0])))
    if kind in (Kind.IMAGES, Kind.MASKS):
        return _unit_interval(draw, shape, extremes)
    return _unbounded(draw, shape, extremes, REAL_RANGE)


def _batch_strategy(batch_sizes: Any) -> Any:
    if batch_sizes is None:
        return st.integers(1, 5)
    if isinstance(batch_sizes, st.SearchStrategy):
        return batch_sizes
    if isinstance(batch_sizes, int):
        return st.just(batch_sizes)
    return st.sampled_from(list(batch_sizes))


def examples(
    spec: PluginSpec,
    config_strategy: Any = None,
    batch_sizes: Sequence[int] | Any = None,
    dtype: Any = "float32",
    *,
    extremes: bool = False,
    labels: str | None = None,
    include_optional: bool = True,
    dims: Mapping[str, int] | None = None,
) -> Any:
    """Strategy of :class:`~lossplug.properties.Example` objects for the plugin ``spec``.

    Args:
        spec: the plugin's spec (``lossplug.registry.spec(name)``).
        config_strategy: strategy of Config instances (default :func:`configs`).
        batch_sizes: the batch sizes to draw from (a sequence, an int or a
            strategy); default 1 to 5.
        dtype: dtype of the floating-point tensors (labels are int32, one-hot
            and binary labels use ``dtype``).
        extremes: draw extreme values (see the module docstring).
        labels: ``"random"``, ``"equal"`` (every label of a tensor is one
            class) or ``"distinct"`` (no two samples share a label); default
            random, or sometimes equal when ``extremes``.
        include_optional: also draw the tensors the spec marks optional.
        dims: fixed sizes for symbolic dimensions, e.g. ``{"C": 3}``.
    """
    config_strategy = configs(spec) if config_strategy is None else config_strategy
    batch_strategy = _batch_strategy(batch_sizes)
    target = np_dtype(dtype)
    fixed_dims = dict(dims or {})
    field_names = {f.name for f in attrs.fields(spec.config)}

    @st.composite
    def build(draw: Any) -> Example:
        config = draw(config_strategy)
        sizes: dict[str, int] = dict(fixed_dims)
        if "B" not in sizes:
            sizes["B"] = draw(batch_strategy)

        def size_of(symbol: int | str) -> int:
            if isinstance(symbol, int):
                return symbol
            if symbol in sizes:
                return sizes[symbol]
            if symbol in field_names:
                value = getattr(config, symbol)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise PluginConfigError(
                        f"plugin {spec.name!r}: a tensor dimension is named after the Config "
                        f"field {symbol!r}, whose value {value!r} is not a positive int"
                    )
                sizes[symbol] = value
            else:
                low, high = DIM_RANGES.get(symbol, OTHER_DIM_RANGE)
                sizes[symbol] = draw(st.integers(low, high))
            return sizes[symbol]

        mode = labels
        if mode is None:
            mode = draw(st.sampled_from(["random", "equal"])) if extremes else "random"
        inputs: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        for tensor in spec.tensors:
            if tensor.optional and not include_optional:
                continue
            symbols = resolved_shape(tensor)
            if tensor.kind == Kind.LABELS and tensor.shape is None and draw(st.booleans()):
                symbols = (*symbols, tensor.classes or "C")  # one-hot form
            shape = tuple(size_of(s) for s in symbols)
            classes = size_of(tensor.classes or "C")
            value = tensor_value(draw, tensor, shape, classes, extremes=extremes, labels=mode)
            if value.dtype.kind == "f":
                value = value.astype(target)
            (inputs if tensor.source == Source.INPUTS else outputs)[tensor.name] = value
        return Example(inputs=inputs, outputs=outputs, config=config)

    return build()


def extreme_examples(spec: PluginSpec, **kwargs: Any) -> Any:
    """:func:`examples` with ``extremes=True``."""
    return examples(spec, extremes=True, **kwargs)


def degenerate_examples(
    spec: PluginSpec, config_strategy: Any = None, dtype: Any = "float32"
) -> Any:
    """Batches of one, batches whose labels are all equal, and batches with no shared label."""
    return st.one_of(
        examples(spec, config_strategy, batch_sizes=1, dtype=dtype),
        examples(spec, config_strategy, batch_sizes=st.integers(2, 4), dtype=dtype, labels="equal"),
        examples(spec, config_strategy, batch_sizes=2, dtype=dtype, labels="distinct"),
    )


__all__ = [
    "configs",
    "degenerate_examples",
    "examples",
    "extreme_examples",
    "field_strategy",
    "tensor_value",
]

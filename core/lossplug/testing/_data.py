"""Shapes, batches and dtypes of :class:`lossplug.properties.Example` objects.

Everything here works on NumPy arrays only; TensorFlow is not imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..properties import Example
from ..specs import Kind, PluginSpec, Source, TensorSpec

#: The shape the kit uses for a tensor whose spec gives none (``shape=None``).
DEFAULT_SHAPES: dict[Kind, tuple[str, ...]] = {
    Kind.LOGITS: ("B", "C"),
    Kind.PROBABILITIES: ("B", "C"),
    Kind.ONE_HOT: ("B", "C"),
    Kind.SPARSE_LABELS: ("B",),
    Kind.LABELS: ("B",),
    Kind.BINARY_LABELS: ("B", "C"),
    Kind.EMBEDDINGS: ("B", "D"),
    Kind.IMAGES: ("B", "H", "W", "C"),
    Kind.MASKS: ("B", "H", "W", "C"),
    Kind.REAL: ("B", "D"),
    Kind.ANY: ("B", "D"),
}

#: Kinds whose values are continuous, so that gradients with respect to them exist.
CONTINUOUS_KINDS = frozenset(
    {
        Kind.LOGITS,
        Kind.PROBABILITIES,
        Kind.EMBEDDINGS,
        Kind.IMAGES,
        Kind.MASKS,
        Kind.REAL,
        Kind.ANY,
    }
)

LABEL_KINDS = frozenset({Kind.SPARSE_LABELS, Kind.LABELS, Kind.ONE_HOT, Kind.BINARY_LABELS})


def resolved_shape(tensor: TensorSpec) -> tuple[int | str, ...]:
    """The symbolic shape of ``tensor``: the declared one, else the kind's usual shape."""
    if tensor.shape is not None:
        return tuple(tensor.shape)
    return DEFAULT_SHAPES[tensor.kind]


def is_batched(tensor: TensorSpec) -> bool:
    """Whether the first axis of ``tensor`` is the batch axis ``"B"``."""
    shape = resolved_shape(tensor)
    return bool(shape) and shape[0] == "B"


def mapping_of(example: Example, tensor: TensorSpec) -> Any:
    return example.inputs if tensor.source == Source.INPUTS else example.outputs


def present(spec: PluginSpec, example: Example) -> list[TensorSpec]:
    """The spec's tensors that ``example`` holds."""
    return [t for t in spec.tensors if t.name in mapping_of(example, t)]


def batch_size(spec: PluginSpec, example: Example) -> int:
    """The number of samples in ``example`` (the first axis of its batch-shaped tensors)."""
    for tensor in present(spec, example):
        if is_batched(tensor):
            value = np.asarray(mapping_of(example, tensor)[tensor.name])
            if value.ndim:
                return int(value.shape[0])
    return 1


def take(spec: PluginSpec, example: Example, index: Sequence[int] | np.ndarray) -> Example:
    """The samples ``index`` (in that order) of every batch-shaped tensor of ``example``."""
    index = np.asarray(index, dtype=np.int64)
    inputs = dict(example.inputs)
    outputs = dict(example.outputs)
    for tensor in present(spec, example):
        if not is_batched(tensor):
            continue
        target = inputs if tensor.source == Source.INPUTS else outputs
        target[tensor.name] = np.asarray(target[tensor.name])[index]
    return example.replace(inputs=inputs, outputs=outputs)


def is_float(value: Any) -> bool:
    dtype = np.asarray(value).dtype
    return dtype.kind == "f" or dtype.name == "bfloat16"


def np_dtype(dtype: Any) -> np.dtype:
    """A NumPy dtype from a name, also for ``"bfloat16"`` (through ml_dtypes)."""
    if str(dtype) == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def cast_floats(example: Example, dtype: Any) -> Example:
    """A copy of ``example`` with every floating-point tensor cast to ``dtype``."""
    target = np_dtype(dtype)

    def cast(mapping: Any) -> dict[str, Any]:
        return {
            k: (np.asarray(v).astype(target) if is_float(v) else np.asarray(v))
            for k, v in mapping.items()
        }

    return example.replace(inputs=cast(example.inputs), outputs=cast(example.outputs))


def float_tensors(
    spec: PluginSpec,
    example: Example,
    *,
    sources: Iterable[Source] = (Source.OUTPUTS,),
    continuous_only: bool = True,
) -> list[TensorSpec]:
    """Tensors of ``example`` holding floats, from ``sources`` (predictions by default)."""
    sources = set(sources)
    chosen = []
    for tensor in present(spec, example):
        if tensor.source not in sources:
            continue
        if continuous_only and tensor.kind not in CONTINUOUS_KINDS:
            continue
        if is_float(mapping_of(example, tensor)[tensor.name]):
            chosen.append(tensor)
    return chosen


def signature(example: Example) -> tuple[Any, ...]:
    """Dtypes and non-batch shapes of every tensor: what a compiled function is traced for."""
    parts = []
    for source, mapping in (("inputs", example.inputs), ("outputs", example.outputs)):
        for name in sorted(mapping):
            value = np.asarray(mapping[name])
            parts.append((source, name, value.dtype.name, value.shape[1:], value.ndim))
    return tuple(parts)


def max_abs(example: Example) -> float:
    """The largest magnitude among the floating-point values of ``example``."""
    largest = 0.0
    for mapping in (example.inputs, example.outputs):
        for value in mapping.values():
            if is_float(value):
                arr = np.asarray(value, dtype=np.float64)
                if arr.size:
                    largest = max(largest, float(np.max(np.abs(arr))))
    return largest


def magnitude(spec: PluginSpec, example: Example) -> float:
    """The size of the intermediate values a plugin is likely to compute from ``example``.

    ``max|x|`` over the floating-point tensors, and for embeddings and real values
    also the largest squared row norm (distances and squared errors). Rounding
    tolerances scale with it: a float32 distance of 400 is only good to ~5e-5.
    """
    largest = max_abs(example)
    for tensor in present(spec, example):
        if tensor.kind not in (Kind.EMBEDDINGS, Kind.REAL, Kind.ANY):
            continue
        value = np.asarray(mapping_of(example, tensor)[tensor.name])
        if not is_float(value) or value.size == 0:
            continue
        value = value.astype(np.float64)
        squares = np.square(value)
        rows = squares.sum(axis=-1) if value.ndim >= 2 else squares
        largest = max(largest, float(np.max(rows)))
    return largest

"""Backend-neutral helpers for a plugin's own tests: gradients and compiled functions.

A test written with ``tf.GradientTape`` or ``tf.function`` runs on TensorFlow only;
these helpers do the same on every Keras backend, through the autodiff and the
compilers the conformance kit uses (:mod:`lossplug.backend`)::

    from lossplug.testing import compiled, compiler_modes, value_and_gradients

    value, grads = value_and_gradients(lambda y_pred: my_loss(y, y_pred), {"y_pred": z})
    assert np.all(np.isfinite(grads["y_pred"]))

    for mode in compiler_modes():  # TensorFlow: "function", "jit"; JAX: "jit"; torch: "compiled"
        got = keras.ops.convert_to_numpy(compiled(my_loss, mode)(y, z))

Both run ``fn`` with 64-bit types enabled on JAX (``jax.enable_x64``, as the kit does),
so float64 NumPy inputs give float64 tensors on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from .. import backend


def value_and_gradients(
    fn: Callable[..., Any],
    tensors: Mapping[str, Any],
    *,
    wrt: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``fn(**tensors)`` and the gradients of its sum with respect to the named tensors.

    ``tensors`` maps names to NumPy arrays (or tensors); each is converted to a tensor of
    the current backend (same dtype) and passed to ``fn`` as the keyword argument of that
    name. ``fn`` returns one tensor of any shape; its gradient is that of ``sum(value)``
    (what ``tf.GradientTape.gradient`` gives for a non-scalar target), taken with the
    backend's autodiff: ``tf.GradientTape``, ``jax.grad`` or ``torch.autograd``.

    Args:
        fn: called as ``fn(**tensors)``; bind other arguments with a lambda.
        tensors: the inputs by name.
        wrt: the names to differentiate with respect to; by default every floating-point
            tensor (integer tensors, e.g. labels, are passed but not differentiated).

    Returns:
        ``(value, gradients)``: the value as NumPy and, for each name in ``wrt``, a NumPy
        array of that tensor's shape and dtype. A tensor the value does not depend on gets
        zeros, never ``None``, on every backend: ``jax.grad`` returns zeros there and cannot
        tell "not connected" from "zero gradient", so the helper does the same on
        TensorFlow and PyTorch (whose autodiff returns ``None``).

    Raises:
        ValueError: a name in ``wrt`` is not in ``tensors`` or is not a floating-point tensor.
    """
    impl = backend.current()
    with impl.kit_scope():
        converted = {name: _tensor(value) for name, value in tensors.items()}
        names = [n for n, t in converted.items() if _floating(t)] if wrt is None else list(wrt)
        for name in names:
            if name not in converted:
                raise ValueError(f"wrt names {name!r}, which is not one of {sorted(converted)}")
            if not _floating(converted[name]):
                dtype = keras.backend.standardize_dtype(converted[name].dtype)
                raise ValueError(f"cannot differentiate with respect to {name!r} of dtype {dtype}")
        watched = {name: converted[name] for name in names}

        def objective(values: dict) -> Any:
            value = keras.ops.convert_to_tensor(fn(**{**converted, **values}))
            return keras.ops.sum(value), value

        _, value, grads, _ = impl.kit_gradients(objective, watched, [])
        out = {}
        for name in names:
            grad = grads.get(name)
            out[name] = np.zeros_like(_numpy(watched[name])) if grad is None else _numpy(grad)
        return _numpy(value), out


def compiler_modes() -> dict[str, str]:
    """The backend's compilers: mode name -> what it is (``KIT_MODES`` of :mod:`lossplug.backend`).

    TensorFlow: ``"function"`` (``tf.function``) and ``"jit"`` (``jit_compile=True``, XLA);
    JAX: ``"jit"`` (``jax.jit``); PyTorch: ``"compiled"`` (``torch.compile``, ``aot_eager``).
    """
    return dict(backend.current().KIT_MODES)


def compiled(fn: Callable[..., Any], mode: str | None = None) -> Callable[..., Any]:
    """``fn`` compiled by one of the backend's compilers, as the kit's ``compiled`` check does.

    The result takes the same positional arguments as ``fn``: tensors, NumPy arrays or
    dicts of them (bind anything else, e.g. a string or a Python number that must stay
    static, with a lambda), converts NumPy arrays to tensors and returns what ``fn``
    returns, as tensors. On TensorFlow the function is traced with the first axis of
    every argument of unknown size, as Keras' ``fit`` traces a step with the batch size
    unknown: other batch sizes reuse the trace, a call that differs in any other way
    (rank, another axis, dtype, structure) traces anew. JAX compiles for each shape
    (``jax.jit``); PyTorch traces with dynamic shapes (``torch.compile``).

    Args:
        fn: the function to compile; it must not read or create Keras variables.
        mode: one of :func:`compiler_modes` (default: the first, ``tf.function`` on
            TensorFlow).
    """
    impl = backend.current()
    modes = list(impl.KIT_MODES)
    mode = modes[0] if mode is None else mode
    if mode not in impl.KIT_MODES:
        raise ValueError(f"mode must be one of {modes} on {backend.name()}, got {mode!r}")
    cache: dict[Any, Callable[..., Any]] = {}

    def run(*args: Any) -> Any:
        with impl.kit_scope():
            arguments = tuple(_tensors(a) for a in args)
            key = _layout(arguments)
            function = cache.get(key)
            if function is None:
                function = cache[key] = impl.kit_compile(fn, mode, arguments, _batch, [])
            return function(*arguments)

    name = getattr(fn, "__name__", "fn")
    run.__name__ = f"compiled_{name}"
    run.__doc__ = f"{name} under {impl.KIT_MODES[mode]}"
    return run


def _batch(path: Any) -> bool:
    """Every argument's first axis is the batch (unknown size when traced on TensorFlow)."""
    return True


def _tensor(value: Any) -> Any:
    return keras.ops.convert_to_tensor(value)


def _tensors(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _tensors(v) for k, v in value.items()}
    return _tensor(value)


def _layout(value: Any) -> Any:
    """What a trace depends on: the structure, and each tensor's dtype and shape but the batch."""
    if isinstance(value, Mapping):
        return tuple((k, _layout(v)) for k, v in value.items())
    if isinstance(value, tuple):
        return tuple(_layout(v) for v in value)
    shape = tuple(value.shape)
    return keras.backend.standardize_dtype(value.dtype), len(shape), shape[1:]


def _floating(tensor: Any) -> bool:
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    return dtype.startswith("float") or dtype == "bfloat16"


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


__all__ = ["compiled", "compiler_modes", "value_and_gradients"]

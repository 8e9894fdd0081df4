"""Everything in lossplug that differs between Keras backends, in one place.

Keras 3 keeps its backend-specific code under ``keras/src/backend/<name>/``;
lossplug does the same at a smaller scale: one module per backend
(:mod:`lossplug.backend.tensorflow`, :mod:`lossplug.backend.jax`,
:mod:`lossplug.backend.torch`), each providing the same names:

``Trainer``
    the mixin :class:`lossplug.LossModel` puts in front of ``keras.Model``: a
    ``train_step`` that skips the update of a step whose loss (or gradient) is
    not finite and applies the plugins' own state updates exactly once per step.
``num_replicas()``, ``all_gather(value, axis)``, ``all_replicas_true(flag)``
    data-parallel plumbing for :class:`lossplug.Extras` and the finite guard.
``init_scope()``
    a context in which variables can be created eagerly while tracing.
``is_traced(x)``, ``host_check(value, bad, on_host, *args)``
    how a check on tensor values reports its problem: at once when the values
    are concrete, through a host callback inside compiled steps.
``sync_training_state(model)``
    write the state a backend keeps outside the variables back to them (JAX).
``Compiler``/``gradients``
    what the conformance kit needs: the backend's compiler and autodiff.

Plugins never import this package: they write their math in ``keras.ops``.
Importing :mod:`lossplug` does not import it either; the backend module is
imported on first use, after Keras has chosen its backend.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import LossplugError

#: The Keras backends lossplug supports, in order of preference.
SUPPORTED = ("tensorflow", "jax", "torch")

_modules: dict[str, ModuleType] = {}


def name() -> str:
    """The backend Keras uses in this process (``keras.backend.backend()``)."""
    import keras

    return keras.backend.backend()


def current() -> ModuleType:
    """The lossplug backend module for Keras' backend."""
    backend = name()
    module = _modules.get(backend)
    if module is None:
        if backend not in SUPPORTED:
            raise LossplugError(
                f"lossplug supports the Keras backends {', '.join(SUPPORTED)}; this process "
                f"uses {backend!r}. Set KERAS_BACKEND to one of them before importing Keras."
            )
        module = _modules[backend] = importlib.import_module(f"{__name__}.{backend}")
    return module


__all__ = ["SUPPORTED", "current", "name"]

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
``training_value(model, variable)``
    a metrics variable's value in the state ``fit`` is running, without writing
    that state back (JAX; elsewhere the variable's value).
``keras_loss_prediction(y_pred)``
    the prediction as :class:`lossplug.LossModel` hands it to a Keras loss (on PyTorch
    stored so that Keras' sparse cross-entropy of a (B, H, W, C) output can backpropagate).
``Compiler``/``gradients``
    what the conformance kit needs: the backend's compiler and autodiff.
``FLOAT64_OPS``
    the backend's own functions for the ``keras.ops`` that Keras computes in
    float32 for float64 tensors there (used by :mod:`lossplug.numerics` only).

:func:`portable_config`, here in the package itself, makes a saved compile config load
on every backend.

Plugins never import this package: they write their math in ``keras.ops``.
Importing :mod:`lossplug` does not import it either; the backend module is
imported on first use, after Keras has chosen its backend.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

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


def portable_config(config: Any) -> Any:
    """``config`` with every Keras optimizer named by its public, backend-neutral path.

    Keras 3.15 serialises an optimizer of the torch backend under the module of its torch
    class (``keras.src.backend.torch.optimizers.torch_adam``), so a file saved on PyTorch
    builds a torch optimizer when it is loaded on TensorFlow or JAX, and the first training
    step fails far from the cause. Rewritten as ``keras.optimizers`` + class name, the
    optimizer resolves to the class of the backend that loads the file. Nested configs
    (``LossScaleOptimizer``'s inner optimizer) are rewritten too; anything that is not a
    Keras optimizer of a backend module is returned unchanged.
    """
    if isinstance(config, list):
        return [portable_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    config = {key: portable_config(value) for key, value in config.items()}
    module = config.get("module")
    if isinstance(module, str) and module.startswith(_BACKEND_MODULES):
        import keras

        class_name = config.get("class_name")
        if isinstance(class_name, str) and isinstance(
            getattr(keras.optimizers, class_name, None), type
        ):
            config["module"] = "keras.optimizers"
            config["registered_name"] = class_name
    return config


#: Where Keras keeps its backend-specific classes (a saved module path to rewrite).
_BACKEND_MODULES = tuple(f"keras.src.backend.{backend}." for backend in SUPPORTED)

__all__ = ["SUPPORTED", "current", "name", "portable_config"]

"""lossplug: a plugin-based loss registry for Keras 3 on TensorFlow.

Importing ``lossplug`` is cheap: the plugin contract (:data:`hookimpl`, the
spec types, the registry) needs neither TensorFlow nor Keras. The training
side (:class:`LossModel`, :func:`use`, :func:`get`, :mod:`lossplug.schedules`)
is imported on first access.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from . import properties
from ._version import API_VERSION, __version__
from .errors import (
    APIVersionError,
    CompileError,
    InvalidSpecError,
    InvalidTensorError,
    LossplugError,
    MissingTensorError,
    NonFiniteLossError,
    PluginConfigError,
    PluginConflictError,
    PluginLoadError,
    PluginNotInstalledError,
    PluginResultError,
    UnknownPluginError,
)
from .hookspecs import hookimpl, hookspec
from .registry import registry
from .specs import Kind, LossResult, Metric, PluginSpec, Source, TensorSpec, param

if TYPE_CHECKING:
    from . import schedules
    from .extras import Extras, StateStore
    from .keras_loss import PluginLoss, get
    from .model import LossModel
    from .terms import Term, use

_LAZY = {
    "LossModel": ("lossplug.model", "LossModel"),
    "use": ("lossplug.terms", "use"),
    "Term": ("lossplug.terms", "Term"),
    "get": ("lossplug.keras_loss", "get"),
    "PluginLoss": ("lossplug.keras_loss", "PluginLoss"),
    "Extras": ("lossplug.extras", "Extras"),
    "StateStore": ("lossplug.extras", "StateStore"),
    "schedules": ("lossplug.schedules", None),
    "testing": ("lossplug.testing", None),
    "numerics": ("lossplug.numerics", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lossplug' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def register(plugin: Any, *, replace: bool = False) -> PluginSpec:
    """Register a loss plugin (module, class or instance with hookimpls) in this process."""
    return registry.register(plugin, replace=replace)


def unregister(name: str) -> None:
    """Remove a plugin registered with :func:`register`."""
    registry.unregister(name)


def register_wrapper(wrapper: Any) -> None:
    """Register ``wrapper=True`` hookimpls that observe or guard every plugin call."""
    registry.register_wrapper(wrapper)


def unregister_wrapper(wrapper: Any) -> None:
    """Remove a wrapper registered with :func:`register_wrapper`."""
    registry.unregister_wrapper(wrapper)


def available() -> list[str]:
    """Names of every installed or registered (not disabled) loss plugin."""
    return registry.names()


def _register_keras_objects() -> None:
    """Import the Keras-side modules so ``keras.models.load_model`` finds LossModel, Term..."""
    for module in ("lossplug.model", "lossplug.keras_loss"):
        importlib.import_module(module)


# Listing plugins must stay cheap (no TensorFlow), so the Keras side is imported
# lazily. When Keras is already imported (a training script did ``import keras``
# first), register lossplug's serializable classes right away so that
# ``keras.models.load_model`` works after a bare ``import lossplug``.
if "keras" in sys.modules:
    _register_keras_objects()

__all__ = [
    "API_VERSION",
    "APIVersionError",
    "CompileError",
    "Extras",
    "InvalidSpecError",
    "InvalidTensorError",
    "Kind",
    "LossModel",
    "LossResult",
    "LossplugError",
    "Metric",
    "MissingTensorError",
    "NonFiniteLossError",
    "PluginConfigError",
    "PluginConflictError",
    "PluginLoadError",
    "PluginLoss",
    "PluginNotInstalledError",
    "PluginResultError",
    "PluginSpec",
    "Source",
    "StateStore",
    "TensorSpec",
    "Term",
    "UnknownPluginError",
    "__version__",
    "available",
    "get",
    "hookimpl",
    "hookspec",
    "param",
    "properties",
    "register",
    "register_wrapper",
    "registry",
    "schedules",
    "unregister",
    "unregister_wrapper",
    "use",
]

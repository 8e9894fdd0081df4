"""lossplug: a plugin-based loss registry for Keras 3 on TensorFlow.

Importing ``lossplug`` is cheap: the plugin contract (:data:`hookimpl`, the
spec types, the registry) needs neither TensorFlow nor Keras. The training
side (:class:`LossModel`, :func:`use`, :func:`get`, :mod:`lossplug.schedules`)
is imported on first access.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from . import properties
from ._version import API_VERSION, __version__
from .errors import (
    APIVersionError,
    CompileError,
    FitError,
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
    UnknownTermError,
    UnsupportedBackendError,
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
    if _PENDING:  # this import imported Keras: register now that lossplug's modules are whole
        _PENDING.clear()
        _register_keras_objects()
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


#: set when Keras finished importing while a lossplug module was still being imported (by
#: that import: ``lossplug.use`` imports Keras); the registration then waits for it to end
_PENDING: list[bool] = []


def _initializing_lossplug() -> bool:
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name == "lossplug" or name.startswith("lossplug.")
    )


def _register_keras_objects() -> None:
    """Import the Keras-side modules so ``keras.models.load_model`` finds LossModel, Term..."""
    for module in ("lossplug.model", "lossplug.keras_loss"):
        importlib.import_module(module)


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Registers lossplug's Keras classes as soon as ``keras`` finishes importing.

    Listing plugins must stay cheap, so ``import lossplug`` imports no Keras and no
    backend. But ``keras.models.load_model`` can only find ``LossModel`` (and Term,
    the schedules, ...) once they are registered, whatever the import order of a
    script: ``import lossplug, keras`` works like ``import keras, lossplug``.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)  # find keras' real spec, once
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _forget_hook()
            if _initializing_lossplug():
                _PENDING.append(True)
                return
            try:
                _register_keras_objects()
            except Exception as exc:  # never break ``import keras`` itself
                import warnings

                warnings.warn(
                    f"lossplug could not register its Keras classes ({exc}); "
                    "keras.models.load_model will not find LossModel in this process",
                    stacklevel=2,
                )

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_HOOK = _AfterKerasImport()


def _forget_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


# When Keras is already imported (a script did ``import keras`` first), register
# lossplug's serializable classes now; otherwise as soon as Keras is imported.
if "keras" in sys.modules:
    _register_keras_objects()
else:
    sys.meta_path.insert(0, _HOOK)

__all__ = [
    "API_VERSION",
    "APIVersionError",
    "CompileError",
    "Extras",
    "FitError",
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
    "UnknownTermError",
    "UnsupportedBackendError",
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

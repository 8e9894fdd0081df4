"""Exceptions raised by lossplug.

Every error names the plugin involved, what happened and what to do about it.
All of them derive from :class:`LossplugError`, so ``except LossplugError``
catches anything this library raises on purpose.
"""

from __future__ import annotations


class LossplugError(Exception):
    """Base class of every error lossplug raises on purpose."""


class UnknownPluginError(LossplugError, KeyError):
    """A loss name that no installed or registered plugin provides."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginConflictError(LossplugError):
    """Two distributions (or two in-process registrations) claim one name."""


class PluginLoadError(LossplugError):
    """A plugin's module failed to import or to register with pluggy."""


class APIVersionError(LossplugError):
    """A plugin built for another version of the lossplug plugin API."""


class InvalidSpecError(LossplugError, ValueError):
    """A plugin's spec (name, tensors, properties, ...) is malformed."""


class PluginConfigError(LossplugError, ValueError):
    """A hyper-parameter rejected by a plugin's ``Config`` validators."""


class MissingTensorError(LossplugError, KeyError):
    """A tensor a plugin needs is not available in the model or the data."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidTensorError(LossplugError, ValueError):
    """A tensor given to a plugin has the wrong rank, shape or values for its kind."""


class PluginResultError(LossplugError, ValueError):
    """A plugin returned a value of the wrong type, shape or dtype."""


class NonFiniteLossError(LossplugError, FloatingPointError):
    """A loss term (or the gradient) was NaN or infinite at a training step, which was skipped."""


class PluginNotInstalledError(LossplugError, ImportError):
    """A saved model refers to a plugin that is not installed here."""


class CompileError(LossplugError, ValueError):
    """``LossModel.compile`` received a loss structure it cannot map onto the model."""


class FitError(LossplugError, ValueError):
    """``fit``/``evaluate`` (or ``set_epoch``) received arguments lossplug cannot use."""


class UnknownTermError(LossplugError, KeyError):
    """A term name that the compiled model does not have (``LossModel.term_state``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedBackendError(LossplugError):
    """A plugin used on a Keras backend its spec does not declare."""

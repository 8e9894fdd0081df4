"""Any Keras loss, by name, applied to any two bound tensors.

``bind`` reads two tensors, ``y_true`` (from the inputs: the targets or a model
input) and ``y_pred`` (from the outputs: the prediction, another output or an
exposed intermediate layer), and returns the per-sample value of the Keras loss
function named by ``loss``::

    loss_b = keras.losses.get(loss)(y_true_b, y_pred_b [, from_logits=True])

Users point the two names at any tensors of their model, which is the general
answer to "my loss needs an intermediate layer and the targets"::

    lossplug.use("bind", loss="mse", bind={"y_pred": "mask_features"}, display_name="mask_mse")

Conventions, so that the result is always one value per sample (shape (B,) or
(B, ...), reduced by the core with sample weights, like any Keras loss):

- tensors of shape (B,) are given a trailing axis, (B, 1), before the call
  (Keras' functions reduce the last axis, which would otherwise be the batch);
- losses whose ``axis`` defaults to "everything" (``dice``, ``tversky``) are
  computed over every axis but the batch axis;
- both tensors are computed in float32 (float64 if y_pred is float64; integer
  targets stay integers);
- ``circle`` is refused: it couples the samples of a batch.

A name may be a function name (``"mse"``, ``"binary_crossentropy"``) or a
Keras loss class name (``"MeanSquaredError"``); both resolve to the same
function. ``from_logits=True`` is passed to the losses that take it (the
cross-entropies and focal cross-entropies).

Claims: equal to the configured Keras loss function (computed in float64 as the
reference), and non-negative. Non-negativity is claimed for the default loss,
``mse``, which is what the conformance kit checks (the ``loss`` string has no
declared choices, so the kit keeps it); it does not hold for every Keras loss
(``cosine_similarity`` is in [-1, 1], ``poisson`` can be negative).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import keras
import lossplug
from keras import ops
from lossplug import Kind, PluginSpec, TensorSpec
from lossplug.numerics import compute_dtype
from lossplug.properties import Example, NonNegative, ReducesTo

#: Names ``keras.losses.get`` resolves but that bind cannot compute per sample.
_COUPLED = "it couples the samples of a batch (each sample's loss depends on the others)"
REFUSED = {"circle": _COUPLED, "Circle": _COUPLED}
_ALIASES = ("bce", "kld", "mae", "mape", "mse", "msle")


@functools.cache
def valid_loss_names() -> tuple[str, ...]:
    """The lower-case Keras loss function names (and aliases) bind accepts, sorted."""
    candidates = [n for n in dir(keras.losses) if n.islower() and not n.startswith("_")]
    names = {n for n in (*candidates, *_ALIASES) if n not in REFUSED and _lookup(n) is not None}
    return tuple(sorted(names))


def _lookup(name: str) -> Callable[..., Any] | None:
    """The loss function ``keras.losses.get(name)`` stands for, or None."""
    try:
        obj = keras.losses.get(name)
    except (ValueError, TypeError):
        return None
    if inspect.isfunction(obj):
        return obj
    fn = getattr(obj, "fn", None)  # a LossFunctionWrapper, e.g. "MeanSquaredError"
    return fn if inspect.isfunction(fn) else None


def resolve(name: str) -> Callable[..., Any]:
    """The Keras loss function for ``name``; PluginConfigError (listing valid names) if none."""
    if name in REFUSED:
        raise lossplug.PluginConfigError(f"loss {name!r} cannot be used by bind: {REFUSED[name]}")
    fn = _lookup(name)
    if fn is None:
        raise lossplug.PluginConfigError(
            f"{name!r} is not a Keras loss name (keras.losses.get does not know it as a "
            f"loss function); valid names: {', '.join(valid_loss_names())} "
            "(Keras loss class names such as 'MeanSquaredError' work too)"
        )
    return fn


def takes_from_logits(fn: Callable[..., Any]) -> bool:
    return "from_logits" in inspect.signature(fn).parameters


@attrs.frozen
class _KerasLossName:
    """attrs validator: the value names a Keras loss function."""

    def describe(self) -> str:
        return "a Keras loss name accepted by keras.losses.get"

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, str):
            resolve(value)


def _loss_field() -> Any:
    field = lossplug.param(
        "mse",
        kind=str,
        doc="name of the Keras loss function, e.g. 'mse', 'binary_crossentropy'",
    )
    field.validator(_KerasLossName())
    return field


@attrs.frozen
class Config:
    """Hyper-parameters of ``bind``."""

    loss: str = _loss_field()
    from_logits: bool = lossplug.param(
        False,
        doc="y_pred holds logits; only for losses with a from_logits argument "
        "(the cross-entropies and focal cross-entropies)",
    )

    def __attrs_post_init__(self) -> None:
        if self.from_logits and not takes_from_logits(resolve(self.loss)):
            raise lossplug.PluginConfigError(
                f"from_logits=True, but the Keras loss {self.loss!r} takes no from_logits "
                "argument; leave from_logits False or choose a cross-entropy loss"
            )


def _prepare(x: Any, dtype: str) -> Any:
    x = ops.convert_to_tensor(x)
    if "float" in str(x.dtype):
        x = ops.cast(x, dtype)
    return x


def per_sample_loss(
    name: str, y_true: Any, y_pred: Any, from_logits: bool = False, *, dtype: str | None = None
) -> Any:
    """The Keras loss ``name`` per sample, shape (B,) or (B, ...), computed in ``dtype``.

    ``dtype`` defaults to float64 for a float64 ``y_pred`` and float32 otherwise.
    """
    fn = resolve(name)
    y_pred = ops.convert_to_tensor(y_pred)
    if dtype is None:
        dtype = compute_dtype(y_pred)
    y_true, y_pred = _prepare(y_true, dtype), _prepare(y_pred, dtype)
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
        if len(y_true.shape) == 1:
            y_true = ops.expand_dims(y_true, -1)
    kwargs: dict[str, Any] = {}
    parameters = inspect.signature(fn).parameters
    if from_logits:
        kwargs["from_logits"] = True
    if "axis" in parameters and parameters["axis"].default is None:
        kwargs["axis"] = tuple(range(1, len(y_pred.shape)))
    return fn(y_true, y_pred, **kwargs)


def _keras_reference(example: Example) -> Any:
    """The configured Keras loss function on the example's arrays, in float64."""
    config: Config = example.config
    return ops.convert_to_numpy(
        per_sample_loss(
            config.loss,
            example.inputs["y_true"],
            example.outputs["y_pred"],
            config.from_logits,
            dtype="float64",
        )
    )


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return PluginSpec(
        name="bind",
        description="any Keras loss (by name) applied to two bound tensors",
        config=Config,
        tensors=(
            TensorSpec(
                "y_true",
                Kind.ANY,
                source="inputs",
                description="the reference: targets or a model input (bind to any input)",
            ),
            TensorSpec(
                "y_pred",
                Kind.ANY,
                description="the prediction: an output or an exposed layer (bind to any output)",
            ),
        ),
        properties=(
            ReducesTo("the configured Keras loss", reference=_keras_reference),
            NonNegative(),
        ),
    )


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> Any:
    config: Config = extras.config
    return per_sample_loss(config.loss, inputs["y_true"], outputs["y_pred"], config.from_logits)


__all__ = [
    "Config",
    "build_loss_graph",
    "lossplug_spec",
    "per_sample_loss",
    "resolve",
    "takes_from_logits",
    "valid_loss_names",
]

"""Loss terms: what users put in ``compile(loss=...)`` and how one is evaluated.

:func:`use` names a plugin with its config, weight and bindings and returns a
:class:`Term`. :class:`ResolvedTerm` is a term bound to a plugin: it calls
exactly that plugin's ``build_loss_graph`` and checks what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from . import runtime
from .errors import (
    LossplugError,
    MissingTensorError,
    PluginConfigError,
    PluginNotInstalledError,
    PluginResultError,
    UnknownPluginError,
)
from .extras import Extras
from .registry import registry
from .schedules import Schedule, as_schedule
from .specs import LossResult, Metric, PluginSpec, config_to_dict, make_config


@keras.saving.register_keras_serializable(package="lossplug")
class Term:
    """One loss term: a plugin (or a Keras loss) with its config, weight and bindings.

    Create terms with :func:`use`; a bare plugin name in ``compile`` is
    ``use(name)``. Terms are Keras-serializable, so compiled models save and load
    with ``safe_mode`` on.
    """

    def __init__(
        self,
        plugin: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        weight: Any = 1.0,
        bind: Mapping[str, str] | None = None,
        display_name: str | None = None,
        global_batch: bool = False,
        keras_loss: Any = None,
        distribution: str | None = None,
        version: str | None = None,
        allow_negative: bool = False,
    ) -> None:
        if (plugin is None) == (keras_loss is None):
            raise PluginConfigError("a Term names either a plugin or a Keras loss, not both")
        self.plugin = plugin
        self.keras_loss = keras_loss
        self.allow_negative = bool(allow_negative)
        self.weight: Schedule = _checked_weight(
            display_name or plugin or _keras_loss_name(keras_loss), weight, self.allow_negative
        )
        self.bind = dict(bind or {})
        for key, value in self.bind.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise PluginConfigError(
                    f"bind for {plugin or keras_loss!r} must map tensor names to tensor names "
                    f"(str -> str), got {key!r}: {value!r}"
                )
        self.display_name = display_name
        self.global_batch = bool(global_batch)
        self.distribution = distribution
        self.version = version
        self.spec: PluginSpec | None = None
        self.config: Any = None
        self._raw_config = dict(config or {})
        if plugin is not None:
            self._resolve()

    def _resolve(self) -> None:
        assert self.plugin is not None
        entry = registry.entry(self.plugin)
        self.spec = registry.spec(self.plugin)
        check_backend(self.spec)
        if entry.entry_point is not None:
            self.distribution, self.version = entry.distribution, entry.version
        self.config = make_config(self.spec, self._raw_config)
        declared = {t.name for t in self.spec.tensors}
        unknown = sorted(set(self.bind) - declared)
        if unknown:
            raise MissingTensorError(
                f"loss plugin {self.spec.name!r}: bind names {unknown[0]!r}, which the plugin "
                f"does not read; it reads: {', '.join(sorted(declared)) or '(nothing)'}"
            )

    @property
    def name(self) -> str:
        """The name shown in the progress bar (before any output prefix)."""
        if self.display_name:
            return self.display_name
        if self.plugin is not None:
            return self.spec.name if self.spec is not None else self.plugin.split(":")[-1]
        return _keras_loss_name(self.keras_loss)

    def get_config(self) -> dict[str, Any]:
        if self.keras_loss is not None:
            return {
                "keras_loss": keras.saving.serialize_keras_object(self.keras_loss),
                "weight": keras.saving.serialize_keras_object(self.weight),
                "bind": self.bind,
                "display_name": self.display_name,
                "allow_negative": self.allow_negative,
            }
        return {
            "plugin": self.plugin,
            "config": config_to_dict(self.config) if self.config is not None else self._raw_config,
            "weight": keras.saving.serialize_keras_object(self.weight),
            "bind": self.bind,
            "display_name": self.display_name,
            "global_batch": self.global_batch,
            "distribution": self.distribution,
            "version": self.version,
            "allow_negative": self.allow_negative,
        }

    def weight_at(self, epoch: int) -> float:
        """The weight at ``epoch`` of a weight computed in Python; errors name the term."""
        return _weight_value(self.name, self.weight, epoch, self.allow_negative)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Term:
        config = dict(config)
        config["weight"] = keras.saving.deserialize_keras_object(config["weight"])
        if "keras_loss" in config:
            config["keras_loss"] = keras.saving.deserialize_keras_object(config["keras_loss"])
        plugin = config.pop("plugin", None)
        try:
            return cls(plugin, **config)
        except UnknownPluginError as exc:
            raise _not_installed(plugin, config.get("distribution"), config.get("version")) from exc

    def __repr__(self) -> str:
        what = self.plugin if self.plugin is not None else _keras_loss_name(self.keras_loss)
        return f"Term({what!r}, weight={self.weight!r})"


def _not_installed(
    plugin: str | None, distribution: str | None, version: str | None
) -> PluginNotInstalledError:
    """The error for a saved model whose plugin is not available here."""
    import os

    from .registry import AUTOLOAD_ENV, DISABLE_ENV, autoload_disabled

    inference = (
        " To load the model for inference without its losses, use "
        "keras.models.load_model(path, compile=False) (or save model.inference_model())."
    )
    disabled = registry.disabled_entry(plugin or "")
    if disabled is not None:
        return PluginNotInstalledError(
            f"this model uses the loss plugin {plugin!r}, which is installed "
            f"({disabled.distribution} {disabled.version}) but disabled by "
            f"{DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')!r}. Remove it from that "
            "variable to load the model with its losses." + inference
        )
    if autoload_disabled():
        return PluginNotInstalledError(
            f"this model uses the loss plugin {plugin!r}, but {AUTOLOAD_ENV} is set, so "
            "installed plugins are ignored. Unset it (or lossplug.register(...) the plugin) "
            "to load the model with its losses." + inference
        )
    if not distribution:
        return PluginNotInstalledError(
            f"this model uses the loss plugin {plugin!r}, which was registered in-process "
            "when the model was saved and is not registered now. Call lossplug.register(...) "
            "with that plugin before loading the model."
        )
    pin = f"=={version}" if version else ""
    return PluginNotInstalledError(
        f"this model uses the loss plugin {plugin!r} from the distribution {distribution} "
        f"{version or ''}".rstrip()
        + f", which is not installed here. Install it (pip install "
        f"{distribution}{pin}) and load the model again." + inference
    )


def check_backend(spec: PluginSpec) -> None:
    """Refuse a plugin whose spec does not declare the current Keras backend."""
    if spec.backends is None:
        return
    backend = keras.backend.backend()
    if backend not in spec.backends:
        from .errors import UnsupportedBackendError

        raise UnsupportedBackendError(
            f"loss plugin {spec.name!r} supports the Keras backends "
            f"{', '.join(spec.backends)}; this process uses {backend!r}. Set KERAS_BACKEND to "
            "one of them, or ask the plugin's authors for a keras.ops version."
        )


def _checked_weight(term: str, weight: Any, allow_negative: bool) -> Schedule:
    """``weight`` as a schedule, refused now if it could not be saved or is negative."""
    try:
        schedule = as_schedule(weight)
        if not schedule.in_graph:
            schedule.check_saveable()
    except PluginConfigError as exc:
        raise PluginConfigError(f"term {term!r}: {exc}") from None
    lowest = schedule.lowest()
    if lowest is not None and lowest < 0 and not allow_negative:
        raise PluginConfigError(_negative_message(term, schedule, lowest))
    if not schedule.in_graph:
        _weight_value(term, schedule, 0, allow_negative)
    return schedule


def _negative_message(term: str, schedule: Schedule, value: float, epoch: int | None = None) -> str:
    when = "" if epoch is None else f" at epoch {epoch}"
    return (
        f"term {term!r}: the weight {schedule!r} is negative ({value}{when}), which makes "
        "training maximise the term instead of minimising it. If that is intended (an "
        "adversarial or entropy-bonus term), say so with lossplug.use(..., "
        "allow_negative=True); otherwise use a weight >= 0."
    )


def _weight_value(term: str, schedule: Schedule, epoch: int, allow_negative: bool) -> float:
    try:
        value = schedule.value_at(epoch)
    except PluginConfigError as exc:
        raise PluginConfigError(f"term {term!r}: {exc}") from None
    if value < 0 and not allow_negative:
        raise PluginConfigError(_negative_message(term, schedule, value, epoch))
    return value


def _keras_loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return loss.name
    return getattr(loss, "__name__", type(loss).__name__)


def use(
    name: str,
    *,
    weight: Any = 1.0,
    bind: Mapping[str, str] | None = None,
    display_name: str | None = None,
    global_batch: bool = False,
    allow_negative: bool = False,
    **config: Any,
) -> Term:
    """Name a loss plugin with its config, for ``LossModel.compile(loss=...)``.

    Args:
        name: the plugin name (``"center"``), or ``"distribution:name"`` when two
            installed distributions provide the name.
        weight: a number, a :mod:`lossplug.schedules` schedule of the epoch or
            step, or any callable of the epoch.
        bind: maps the plugin's tensor names to the model's, e.g.
            ``{"features": "embedding"}``; a model name may be qualified as
            ``"inputs.<name>"`` or ``"outputs.<name>"``.
        display_name: the name shown in the progress bar and ``History``
            (defaults to the plugin name).
        global_batch: batch-coupled plugins mine over the global batch
            (gathered across replicas) under a data-parallel strategy.
        allow_negative: accept a weight (or schedule) that is negative somewhere,
            which maximises the term; refused otherwise.
        **config: the plugin's hyper-parameters, validated now.

    A weight is checked when it is given: it must be finite, non-negative (unless
    ``allow_negative``), and saveable with the model (a Python callable only if
    registered with ``keras.saving.register_keras_serializable``; a ``lambda``
    is refused).
    """
    return Term(
        name,
        config=config,
        weight=weight,
        bind=bind,
        display_name=display_name,
        global_batch=global_batch,
        allow_negative=allow_negative,
    )


def as_term(obj: Any) -> Term:
    """Interpret one entry of ``compile(loss=...)``: a name, a Term, or a Keras loss."""
    if isinstance(obj, Term):
        return obj
    if isinstance(obj, str):
        name = obj.split(":")[-1]
        if ":" in obj or name in registry.names():
            return Term(obj)
        try:
            keras.losses.get(obj)
        except (ValueError, TypeError):
            raise registry._unknown(obj, name) from None
        return Term(keras_loss=obj)
    if isinstance(obj, keras.losses.Loss) or callable(obj):
        return Term(keras_loss=obj)
    raise PluginConfigError(
        f"cannot use {obj!r} as a loss: pass a plugin name, lossplug.use(...), a "
        "keras.losses.Loss or a loss function"
    )


# --------------------------------------------------------------------- evaluation
def _dtype_name(dtype: Any) -> str:
    return keras.backend.standardize_dtype(dtype)


def _is_float(dtype: Any) -> bool:
    try:
        return "float" in _dtype_name(dtype)
    except ValueError:
        return False


class TermOutput:
    """What one evaluation of a term produced, validated (a plain class: see TermScope)."""

    __slots__ = ("invalid", "loss", "metrics", "per_sample", "unreported", "updates")

    def __init__(
        self,
        loss: Any,
        per_sample: bool,
        metrics: dict[str, tuple[Any, str]],
        invalid: Any = None,
        updates: list[tuple[Any, Any]] | None = None,
        unreported: list[tuple[Any, int, Any, Any]] | None = None,
    ) -> None:
        self.loss = loss  #: float32 per-sample tensor, float32 scalar, or None
        self.per_sample = per_sample
        self.metrics = metrics  #: name -> (float32 value, aggregation)
        #: scalar bool tensor: a check inside the plugin found unusable input (None: no check)
        self.invalid = invalid
        #: (variable, value) state updates the plugin asked for (training only)
        self.updates = updates or []
        #: failed checks the compiler could not report from the host (lossplug.runtime.check)
        self.unreported = unreported or []


def call_plugin(
    spec: PluginSpec,
    caller: Any,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    extras: Extras,
    *,
    term: str,
) -> TermOutput:
    """Call one plugin's ``build_loss_graph`` and validate what it returns."""
    where = f"loss plugin {spec.name!r} (term {term!r})"
    with runtime.term_scope(term, spec.name, training=extras.training, step=extras.step) as scope:
        try:
            result = caller(inputs=dict(inputs), outputs=dict(outputs), extras=extras)
        except LossplugError:
            raise
        except Exception as exc:
            name_the_term(exc, f"{where}, in build_loss_graph")
            raise
    invalid = None
    if scope.invalid:
        invalid = scope.invalid[0]
        for flag in scope.invalid[1:]:
            invalid = ops.logical_or(invalid, flag)
    if result is None and spec.returns != "metrics":
        raise PluginResultError(
            f"{where} returned None; return a lossplug.LossResult or a loss tensor"
        )
    if not isinstance(result, LossResult):
        result = LossResult(loss=result)
    loss = result.loss
    per_sample = False
    if loss is not None:
        if not hasattr(loss, "shape"):
            raise PluginResultError(
                f"{where} returned a loss of type {type(loss).__name__}; return a tensor"
            )
        loss = ops.convert_to_tensor(loss)
        if not _is_float(loss.dtype):
            raise PluginResultError(
                f"{where} returned a loss of dtype {_dtype_name(loss.dtype)}; "
                "losses must be floating point (cast with keras.ops.cast(x, 'float32'))"
            )
        rank = len(loss.shape)
        if rank > 0:
            per_sample = True
            batch = _batch_size_hint(inputs, outputs, spec)
            got = loss.shape[0]
            if batch is not None and got is not None and got != batch:
                raise PluginResultError(
                    f"{where} returned a loss of shape {tuple(loss.shape)}, but the batch has "
                    f"{batch} samples; return one value per sample (shape ({batch},) or "
                    f"({batch}, ...)) or a scalar"
                )
        loss = ops.cast(loss, "float32")
    metrics: dict[str, tuple[Any, str]] = {}
    for name, value in dict(result.metrics).items():
        aggregation = "mean"
        if isinstance(value, Metric):
            value, aggregation = value.value, value.aggregation
            if aggregation not in ("mean", "sum"):
                raise PluginResultError(
                    f"{where} returned the metric {name!r} with aggregation={aggregation!r}; "
                    "use 'mean' (averaged over the epoch) or 'sum' (a total per epoch)"
                )
        value = ops.convert_to_tensor(value)
        if len(value.shape) != 0:
            value = ops.mean(ops.cast(value, "float32"))
        metrics[str(name)] = (ops.cast(value, "float32"), aggregation)
    return TermOutput(
        loss=loss,
        per_sample=per_sample,
        metrics=metrics,
        invalid=invalid,
        updates=list(scope.updates),
        unreported=list(scope.unreported),
    )


def name_the_term(exc: BaseException, where: str) -> None:
    """Make ``where`` (the plugin and term) the start of ``exc``'s message, in place.

    The exception keeps its type (callers may catch it); when its message is not
    a plain string (a TensorFlow ``OpError``, say) ``where`` becomes a note.
    """
    if exc.args and isinstance(exc.args[0], str) and type(exc).__str__ is BaseException.__str__:
        exc.args = (f"{where}: {exc.args[0]}", *exc.args[1:])
    else:
        exc.add_note(f"raised in {where}")


def _batch_size_hint(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], spec: PluginSpec
) -> int | None:
    """The static batch size of the declared batch-shaped tensors, if known and agreed."""
    sizes = set()
    for tensor in spec.tensors:
        if tensor.shape is None or not tensor.shape or tensor.shape[0] != "B":
            continue
        mapping = inputs if tensor.source.value == "inputs" else outputs
        value = mapping.get(tensor.name)
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0 and shape[0] is not None:
            sizes.add(int(shape[0]))
    return sizes.pop() if len(sizes) == 1 else None


def reduce_per_sample(values: Any, sample_weight: Any = None) -> Any:
    """Keras' ``sum_over_batch_size``: sum(w * loss) / number of loss elements, in float32.

    ``values`` has shape (B,) or (B, ...); ``sample_weight`` (B,) or
    broadcastable to ``values``.
    """
    values = as_float32(values)
    if sample_weight is not None:
        weight = as_float32(sample_weight)
        while len(weight.shape) < len(values.shape):
            weight = ops.expand_dims(weight, -1)
        while len(weight.shape) > len(values.shape) and weight.shape[-1] == 1:
            weight = ops.squeeze(weight, -1)
        values = values * weight
    size = _static_size(values)
    if size is not None and size > 0:
        return ops.mean(values)  # one op where the size is known (each op counts eagerly)
    # An empty batch (a replica's share of a short last batch) gives 0, not 0/0.
    count = ops.cast(ops.size(values), "float32")
    return ops.sum(values) / ops.maximum(count, 1.0)


def as_float32(value: Any) -> Any:
    """``value`` as a float32 tensor; no op at all where it already is one."""
    if ops.is_tensor(value) and keras.backend.standardize_dtype(value.dtype) == "float32":
        return value
    return ops.cast(value, "float32")


def _static_size(value: Any) -> int | None:
    """The number of elements where every dimension is known when tracing, else None."""
    shape = getattr(value, "shape", None)
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(int(d) for d in shape)


def scale_for_distribution(value: Any) -> Any:
    """Divide by the number of replicas in sync, as Keras does for its own losses."""
    from . import backend

    replicas = backend.current().num_replicas()
    if replicas > 1:
        value = value * (1.0 / replicas)
    return value


__all__ = ["Term", "TermOutput", "as_term", "call_plugin", "reduce_per_sample", "use"]

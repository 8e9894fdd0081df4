"""From ``compile(loss=..., metrics=...)`` to terms attached to a model's outputs and tensors.

:func:`bind_terms` maps the ``loss`` structure (one entry, a list, or a dict by
output) onto the model's outputs, :func:`split_metrics` takes the plugin
entries out of ``metrics`` (they are evaluated as *monitor* terms, shown but
not trained on), and :func:`namespaces` / :func:`select` build the ``inputs``
and ``outputs`` mappings one term's plugin reads, with errors that say what is
available and how to bind it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import keras

from .errors import CompileError, MissingTensorError
from .extras import StateStore
from .registry import registry
from .specs import Kind, Source
from .terms import Term, as_term


@attrs.define
class BoundTerm:
    """A term attached to the model: which output, its display name, its runtime parts."""

    term: Term
    output: str | None  #: output name for y_true / y_pred, None for model-wide terms
    name: str  #: display name (unique within the model)
    loss_weight: float = 1.0
    #: ``True`` for a term given in ``compile(metrics=...)``: evaluated and shown, not trained
    monitor: bool = False
    caller: Any = None
    state: StateStore | None = None
    weight_variable: Any = None  #: for weights computed in Python (FromCallable)
    metric: Any = None
    has_loss: bool = True
    plugin_metrics: dict[str, Any] = attrs.field(factory=dict)

    @property
    def who(self) -> str:
        """``loss plugin 'center' (term 'c2')`` or ``Keras loss 'mse' (term 'mse')``."""
        spec = self.term.spec
        if spec is None:
            return f"Keras loss {self.term.name!r} (term {self.name!r})"
        return f"loss plugin {spec.name!r} (term {self.name!r})"

    @property
    def trained(self) -> bool:
        """Whether the term's value is part of the loss the optimizer minimises."""
        return self.has_loss and not self.monitor


def output_names(model: keras.Model) -> list[str]:
    out = model.output
    if isinstance(out, Mapping):
        return list(out.keys())
    flat = keras.tree.flatten(out)
    return [t._keras_history.operation.name for t in flat]


def input_names(model: keras.Model) -> list[str]:
    inp = model.input
    if isinstance(inp, Mapping):
        return list(inp.keys())
    return [t.name for t in keras.tree.flatten(inp)]


def _entries(obj: Any) -> list[Any]:
    return list(obj) if isinstance(obj, list | tuple) else [obj]


def _loss_weight(loss_weights: Any, output: str | None, index: int | None) -> float:
    if loss_weights is None or output is None:
        return 1.0
    if isinstance(loss_weights, Mapping):
        return float(loss_weights.get(output, 1.0))
    if isinstance(loss_weights, Sequence):
        return float(loss_weights[index if index is not None else 0])
    return float(loss_weights)


def _pairs(loss: Any, loss_weights: Any, outputs: list[str], what: str) -> list[tuple]:
    """(output or None, entry, loss weight) for every entry of a ``loss``-like structure."""
    single = len(outputs) == 1
    pairs: list[tuple[str | None, Any, float]] = []
    if loss is None:
        return pairs
    if isinstance(loss, Mapping):
        for key, value in loss.items():
            if key not in outputs:
                raise CompileError(
                    f"compile({what}=...): {key!r} is not an output of this model; its outputs "
                    f"are: {', '.join(outputs)}"
                )
            for entry in _entries(value):
                pairs.append((key, entry, _loss_weight(loss_weights, key, outputs.index(key))))
    elif isinstance(loss, list | tuple) and not single and what == "loss":
        if len(loss) != len(outputs):
            raise CompileError(
                f"compile(loss=[...]) got {len(loss)} entries for a model with "
                f"{len(outputs)} outputs ({', '.join(outputs)}); pass one entry (a loss or a "
                "list of losses) per output, or a dict {output_name: loss}"
            )
        for index, (output, value) in enumerate(zip(outputs, loss, strict=True)):
            for entry in _entries(value):
                if entry is not None:
                    pairs.append((output, entry, _loss_weight(loss_weights, output, index)))
    else:
        only = outputs[0] if single else None
        for entry in _entries(loss):
            pairs.append((only, entry, _loss_weight(loss_weights, only, 0)))
    return pairs


def is_plugin_entry(entry: Any) -> bool:
    """Whether a ``metrics`` entry names a loss plugin (rather than a Keras metric)."""
    if isinstance(entry, Term):
        return entry.plugin is not None
    return isinstance(entry, str) and (":" in entry or entry in registry.names())


def split_metrics(metrics: Any) -> tuple[Any, Any]:
    """(Keras' part of ``metrics``, the plugin part in the same structure)."""
    if metrics is None:
        return None, None
    if isinstance(metrics, Mapping):
        keras_part = {}
        plugin_part = {}
        for key, value in metrics.items():
            entries = _entries(value)
            keras_part[key] = [e for e in entries if not is_plugin_entry(e)]
            plugin_part[key] = [e for e in entries if is_plugin_entry(e)]
        return (
            {k: v for k, v in keras_part.items() if v} or None,
            {k: v for k, v in plugin_part.items() if v} or None,
        )
    entries = _entries(metrics)
    keras_part = [e for e in entries if not is_plugin_entry(e)]
    plugin_part = [e for e in entries if is_plugin_entry(e)]
    return (keras_part or None, plugin_part or None)


def bind_terms(loss: Any, loss_weights: Any, monitors: Any, model: keras.Model) -> list[BoundTerm]:
    """One :class:`BoundTerm` per entry of ``loss`` and per plugin entry of ``metrics``."""
    outputs = output_names(model)
    single = len(outputs) == 1
    entries = [(*p, False) for p in _pairs(loss, loss_weights, outputs, "loss")]
    entries += [(*p, True) for p in _pairs(monitors, None, outputs, "metrics")]
    bound: list[BoundTerm] = []
    used: dict[str, int] = {}
    for output, entry, weight, monitor in entries:
        term = as_term(entry)
        base = term.name
        if output is not None and not single and not term.display_name:
            base = f"{output}_{base}"
        count = used.get(base, 0)
        used[base] = count + 1
        name = base if count == 0 else f"{base}_{count + 1}"
        if name in {"loss"} | set(outputs):
            name = f"{name}_term"
        bound.append(
            BoundTerm(term=term, output=output, name=name, loss_weight=weight, monitor=monitor)
        )
    return bound


def parse_targets(targets: Mapping[str, Any] | None, outputs: list[str]) -> dict[str, Any]:
    """``{name: shape}`` or ``{name: (shape, dtype)}`` -> ``{name: (shape tuple, dtype)}``."""
    parsed: dict[str, Any] = {}
    for name, value in (targets or {}).items():
        if name in outputs or name in {"y_true", "y_pred"}:
            raise CompileError(
                f"compile(targets=...): {name!r} is an output (or reserved) name; declare only "
                "targets that are not model outputs"
            )
        dtype = "float32"
        if (
            isinstance(value, list | tuple)
            and len(value) == 2
            and isinstance(value[1], str)
            and isinstance(value[0], list | tuple)
        ):
            value, dtype = value
        try:
            shape = tuple(int(d) for d in value)
        except (TypeError, ValueError):
            raise CompileError(
                f"compile(targets=...): the shape of {name!r} must be a tuple of ints without "
                f"the batch axis (e.g. (32, 32, 1)), got {value!r}"
            ) from None
        parsed[name] = (shape, dtype)
    return parsed


def serializable(loss: Any) -> Any:
    """``loss`` with plugin names replaced by Terms (which record distribution and version)."""
    if isinstance(loss, Mapping):
        return {k: serializable(v) for k, v in loss.items()}
    if isinstance(loss, list | tuple):
        return [serializable(v) for v in loss]
    if isinstance(loss, str) and loss.split(":")[-1] in registry.names():
        return Term(loss)
    return loss


# --------------------------------------------------------------------- tensors
class _Missing:
    pass


MISSING = _Missing()


def namespaces(
    b: BoundTerm,
    x: Any,
    y: Any,
    y_pred: Any,
    exposed: Mapping[str, Any],
    inputs_of: list[str],
    outputs_of: list[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``inputs`` and ``outputs`` mappings of the hook for term ``b``."""
    inputs: dict[str, Any] = {}
    if isinstance(x, Mapping):
        inputs.update(x)
    else:
        flat_x = keras.tree.flatten(x)
        if len(flat_x) == len(inputs_of):
            inputs.update(zip(inputs_of, flat_x, strict=True))
    if len(inputs_of) == 1 and inputs_of[0] in inputs:
        inputs.setdefault("x", inputs[inputs_of[0]])
    outputs: dict[str, Any] = dict(zip(outputs_of, keras.tree.flatten(y_pred), strict=True))
    # The output whose target and prediction this term sees as y_true / y_pred.
    own = b.output if b.output is not None else (outputs_of[0] if len(outputs_of) == 1 else None)
    if y is not None:
        if isinstance(y, Mapping):
            targets = dict(y)
        elif len(outputs_of) == 1:
            flat_y = keras.tree.flatten(y) if isinstance(y, list | tuple) else [y]
            targets = {outputs_of[0]: flat_y[0]}
        else:
            targets = dict(zip(outputs_of, keras.tree.flatten(y), strict=False))
        for name, value in targets.items():
            inputs.setdefault(name, value)
        if own is not None and own in targets:
            inputs["y_true"] = targets[own]
    if own is not None:
        outputs["y_pred"] = outputs[own]
    outputs.update(exposed)
    return inputs, outputs


def lookup(target: str, source: Source, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
    if target.startswith("inputs."):
        return inputs.get(target[len("inputs.") :], MISSING)
    if target.startswith("outputs."):
        return outputs.get(target[len("outputs.") :], MISSING)
    first, second = (inputs, outputs) if source == Source.INPUTS else (outputs, inputs)
    if target in first:
        return first[target]
    return second.get(target, MISSING)


def select(
    b: BoundTerm,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    *,
    has_targets: bool,
    several_outputs: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors the plugin declares, under its own names; a clear error if one is missing."""
    spec = b.term.spec
    chosen_in: dict[str, Any] = {}
    chosen_out: dict[str, Any] = {}
    for tensor in spec.tensors:
        target = b.term.bind.get(tensor.name, tensor.name)
        value = lookup(target, tensor.source, inputs, outputs)
        if value is MISSING:
            if tensor.optional:
                continue
            raise MissingTensorError(
                missing_message(b, tensor, target, inputs, outputs, has_targets, several_outputs)
            )
        (chosen_in if tensor.source == Source.INPUTS else chosen_out)[tensor.name] = value
    return chosen_in, chosen_out


def missing_message(
    b: BoundTerm,
    tensor: Any,
    target: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    has_targets: bool,
    several_outputs: bool,
) -> str:
    spec = b.term.spec
    bound = f" (bound to {target!r})" if target != tensor.name else ""
    if target in ("y_true", "y_pred") and several_outputs and b.output is None:
        hint = (
            f" This model has several outputs, so {target!r} is ambiguous: attach the term "
            f"to one of them with compile(loss={{output_name: {spec.name!r}}}) (or bind "
            f"{target!r} to a tensor by name)."
        )
    elif target == "y_true" and not has_targets:
        hint = (
            " fit/evaluate received no targets: pass y, or bind 'y_true' to another tensor "
            "(e.g. bind={'y_true': 'inputs.x'})."
        )
    elif tensor.source == Source.INPUTS:
        hint = (
            f" If {target!r} is a target you pass in fit's y dict, declare it with "
            f"compile(..., targets={{{target!r}: shape}}); or bind it to one of the available "
            f"tensors: lossplug.use({spec.name!r}, bind={{{tensor.name!r}: 'name'}})."
        )
    else:
        hint = (
            f" Bind it to one of the available tensors, e.g. lossplug.use({spec.name!r}, "
            f"bind={{{tensor.name!r}: 'name'}}), or expose the layer with "
            "LossModel(..., expose=['layer_name'])."
        )
    return (
        f"{b.who} needs tensor {tensor.name!r}{bound} "
        f"({tensor.kind.value}, from {tensor.source.value}), which is not available. "
        f"Available inputs: {', '.join(sorted(inputs)) or '(none)'}; available outputs: "
        f"{', '.join(sorted(outputs)) or '(none)'}.{hint}"
    )


# --------------------------------------------------------------------- activations
_NORMALISING = {"softmax", "sigmoid", "log_softmax"}


def _activation_of(tensor: Any) -> str | None:
    """The activation the layer producing ``tensor`` ends with, or None if unknown."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None)
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    if isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", None)


def check_activations(b: BoundTerm, symbolic: Mapping[str, Any]) -> None:
    """Warn when a plugin reading logits gets a softmax/sigmoid output, or the reverse.

    ``symbolic`` maps the model's output and exposed names (and ``y_pred``) to
    their KerasTensors. Driven only by the spec's tensor kinds (resolved with
    the config's ``from_logits`` field where the spec names one).
    """
    spec = b.term.spec
    if spec is None:
        return
    for tensor in spec.tensors:
        if tensor.source != Source.OUTPUTS:
            continue
        kind = spec.kind_of(tensor, b.term.config)
        if kind not in (Kind.LOGITS, Kind.PROBABILITIES):
            continue
        target = b.term.bind.get(tensor.name, tensor.name)
        target = target.removeprefix("outputs.")
        if target == "y_pred":
            target = b.output or ""
        value = symbolic.get(target)
        activation = _activation_of(value) if value is not None else None
        if activation is None:
            continue
        field = tensor.from_logits
        if kind == Kind.LOGITS and activation in _NORMALISING:
            fix = (
                f"set lossplug.use({spec.name!r}, {field}=False)"
                if field
                else "remove the activation (or bind the tensor to the pre-activation layer)"
            )
            warnings.warn(
                f"{b.who} reads {tensor.name!r} as logits, but {target!r} is produced by a "
                f"{activation} activation, so it holds probabilities: {fix}.",
                stacklevel=4,
            )
        elif kind == Kind.PROBABILITIES and activation == "linear":
            fix = (
                f"set lossplug.use({spec.name!r}, {field}=True)"
                if field
                else "end the layer with a softmax or sigmoid activation"
            )
            warnings.warn(
                f"{b.who} reads {tensor.name!r} as probabilities, but {target!r} is produced "
                f"by a layer without activation, so it holds logits: {fix}.",
                stacklevel=4,
            )


__all__ = [
    "BoundTerm",
    "bind_terms",
    "check_activations",
    "input_names",
    "lookup",
    "namespaces",
    "output_names",
    "parse_targets",
    "select",
    "serializable",
    "split_metrics",
]

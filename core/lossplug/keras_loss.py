"""``lossplug.get``: a plugin as a plain ``keras.losses.Loss`` for any Keras model."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from .errors import MissingTensorError
from .extras import Extras, StateStore
from .registry import registry
from .specs import Source, config_to_dict, make_config
from .terms import call_plugin, check_backend

_PLAIN = {"y_true": Source.INPUTS, "y_pred": Source.OUTPUTS}


@keras.saving.register_keras_serializable(package="lossplug")
class PluginLoss(keras.losses.Loss):
    """A loss plugin that reads only ``y_true`` and ``y_pred``, as a Keras ``Loss``.

    Keras reduces the per-sample values (``reduction``, sample weights), so the
    object works in any model's ``compile``, including ``keras.Sequential``.
    Plugins that need other tensors, or that keep state, need
    :class:`lossplug.LossModel`.
    """

    def __init__(
        self,
        plugin: str,
        config: dict[str, Any] | None = None,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        dtype: Any = None,
    ) -> None:
        self.plugin = plugin
        self.spec = registry.spec(plugin)
        check_backend(self.spec)
        reads_prediction = any(
            t.name == "y_pred" and t.source == Source.OUTPUTS for t in self.spec.tensors
        )
        for tensor in self.spec.tensors:
            plain = _PLAIN.get(tensor.name) == tensor.source
            if plain or (tensor.optional and reads_prediction):
                continue
            raise MissingTensorError(
                f"loss plugin {self.spec.name!r} reads {tensor.name!r} ({tensor.kind.value}, "
                f"from {tensor.source.value}), which a plain Keras loss cannot provide (it "
                "only sees y_true and y_pred). Use lossplug.LossModel and "
                f"compile(loss=lossplug.use({self.spec.name!r}, ...)) instead."
            )
        self.config = make_config(self.spec, config or {})
        super().__init__(name=name or self.spec.name, reduction=reduction, dtype=dtype)
        self._caller = registry.hook_caller(plugin)
        self._state = StateStore(plugin=self.spec.name, name=f"lossplug_get_{self.spec.name}")
        self._state.close()

    def call(self, y_true: Any, y_pred: Any) -> Any:
        inputs = {"y_true": y_true} if any(t.name == "y_true" for t in self.spec.tensors) else {}
        outputs = {"y_pred": y_pred}
        extras = Extras(
            config=self.config,
            epoch=ops.zeros((), "int32"),
            step=ops.zeros((), "int32"),
            training=True,
            state=self._state,
            term=self.name,
        )
        out = call_plugin(self.spec, self._caller, inputs, outputs, extras, term=self.name)
        return out.loss

    def get_config(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "config": config_to_dict(self.config),
            "reduction": self.reduction,
            "name": self.name,
        }


def get(name: str, **config: Any) -> PluginLoss:
    """Return the plugin ``name`` as a ``keras.losses.Loss`` (plugins needing only y_true, y_pred).

    Example::

        model = keras.Sequential([...])
        model.compile("adam", loss=lossplug.get("label_smoothing", epsilon=0.1))
    """
    return PluginLoss(name, config)


__all__ = ["PluginLoss", "get"]

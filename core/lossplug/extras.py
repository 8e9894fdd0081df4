"""What ``build_loss_graph`` receives besides tensors: config, time, state."""

from __future__ import annotations

from typing import Any

import attrs
import keras
import tensorflow as tf

from .errors import PluginResultError


@keras.saving.register_keras_serializable(package="lossplug")
class StateStore(keras.layers.Layer):
    """Variables one loss term owns (class centres, class weights, running statistics).

    The store is a Keras layer attached to the :class:`lossplug.LossModel`, so
    its variables are trained by the model's optimizer (when trainable),
    checkpointed, and saved in ``.keras`` files. Plugins create variables with
    :meth:`variable` inside ``build_loss_graph``; the core calls every plugin
    once when the model is compiled, which is when the variables are created.
    """

    def __init__(self, plugin: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plugin = plugin
        self._open = True
        self._by_name: dict[str, Any] = {}
        self.built = True

    def close(self) -> None:
        """No variable may be created after this (called once the term is probed)."""
        self._open = False

    def variable(
        self,
        name: str,
        shape: tuple[int, ...],
        initializer: Any = "zeros",
        *,
        trainable: bool = True,
        dtype: str = "float32",
        regularizer: Any = None,
        constraint: Any = None,
    ) -> Any:
        """Return the variable ``name``, creating it on the first call.

        Later calls must ask for the same shape. Variables are float32 by
        default, also under a mixed-precision policy.
        """
        shape = tuple(int(d) for d in shape)
        existing = self._by_name.get(name)
        if existing is not None:
            if tuple(existing.shape) != shape:
                raise PluginResultError(
                    f"loss plugin {self.plugin!r}: state variable {name!r} was created with "
                    f"shape {tuple(existing.shape)} and is now requested with shape {shape}"
                )
            return existing
        if not self._open:
            raise PluginResultError(
                f"loss plugin {self.plugin!r} created the state variable {name!r} after the "
                "model was compiled. Create every variable on every call of build_loss_graph "
                "(whatever extras.training is), so the core can create it before training."
            )
        with tf.init_scope():
            var = self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer,
                trainable=trainable,
                dtype=dtype,
                regularizer=regularizer,
                constraint=constraint,
                autocast=False,
            )
        self._by_name[name] = var
        return var

    def values(self) -> dict[str, Any]:
        """Current values as NumPy arrays, by name (for the conformance kit)."""
        return {name: keras.ops.convert_to_numpy(v) for name, v in self._by_name.items()}

    def assign(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            self._by_name[name].assign(value)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "plugin": self.plugin}


@attrs.frozen
class Extras:
    """Everything besides tensors that a plugin's ``build_loss_graph`` receives.

    Attributes:
        config: the validated ``Config`` instance of the plugin.
        epoch: scalar int tensor, the current epoch (0-based); changes without
            retracing the training step.
        step: scalar int tensor, the optimizer's step counter.
        training: Python bool; ``False`` in ``evaluate``.
        state: the term's :class:`StateStore`.
        term: the display name of the term (``"center"``, ``"logits_center"``).
        sample_weight: the batch's sample weights (or ``None``); the core
            already applies them to per-sample losses.
        global_batch: when ``True`` (``use(..., global_batch=True)``), batch-coupled
            plugins should gather embeddings with :meth:`all_gather` so that
            mining sees the global batch under a ``tf.distribute`` strategy.
    """

    config: Any
    epoch: Any
    step: Any
    training: bool
    state: StateStore
    term: str = ""
    sample_weight: Any = None
    global_batch: bool = False

    @property
    def num_replicas(self) -> int:
        return tf.distribute.get_strategy().num_replicas_in_sync

    def all_gather(self, value: Any, axis: int = 0) -> Any:
        """Concatenate ``value`` over the replicas of the current strategy (identity otherwise).

        Gradients flow back to each replica's own slice.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return value
        return ctx.all_gather(value, axis=axis)

"""What ``build_loss_graph`` receives besides tensors: config, time, state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras

from . import runtime
from .errors import PluginResultError

#: Variable names starting with this prefix are the core's own (a term's schedule weight).
RESERVED_PREFIX = "lossplug_"
#: The initializer names ``StateStore.variable`` accepts (any ``keras.initializers`` name or
#: object works; these are the common ones).
INITIALIZERS = ("zeros", "ones", "glorot_uniform", "glorot_normal", "he_normal", "random_normal")


class _Hidden:
    """Holds an object out of reach of Keras' attribute tracking."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@keras.saving.register_keras_serializable(package="lossplug")
class StateStore(keras.layers.Layer):
    """Variables one loss term owns (class centres, class weights, memory banks).

    The store is a Keras layer attached to the :class:`lossplug.LossModel`, so
    its variables are part of ``model.weights``: trainable ones are trained by
    the model's optimizer; all of them are checkpointed, saved in ``.keras`` and
    ``.weights.h5`` files and distributed like the model's own weights. Their
    paths are ``lossplug_state_<term>/<name>``; :meth:`lossplug.LossModel.term_state`
    returns them by name.

    Plugins create variables with :meth:`variable` inside ``build_loss_graph``;
    the core calls every plugin once when the model is compiled (the *probe*),
    which is when the variables are created. A plugin may also change
    non-trainable state by a rule of its own with :meth:`update`.

    The values are saved by the model (by term and variable name, see
    :class:`lossplug.state.TermStates`), not by the store itself.
    """

    def __init__(
        self, plugin: str = "", term: str = "", frozen: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.plugin = plugin
        self.term = term or plugin
        #: a term that is monitored, not trained (``compile(metrics=...)``): no variable
        #: of it is trainable
        self.frozen = bool(frozen)
        self._open = True
        self._by_name: dict[str, Any] = {}
        self._on_create = _Hidden(None)
        self.built = True

    def close(self) -> None:
        """No variable may be created after this (called once the term is probed)."""
        self._open = False

    def on_create(self, callback: Callable[[str, Any], None] | None) -> None:
        """Call ``callback(name, variable)`` after each new variable (deferred restores)."""
        self._on_create.value = callback

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

        Args:
            name: unique within the term; must not start with ``lossplug_``.
            shape: the variable's shape (ints); later calls must ask for the same.
            initializer: a ``keras.initializers`` name (``"zeros"``, ``"ones"``,
                ``"glorot_uniform"``, ``"random_normal"``, ...) or object.
            trainable: ``True``: trained by the model's optimizer. Create variables
                a config does not train with ``trainable=False`` (an unused trainable
                variable gets no gradient, and Keras warns "Gradients do not exist").
            dtype: float32 by default, also under a mixed-precision policy.
        """
        if name.startswith(RESERVED_PREFIX):
            raise PluginResultError(
                f"loss plugin {self.plugin!r}: state variable names starting with "
                f"{RESERVED_PREFIX!r} are reserved for the core; rename {name!r}"
            )
        return self._variable(
            name,
            shape,
            initializer,
            trainable=trainable,
            dtype=dtype,
            regularizer=regularizer,
            constraint=constraint,
        )

    def weight_variable(self) -> Any:
        """The core's variable holding a term weight computed in Python at each epoch."""
        return self._variable("lossplug_weight", (), "zeros", trainable=False, dtype="float32")

    def _variable(
        self,
        name: str,
        shape: tuple[int, ...],
        initializer: Any,
        *,
        trainable: bool,
        dtype: str,
        regularizer: Any = None,
        constraint: Any = None,
    ) -> Any:
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
        from . import backend

        with backend.current().init_scope():
            trainable = trainable and not self.frozen
            var = self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer,
                trainable=trainable,
                dtype=dtype,
                regularizer=regularizer,
                constraint=constraint,
                autocast=False,
                # Non-trainable state is updated by the plugin's own rule from the same
                # (global) batch on every replica: the replicas' values are one value.
                aggregation="mean" if not trainable else "none",
            )
        self._by_name[name] = var
        if self._on_create.value is not None:
            self._on_create.value(name, var)
        return var

    def update(self, name: str, value: Any) -> None:
        """Set the non-trainable state variable ``name`` to ``value`` after this training step.

        The core applies the new value once per training step, after the
        optimizer's update, and only if the step is applied (a step with a
        non-finite loss is skipped whole). Updates asked for outside training
        (``evaluate``, ``predict``, the compile-time probe) are ignored. Compute
        ``value`` without gradients (``keras.ops.stop_gradient``); under a
        data-parallel strategy compute it from the global batch
        (:meth:`Extras.all_gather`) so that every replica sets the same value.
        """
        var = self._by_name.get(name)
        if var is None:
            raise PluginResultError(
                f"loss plugin {self.plugin!r}: update({name!r}) names no state variable; "
                f"create it first with extras.state.variable({name!r}, shape, "
                "trainable=False)"
            )
        if var.trainable:
            raise PluginResultError(
                f"loss plugin {self.plugin!r}: update({name!r}) on a trainable variable; "
                "variables the plugin updates by its own rule must be created with "
                "trainable=False (the optimizer owns trainable ones)"
            )
        value = keras.ops.convert_to_tensor(value)
        if tuple(value.shape) != tuple(var.shape):
            raise PluginResultError(
                f"loss plugin {self.plugin!r}: update({name!r}) got shape {tuple(value.shape)}, "
                f"the variable has shape {tuple(var.shape)}"
            )
        scope = runtime.current()
        if scope is not None and scope.training:
            scope.updates.append((var, keras.ops.cast(value, var.dtype)))

    @property
    def plugin_variables(self) -> dict[str, Any]:
        """The plugin's variables by name (without the core's reserved ones)."""
        return {k: v for k, v in self._by_name.items() if not k.startswith(RESERVED_PREFIX)}

    def values(self) -> dict[str, Any]:
        """Current values as NumPy arrays, by name (for the conformance kit)."""
        return {name: keras.ops.convert_to_numpy(v) for name, v in self._by_name.items()}

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Assign ``{name: value}`` to existing variables (the kit, restores)."""
        for name, value in values.items():
            self._by_name[name].assign(value)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def save_own_variables(self, store: Any) -> None:
        """Nothing: :class:`lossplug.state.TermStates` saves every term's state by name."""

    def load_own_variables(self, store: Any) -> None:
        """Nothing: :class:`lossplug.state.TermStates` restores every term's state by name."""

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "plugin": self.plugin,
            "term": self.term,
            "frozen": self.frozen,
        }


class Extras(NamedTuple):
    """Everything besides tensors that a plugin's ``build_loss_graph`` receives.

    Immutable (a named tuple, which every backend's compiler traces through).

    Attributes:
        config: the validated ``Config`` instance of the plugin.
        epoch: scalar int tensor, the current epoch (0-based); changes without
            retracing the training step. Saved with the model.
        step: scalar int tensor, the optimizer's step counter.
        training: Python bool; ``False`` in ``evaluate``, ``predict`` and the probe.
        state: the term's :class:`StateStore`.
        term: the display name of the term (``"center"``, ``"logits_center"``).
        sample_weight: the batch's sample weights (or ``None``); the core
            already applies them to per-sample losses.
        global_batch: when ``True`` (``use(..., global_batch=True)``), batch-coupled
            plugins should gather embeddings with :meth:`all_gather` so that
            mining sees the global batch under a data-parallel strategy.
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
        """Replicas computing this step in parallel, each on its share of the batch."""
        from . import backend

        return backend.current().num_replicas()

    def all_gather(self, value: Any, axis: int = 0) -> Any:
        """Concatenate ``value`` over the replicas of the current strategy (identity otherwise).

        Gradients flow back to each replica's own slice.
        """
        from . import backend

        return backend.current().all_gather(value, axis=axis)

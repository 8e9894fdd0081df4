"""``TermStates``: every variable LossModel's terms need across steps, saved by name.

One layer per :class:`lossplug.LossModel` holds

* the *epoch clock* (``lossplug_epoch``): the epoch schedules of the epoch and
  plugins see as ``extras.epoch``; ``fit`` and :meth:`LossModel.set_epoch` set it;
* one :class:`lossplug.StateStore` per term, with the plugin's variables and, for
  a weight given as a Python callable, the weight's current value.

All of it is part of the model's weights, so it is checkpointed, saved and
distributed with them. It is saved *by name* (``epoch``, ``<term>::<variable>``)
rather than by position, so that a weights file restores the right values
whatever order the terms are compiled in, and so that it can be loaded into a
model whose terms do not exist yet: ``load_weights`` before ``compile`` keeps the
values it cannot place and assigns each one when ``compile`` creates that
variable (as Keras defers an optimizer's restore until the optimizer is built).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from .errors import CompileError
from .extras import StateStore

EPOCH_KEY = "epoch"
SEPARATOR = "::"


def _key(term: str, variable: str) -> str:
    return f"{term}{SEPARATOR}{variable}"


@keras.saving.register_keras_serializable(package="lossplug")
class TermStates(keras.layers.Layer):
    """The epoch clock and the terms' state stores of one LossModel (see the module)."""

    def __init__(self, name: str = "lossplug_terms", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        # int32, not int64: JAX (without x64) has no 64-bit integers.
        self.epoch = self.add_weight(
            name="lossplug_epoch", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.stores: list[StateStore] = []
        self._pending: dict[str, np.ndarray] = {}
        self.built = True

    # ------------------------------------------------------------------ stores
    def store_for(
        self, term: str, plugin: str, reuse: StateStore | None = None, *, frozen: bool = False
    ) -> StateStore:
        """The store of ``term``: ``reuse`` (a recompiled term keeps its state) or a new one.

        ``frozen``: the term is only monitored; none of its variables is trainable.
        """
        if reuse is not None and reuse.plugin == plugin and reuse.frozen == frozen:
            store = reuse
            store._open = True
        else:
            store = StateStore(
                plugin=plugin, term=term, frozen=frozen, name=f"lossplug_state_{term}"
            )
        store.on_create(lambda name, var: self._restore_pending(term, name, var))
        return store

    def keep(self, stores: list[StateStore]) -> None:
        """Make ``stores`` (one per compiled term) the model's; the others stop being saved."""
        for store in list(self.stores):
            if not any(store is s for s in stores):
                self.stores.remove(store)
        for store in stores:
            if not any(store is s for s in self.stores):
                self.stores.append(store)

    def by_term(self) -> dict[str, StateStore]:
        return {store.term: store for store in self.stores}

    # ------------------------------------------------------------------ saving
    def save_own_variables(self, store: Any) -> None:
        store[EPOCH_KEY] = keras.ops.convert_to_numpy(self.epoch)
        for term_store in self.stores:
            for name, var in term_store._by_name.items():
                store[_key(term_store.term, name)] = keras.ops.convert_to_numpy(var)
        for key, value in self._pending.items():  # restored but not yet placed: keep them
            store[key] = value

    def load_own_variables(self, store: Any) -> None:
        keys = list(store.keys())
        if EPOCH_KEY in keys:
            self.epoch.assign(np.asarray(store[EPOCH_KEY]).astype("int32"))
        stores = self.by_term()
        for key in keys:
            if key == EPOCH_KEY or SEPARATOR not in key:
                continue
            term, name = key.split(SEPARATOR, 1)
            value = np.asarray(store[key])
            target = stores.get(term)
            var = target._by_name.get(name) if target is not None else None
            if var is None:
                self._pending[key] = value  # compile creates it later
            else:
                _assign(term, name, var, value)

    def _restore_pending(self, term: str, name: str, var: Any) -> None:
        value = self._pending.pop(_key(term, name), None)
        if value is not None:
            _assign(term, name, var, value)

    def check_pending(self, terms: list[str]) -> None:
        """After compile: complain about restored state no compiled term could take."""
        mine = [k for k in self._pending if k.split(SEPARATOR, 1)[0] in terms]
        if mine:
            term, name = mine[0].split(SEPARATOR, 1)
            raise CompileError(
                f"the weights loaded before compile() hold the state variable {name!r} of "
                f"term {term!r}, but that term's plugin did not create such a variable when "
                "compiled (was the term compiled with another plugin or config?). Compile "
                "the model as it was when the weights were saved, then load them again."
            )
        others = sorted({k.split(SEPARATOR, 1)[0] for k in self._pending})
        if others:
            warnings.warn(
                f"the weights loaded before compile() hold state of the terms {others}, which "
                f"this compile does not define (its terms: {terms}); that state is kept and "
                "restored if a later compile defines those terms.",
                stacklevel=3,
            )

    def term_state(self, term: str) -> Mapping[str, Any]:
        store = self.by_term().get(term)
        return {} if store is None else store.plugin_variables


def _assign(term: str, name: str, var: Any, value: np.ndarray) -> None:
    if tuple(value.shape) != tuple(var.shape):
        raise CompileError(
            f"cannot restore the state variable {name!r} of term {term!r}: the weights hold "
            f"shape {tuple(value.shape)}, the compiled term created shape {tuple(var.shape)} "
            "(compile the term with the config it was saved with, e.g. the same num_classes)"
        )
    var.assign(value.astype(keras.backend.standardize_dtype(var.dtype)))


__all__ = ["TermStates"]

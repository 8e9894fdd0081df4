"""PyTorch: Keras' eager torch training step with lossplug's finite guard.

Keras 3's torch trainer runs eagerly by default (``jit_compile=True`` wraps the
step in ``torch.compile``). lossplug's ``train_step`` is Keras' with the
optimizer update and the plugins' state updates applied only when the step's
loss and gradients are finite. Keras 3.15 has no data-parallel strategy for
torch (``keras.distribution`` is JAX-only): one process trains on one device,
so ``all_gather`` is the identity.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import torch

NAME = "torch"


def num_replicas() -> int:
    return 1


def all_gather(value: Any, axis: int = 0) -> Any:
    return value


def per_replica(
    call: Callable[[dict, dict], Any], inputs: dict, outputs: dict, *, scalar: bool
) -> Any:
    """The term over this replica's share: what the step computes already (see jax.py)."""
    return call(inputs, outputs)


def all_replicas_true(flag: Any) -> Any:
    return flag


def init_scope() -> Any:
    return contextlib.nullcontext()


def is_traced(value: Any) -> bool:
    """Whether ``torch.compile`` is tracing (values are then not concrete)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def host_callbacks_available() -> bool:
    return True


def host_check(value: Any, bad: Any, on_host: Callable[..., None], *args: Any) -> Any:
    """Under ``torch.compile``: a Python check (a graph break) that calls ``on_host`` if ``bad``."""
    if bool(bad):
        on_host(*[np.asarray(keras.ops.convert_to_numpy(a)) for a in args])
    return value


def sync_training_state(model: Any) -> None:
    """Nothing to do: torch updates variables in place."""


def training_value(model: Any, variable: Any) -> Any:
    """``variable``'s value: torch trains the variables themselves."""
    return variable.value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    yield


def check_compile(model: Any, steps_per_execution: int) -> None:
    """Nothing to refuse on torch."""


def gradient_values(gradient: Any) -> Any:
    return gradient


def track_new_variables(model: Any) -> None:
    """Register variables created after the model was built as the torch module's parameters.

    Keras' torch layers snapshot their variables into a ``ParameterDict`` when built; the
    terms' state is created later, at compile. Unregistered, ``model.zero_grad()`` (called
    by every training step) would not clear their gradients, which would then add up from
    step to step.
    """
    model._track_variables()


def keras_loss_prediction(y_pred: Any) -> Any:
    """``y_pred`` as a Keras loss receives it: the same tensor, stored (B, C, H, W) if rank 4.

    Keras 3.15's torch ``sparse_categorical_crossentropy`` of probabilities moves the class
    axis of a rank-4 prediction to axis 1 (``movedim``, a strided view) and passes log p to
    ``torch.nn.functional.nll_loss``, whose 4-D backward (``nll_loss2d``) needs a contiguous
    input: every segmentation model trained on it fails in ``loss.backward()`` with
    "grad_input must be contiguous" (pytorch/pytorch#175084; a plain ``keras.Model`` too).
    Stored class axis first, that view is contiguous. Shape, values and gradients are
    unchanged; other ranks are returned as they are.
    """
    if len(y_pred.shape) != 4:
        return y_pred
    return y_pred.movedim(-1, 1).contiguous().movedim(1, -1)


class Trainer:
    """Keras' torch ``train_step`` with lossplug's guard around the update."""

    def train_step(self, data: Any) -> Any:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True) if self._call_has_training_arg else self(x)
        self.zero_grad()
        with self._lossplug_in_step(defer_updates=True):
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
        record = self._lossplug_take_record()
        self._loss_tracker.update_state(
            loss, sample_weight=next(i for i in keras.tree.flatten(x) if i is not None).shape[0]
        )
        if self.optimizer is not None:
            loss = self.optimizer.scale_loss(loss)
        variables, gradients = self.trainable_weights[:], None
        if variables:
            loss.backward()
            gradients = [v.value.grad for v in variables]
        else:  # no optimizer step, but the plugins' own rules still run once per step
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
        ok = True
        if self._lossplug.value["check_finite"]:
            ok = bool(self._lossplug_step_ok(record, gradients))
        with torch.no_grad():
            if ok:
                if variables:
                    self.optimizer.apply(gradients, variables)
                record.apply_updates()
            else:
                self._lossplug_guard.fail()
        return self._lossplug_logs(self.compute_metrics(x, y, y_pred, sample_weight))

    def test_step(self, data: Any) -> Any:
        with self._lossplug_in_step(defer_updates=False):
            return super().test_step(data)

    def _lossplug_logs(self, logs: Any) -> Any:
        return logs


# ---------------------------------------------------------------------- float64
#: The torch functions behind the ``keras.ops`` that Keras 3.15 computes in float32 for
#: float64 tensors: its dtype promotion (``keras.backend.result_type``) maps float64 to
#: float32 on every backend but TensorFlow, and these ops cast their inputs to that type.
#: :mod:`lossplug.numerics` calls them, with float64 arguments only, in place of the Keras
#: op (see docs/decisions.md, upstream limitations).
FLOAT64_OPS: dict[str, Callable[..., Any]] = {
    "arctan2": torch.arctan2,
    "cos": torch.cos,
    "cumsum": torch.cumsum,
    "floor": torch.floor,
    "logaddexp": torch.logaddexp,
    "matmul": torch.matmul,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
}


__all__ = [
    "FLOAT64_OPS",
    "NAME",
    "Trainer",
    "all_gather",
    "all_replicas_true",
    "check_compile",
    "gradient_values",
    "host_callbacks_available",
    "host_check",
    "init_scope",
    "is_traced",
    "keras_loss_prediction",
    "num_replicas",
    "per_replica",
    "quiet",
    "sync_training_state",
    "track_new_variables",
    "training_value",
]


# ---------------------------------------------------------------------- the conformance kit
#: Keras' torch trainer compiles with ``torch.compile``; the kit captures the graph the same
#: way (dynamo, dynamic shapes) with the ``aot_eager`` backend, which checks that the plugin
#: traces without the minutes a C++ code generation takes on CPU.
KIT_MODES = {"compiled": "torch.compile(backend='aot_eager')"}


def kit_scope() -> Any:
    return contextlib.nullcontext()


def kit_compile(fn: Callable[..., Any], mode: str, args: Any, dynamic: Any, variables: Any) -> Any:
    return torch.compile(fn, backend="aot_eager", dynamic=True)


def kit_gradients(fn: Callable[[dict], Any], tensors: dict, variables: list) -> Any:
    """(objective, aux, gradients by tensor name, gradients of ``variables``), via autograd."""
    watched = {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items()}
    objective, aux = fn(watched)
    params = [v.value for v in variables]
    targets = [*watched.values(), *params]
    if targets and objective.requires_grad:
        grads = list(torch.autograd.grad(objective, targets, allow_unused=True))
    else:  # the objective depends on none of them
        grads = [None] * len(targets)
    names = list(watched)
    by_name = dict(zip(names, grads[: len(names)], strict=True))
    return objective, aux, by_name, list(grads[len(names) :])

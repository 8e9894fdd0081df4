"""The hooks a lossplug plugin implements.

A plugin is a module (or any object) registered through the ``lossplug``
entry-point group, or in-process with :func:`lossplug.register`. It implements
two hooks, marked with :data:`lossplug.hookimpl`:

``lossplug_spec()``
    returns the plugin's :class:`lossplug.PluginSpec`: its name, description,
    ``Config`` class, the tensors it reads and the properties it claims.

``build_loss_graph(inputs, outputs, extras)``
    computes the loss.

Calling a named loss calls exactly that plugin's implementation: the core asks
pluggy for a hook caller that holds only that plugin (plus any *wrapper*
hookimpls, see below), so plugins never see each other's calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .extras import Extras
    from .specs import LossResult, PluginSpec

PROJECT_NAME = "lossplug"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorator marking a plugin's hook implementations, e.g. ``@lossplug.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def lossplug_spec() -> PluginSpec:  # type: ignore[empty-body]
    """Describe the plugin.

    Return a :class:`lossplug.PluginSpec`. The registry calls this once, when
    the plugin is first used, and validates the result: a spec whose name differs
    from the entry-point name, or whose ``api_version`` differs from
    :data:`lossplug.API_VERSION`, is refused with an error naming both values.
    """


@hookspec(firstresult=True)
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: Extras
) -> LossResult | Any:  # type: ignore[empty-body]
    """Compute one loss term.

    Args:
        inputs: read-only mapping of what the data provides. For a single-output
            model: ``"y_true"`` (the target of that output, if ``fit`` got one)
            and each model input under its name (``"x"`` too when the model has
            a single input). For a term attached to one output of a
            multi-output model, ``"y_true"`` is that output's target; every
            output's target is also present as ``"<output name>"``.
        outputs: read-only mapping of what the model computes: ``"y_pred"``
            (the prediction of the term's output), each output under its layer
            name, and every layer exposed with ``LossModel(..., expose=[...])``.
            When the user binds tensors (``lossplug.use(name, bind={...})``),
            the plugin still reads them under the names its spec declares.
        extras: an :class:`lossplug.Extras` holding ``config`` (the validated
            ``Config`` instance), ``epoch`` and ``step`` (scalar tensors that
            change without retracing), ``training`` (Python bool), ``state``
            (create trainable or non-trainable variables with
            ``extras.state.variable(...)``; they are saved with the model) and
            ``all_gather`` (concatenate a tensor across replicas of a
            ``tf.distribute`` strategy; identity otherwise). A non-trainable
            variable the plugin moves by its own rule is set with
            ``extras.state.update(name, value)``: the core assigns ``value``
            once per training step, after the optimizer's update and only if the
            step is applied (finite), never in ``evaluate``, ``predict`` or the
            compile-time probe. Compute ``value`` with ``keras.ops.stop_gradient``
            from the global batch (``extras.all_gather``) so every replica
            assigns the same value.

    Returns:
        A :class:`lossplug.LossResult` with ``loss`` and optional ``metrics``,
        or a bare tensor (taken as ``loss``). ``loss`` is either *per sample*
        (shape ``(batch,)`` or ``(batch, ...)``) or a scalar the plugin already
        reduced over the batch; ``None`` for metric-only plugins.

    Reduction is the core's job, not the plugin's: per-sample losses are
    weighted by ``sample_weight``, cast to float32 (mixed precision), averaged
    over the batch and scaled for ``tf.distribute`` by the core, exactly as
    Keras reduces its own losses (``"sum_over_batch_size"``). A scalar result
    is only scaled for distribution. Metrics are averaged over the epoch
    (weighted by batch size) unless wrapped in :class:`lossplug.Metric` with
    ``aggregation="sum"``.

    Use ``keras.ops`` (or TensorFlow) operations only: the function is traced
    inside compiled training steps and must not depend on Python-side state
    other than ``extras``.
    """

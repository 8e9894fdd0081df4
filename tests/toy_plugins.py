"""Small in-process plugins for the core's own tests (not shipped losses)."""

from __future__ import annotations

import attrs
import keras
import lossplug
from keras import ops
from lossplug import Kind, LossResult, PluginSpec, TensorSpec, hookimpl, param


@attrs.frozen
class CEConfig:
    from_logits: bool = param(True, doc="y_pred holds logits")


class SparseCE:
    """Sparse categorical cross-entropy, per sample."""

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name="toy_ce",
            description="sparse categorical cross-entropy (test plugin)",
            config=CEConfig,
            tensors=(
                TensorSpec(
                    "y_true", Kind.SPARSE_LABELS, source="inputs", shape=("B",), classes="C"
                ),
                TensorSpec("y_pred", Kind.LOGITS, shape=("B", "C")),
            ),
            properties=(lossplug.properties.NonNegative(),),
        )

    @hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        return keras.losses.sparse_categorical_crossentropy(
            inputs["y_true"], outputs["y_pred"], from_logits=extras.config.from_logits
        )


@attrs.frozen
class CenterConfig:
    num_classes: int = param(10, low=1)
    with_metric: bool = param(True, doc="also report the mean feature norm")


class ToyCenter:
    """||x - c_y||^2 with trainable centres, plus a metric."""

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name="toy_center",
            description="center loss (test plugin)",
            config=CenterConfig,
            tensors=(
                TensorSpec("features", Kind.EMBEDDINGS, shape=("B", "D")),
                TensorSpec(
                    "y_true",
                    Kind.SPARSE_LABELS,
                    source="inputs",
                    shape=("B",),
                    classes="num_classes",
                ),
            ),
        )

    @hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        features = ops.cast(outputs["features"], "float32")
        centers = extras.state.variable(
            "centers", (extras.config.num_classes, features.shape[-1]), "zeros"
        )
        labels = ops.cast(ops.reshape(inputs["y_true"], (-1,)), "int32")
        diff = features - ops.take(centers, labels, axis=0)
        per_sample = ops.sum(diff * diff, axis=-1)
        if not extras.config.with_metric:
            return per_sample
        return LossResult(per_sample, metrics={"mean_norm": ops.mean(ops.norm(features, axis=-1))})


@attrs.frozen
class EmptyConfig:
    pass


class EpochProbe:
    """Loss = epoch as a float (for schedule/epoch plumbing tests), per sample.

    ``calls`` counts Python calls, i.e. the compile-time probe plus one per trace.
    """

    calls = 0

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name="toy_epoch",
            description="returns the epoch (test plugin)",
            config=EmptyConfig,
            tensors=(TensorSpec("y_pred", Kind.ANY),),
        )

    @hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        EpochProbe.calls += 1
        batch = ops.shape(outputs["y_pred"])[0]
        return ops.ones((batch,), "float32") * ops.cast(extras.epoch, "float32") + 0.0 * ops.sum(
            ops.cast(outputs["y_pred"], "float32"), axis=-1
        )


class BatchSpread:
    """Scalar, batch-coupled: mean squared distance of the features to the batch mean.

    With ``use(..., global_batch=True)`` the batch is gathered across replicas, so
    the value and its gradients are those of the global batch.
    """

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name="toy_spread",
            description="batch spread of the features (test plugin)",
            config=EmptyConfig,
            tensors=(TensorSpec("features", Kind.EMBEDDINGS, shape=("B", "D")),),
            batch_coupled=True,
            returns="scalar",
        )

    @hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        features = ops.cast(outputs["features"], "float32")
        if extras.global_batch:
            features = extras.all_gather(features)
        centered = features - ops.mean(features, axis=0, keepdims=True)
        return ops.mean(ops.sum(centered * centered, axis=-1))


@attrs.frozen
class NanAtConfig:
    epoch: int = param(1, low=0, doc="the epoch from which marked samples give NaN")
    value: float = param(float("nan"), doc="what marked samples give (NaN or inf)")


class NanAt:
    """mean(y_pred^2) per sample, but ``value`` for samples with x[:, 0] > 100 from ``epoch`` on.

    For the finite guard's tests: the bad value first appears at a chosen epoch and
    batch (wherever the marked samples are).
    """

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name="toy_nan_at",
            description="NaN at a chosen epoch for marked samples (test plugin)",
            config=NanAtConfig,
            tensors=(
                TensorSpec("x", Kind.REAL, source="inputs"),
                TensorSpec("y_pred", Kind.REAL),
            ),
        )

    @hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        pred = ops.cast(outputs["y_pred"], "float32")
        clean = ops.mean(pred * pred, axis=-1)
        marked = ops.cast(inputs["x"], "float32")[:, 0] > 100.0
        late = extras.epoch >= extras.config.epoch
        return ops.where(ops.logical_and(marked, late), extras.config.value, clean)


class NanGradientAt:
    """mean(y_pred^2) per sample plus a term that is 0 with a NaN gradient for samples with
    x[:, 0] > 100 from ``epoch`` on: sqrt(u) at u = (y_pred - stop_gradient(y_pred))^2 = 0
    has derivative inf * 0. The loss stays finite; only the gradient is not.
    """

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name="toy_nan_gradient_at",
            description="finite loss, NaN gradient at a chosen epoch for marked samples",
            config=NanAtConfig,
            tensors=(
                TensorSpec("x", Kind.REAL, source="inputs"),
                TensorSpec("y_pred", Kind.REAL),
            ),
        )

    @hookimpl
    def build_loss_graph(self, inputs, outputs, extras):
        pred = ops.cast(outputs["y_pred"], "float32")
        clean = ops.mean(pred * pred, axis=-1)
        marked = ops.cast(inputs["x"], "float32")[:, 0] > 100.0
        bad = ops.logical_and(marked, extras.epoch >= extras.config.epoch)
        # the other rows take sqrt(1) (a constant), so no NaN reaches their gradient
        u = ops.where(bad[:, None], ops.square(pred - ops.stop_gradient(pred)), 1.0)
        return clean + ops.where(bad, ops.sum(ops.sqrt(u), axis=-1), 0.0)

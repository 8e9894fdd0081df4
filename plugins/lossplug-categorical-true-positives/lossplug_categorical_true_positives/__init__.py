"""A metric plugin: the number of correct arg-max predictions, accumulated over the epoch.

With predictions y_pred of shape (B, C) (logits or probabilities, C >= 2) and
labels y_true, sparse (shape (B,) or (B, 1)) or one-hot (shape (B, C))::

    label_b = y_true_b                  (sparse)   or   argmax_c y_true_b,c   (one-hot)
    count   = sum_b w_b * [argmax_c y_pred_b,c == label_b]

with w_b the batch's sample weights (1 without them). The per-batch counts are
summed over the epoch (``lossplug.Metric(count, aggregation="sum")``) and reset
at the start of every epoch, and of every ``evaluate``, so the value in
``History`` is the number of correctly classified training samples of that
epoch (with dropout and the weights as they were at each batch), and the value
from ``evaluate`` is the number of correct ``predict`` arg-maxes. Ties in
y_pred go to the first maximal class, as ``numpy.argmax``. The plugin returns no
loss (``returns="metrics"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
from keras import ops
from lossplug import Kind, LossResult, Metric, PluginSpec, TensorSpec

NAME = "categorical_true_positives"


@attrs.frozen
class Config:
    """``categorical_true_positives`` has no hyper-parameters."""


def labels_of(y_true: Any, num_classes: int | None) -> Any:
    """Class ids, shape (B,), int32, from sparse (B,) / (B, 1) or one-hot (B, C) targets."""
    y_true = ops.convert_to_tensor(y_true)
    one_hot = (
        len(y_true.shape) >= 2
        and y_true.shape[-1] is not None
        and y_true.shape[-1] > 1
        and (num_classes is None or y_true.shape[-1] == num_classes)
    )
    if one_hot:
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def correct(y_true: Any, y_pred: Any) -> Any:
    """1.0 where argmax(y_pred) equals the label, else 0.0, shape (B,), float32."""
    y_pred = ops.convert_to_tensor(y_pred)
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    return ops.cast(ops.equal(predicted, labels_of(y_true, y_pred.shape[-1])), "float32")


def true_positive_count(y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
    """sum_b w_b * [argmax y_pred_b == label_b], a float32 scalar."""
    hits = correct(y_true, y_pred)
    if sample_weight is not None:
        hits = hits * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.sum(hits)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return PluginSpec(
        name=NAME,
        description="metric: number of correct arg-max predictions, summed over the epoch",
        config=Config,
        tensors=(
            TensorSpec(
                "y_true",
                Kind.LABELS,
                source="inputs",
                classes="C",
                description="sparse (B,) or one-hot (B, C) labels",
            ),
            TensorSpec(
                "y_pred",
                Kind.ANY,
                shape=("B", "C"),
                description="class scores: logits or probabilities (the arg-max is the same)",
            ),
        ),
        returns="metrics",
    )


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> LossResult:
    y_pred = outputs["y_pred"]
    if y_pred.shape[-1] == 1:
        raise lossplug.PluginConfigError(
            f"metric plugin {NAME!r}: y_pred has shape {tuple(y_pred.shape)}, a single class, "
            "whose arg-max is always 0; it needs scores for C >= 2 classes (for a binary "
            "sigmoid output use keras.metrics.BinaryAccuracy or TruePositives)"
        )
    count = true_positive_count(inputs["y_true"], y_pred, extras.sample_weight)
    return LossResult(loss=None, metrics={NAME: Metric(count, aggregation="sum")})


__all__ = [
    "Config",
    "build_loss_graph",
    "correct",
    "labels_of",
    "lossplug_spec",
    "true_positive_count",
]

"""Center loss in ``keras.ops`` (imported lazily by the plugin).

For features x_i (shape (B, D), or (B, ...) flattened), integer labels y_i and
class centres c (shape (num_classes, D)):

    loss_i = 1/2 * ||x_i - c_{y_i}||^2 = 1/2 * sum_d (x_id - c_{y_i d})^2

The centre-rate alpha scales only the gradient that reaches the centres:

    c_eff = alpha * c + (1 - alpha) * stop_gradient(c)

c_eff equals c in value, and d loss / d c = alpha * d loss / d c_eff, so the
optimizer moves the centres alpha times as fast as it would move an ordinary
weight with the same gradient (exactly so for SGD, with or without momentum).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import InvalidTensorError, numerics

PLUGIN = "center"


def class_ids(y_true: Any, num_classes: int) -> Any:
    """int32 class ids of shape (B,) from ids (B,) / (B, 1), or one-hot rows (B, num_classes)."""
    shape = tuple(y_true.shape)
    if len(shape) == 2 and shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif len(shape) == 2 and shape[-1] == num_classes and num_classes > 1:
        y_true = ops.argmax(y_true, axis=-1)
    elif len(shape) != 1:
        raise InvalidTensorError(
            f"loss plugin {PLUGIN!r}: y_true must hold class ids of shape (batch,) (or one-hot "
            f"rows of shape (batch, num_classes={num_classes})), got shape {shape}"
        )
    # Checked also in compiled graphs: on GPU an out-of-range id would silently
    # gather a zero centre instead of failing.
    return numerics.class_ids(y_true, num_classes, plugin=PLUGIN, field="num_classes")


def effective_centers(centers: Any, alpha: float) -> Any:
    """Centres whose value is ``centers`` but whose gradient is scaled by alpha.

    The product with alpha (also alpha = 1) makes the centres' gradient a dense
    tensor. Gathering straight from the variable would give ``tf.IndexedSlices``
    with one slice per sample, repeated for every sample of a class, and Keras
    3's Adam squares those slices before summing them (sum of squares instead of
    square of sum), so its steps for a class with k samples in the batch would be
    up to sqrt(k) times too large.
    """
    if alpha == 0.0:
        return ops.stop_gradient(centers)
    scaled = alpha * ops.convert_to_tensor(centers)
    if alpha == 1.0:
        return scaled
    return scaled + (1.0 - alpha) * ops.stop_gradient(centers)


def center_loss(features: Any, labels: Any, centers: Any, alpha: float = 1.0) -> Any:
    """Per-sample 1/2 ||x_i - c_{y_i}||^2, shape (B,).

    Args:
        features: float tensor (B, D) (or (B, ...), matching ``centers.shape[1:]``).
        labels: int32 class ids (B,).
        centers: the (num_classes, D) centre variable (or tensor).
        alpha: the centre-rate in [0, 1] (see the module docstring).
    """
    features = ops.cast(features, "float32")
    c_y = ops.take(effective_centers(centers, alpha), labels, axis=0)
    return 0.5 * numerics.reduce_trailing(ops.square(features - c_y), "sum")

"""Center loss in ``keras.ops`` (imported lazily by the plugin).

For features x_i (shape (B, D), or (B, ...) flattened), integer labels y_i and
class centres c (shape (num_classes, D)):

    loss_i = 1/2 * ||x_i - c_{y_i}||^2 = 1/2 * sum_d (x_id - c_{y_i d})^2

The centre-rate alpha scales only the gradient that reaches the centres:

    c_eff = alpha * c + (1 - alpha) * stop_gradient(c)

c_eff equals c in value, and d loss / d c = alpha * d loss / d c_eff, so the
optimizer moves the centres alpha times as fast as it would move an ordinary
weight with the same gradient (exactly so for SGD, with or without momentum).

With ``update="paper"`` no gradient reaches the centres (alpha = 0 above) and
:func:`paper_update` computes their next value by Wen et al.'s rule instead.
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


def paper_update(
    features: Any, labels: Any, centers: Any, alpha: float, weights: Any = None
) -> Any:
    """The centres after one step of Wen et al. 2016's rule (their eq. 4 and Algorithm 1).

    For the samples i of the batch (the global batch under data parallelism), with
    sample weights w_i (1 when ``weights`` is None):

        n_j       = sum_{i: y_i = j} w_i
        delta_c_j = sum_{i: y_i = j} w_i (c_j - x_i) / (1 + n_j)
        c_j      <- c_j - alpha * delta_c_j

    With unit weights this is the paper's rule; a weight counts its sample w_i
    times (0: the sample does not move its centre). A class absent from the
    batch keeps its centre. Computed in float32 without gradients, densely (a
    one-hot (B, num_classes) matrix), so it compiles alike on every backend.

    Args:
        features: float tensor (B, D) (or (B, ...) matching ``centers.shape[1:]``).
        labels: checked int32 class ids (B,).
        centers: the (num_classes, D) centre variable (or tensor).
        alpha: the centre rate in [0, 1].
        weights: per-sample weights (B,), or None.

    Returns:
        float32 tensor of ``centers``' shape.
    """
    centers = ops.stop_gradient(ops.cast(ops.convert_to_tensor(centers), "float32"))
    shape = tuple(centers.shape)
    num_classes = shape[0]
    c = ops.reshape(centers, (num_classes, -1))
    x = ops.reshape(ops.stop_gradient(ops.cast(features, "float32")), (-1, c.shape[1]))
    member = ops.one_hot(labels, num_classes, dtype="float32")  # (B, num_classes)
    if weights is not None:
        member = member * ops.stop_gradient(ops.cast(weights, "float32"))[:, None]
    counts = ops.sum(member, axis=0)[:, None]  # n_j, (num_classes, 1)
    sums = ops.matmul(ops.transpose(member), x)  # sum_i w_i x_i per class, (num_classes, D)
    delta = (counts * c - sums) / (1.0 + counts)
    return ops.reshape(c - alpha * delta, shape)

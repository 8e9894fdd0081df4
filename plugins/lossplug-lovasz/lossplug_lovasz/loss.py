"""Lovasz-softmax and Lovasz hinge losses in ``keras.ops`` (imported lazily by the plugin).

Berman, Rannen Triki & Blaschko 2018, "The Lovasz-Softmax loss: a tractable surrogate for
the optimization of the intersection-over-union measure in neural networks" (CVPR).
For one image and one class c with targets t_i (0/1) and errors m_i >= 0 over its S
pixels, sort the errors in decreasing order, m_(1) >= ... >= m_(S), carrying the
targets along; with G = sum_i t_i, the paper's Algorithm 1 gives

    J_k = 1 - (G - sum_{j<=k} t_(j)) / (G + sum_{j<=k} (1 - t_(j)))       k = 1..S
    g_1 = J_1,   g_k = J_k - J_(k-1)
    loss_c = sum_k m_(k) g_k

the Lovasz extension of the Jaccard loss 1 - IoU, evaluated at m (for 0/1 errors it
is exactly 1 - IoU of class c). The errors are

    softmax mode (probabilities p):     m_i = |t_i - p_i|
    binary mode (logits z, hinge):      m_i = max(0, 1 - z_i (2 t_i - 1))

and the loss of an image is the mean of loss_c over its classes: the classes present
in its target ("present") or all of them ("all"); an image with no class to count
contributes 0. Everything is batched over images and classes: one sort of (B, C, S).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug.numerics import cumsum, maximum, segmentation_masks

PLUGIN = "lovasz"


def lovasz_extension(errors: Any, targets: Any, *, values: Any = None) -> Any:
    """sum_k v_(k) g_k per row: the Lovasz extension of the Jaccard loss, shape (..., ).

    ``errors`` and ``targets`` have shape (..., S); the pixels are ordered by decreasing
    ``errors``, the targets carried along, and the Jaccard gradient g of Algorithm 1 is
    applied to ``values`` (default: the errors themselves; the hinge passes max(0, errors)).
    g depends on the targets and the order only, so the loss is piecewise linear in the
    errors, with gradient g.
    """
    values = errors if values is None else values
    order = ops.argsort(-errors, axis=-1)
    ranked = ops.take_along_axis(values, order, axis=-1)
    ranked_targets = ops.take_along_axis(targets, order, axis=-1)
    total = ops.sum(targets, axis=-1, keepdims=True)
    intersection = total - cumsum(ranked_targets, axis=-1)
    union = total + cumsum(1.0 - ranked_targets, axis=-1)
    # union >= 1 for 0/1 targets (>= G > 0, or k when G = 0); kept safe for any targets
    safe = ops.where(union > 0.0, union, ops.ones_like(union))
    jaccard = 1.0 - ops.where(union > 0.0, intersection / safe, ops.zeros_like(union))
    previous = ops.concatenate([ops.zeros_like(jaccard[..., :1]), jaccard[..., :-1]], axis=-1)
    # J is non-decreasing in k, so g >= 0; the clamp removes float rounding below 0
    grad = maximum(jaccard - previous, 0.0)
    return ops.sum(ranked * grad, axis=-1)


def lovasz_loss(y_true: Any, y_pred: Any, *, mode: str = "softmax", classes: str = "auto") -> Any:
    """Per-image Lovasz-softmax (mode="softmax") or Lovasz hinge (mode="binary") loss, (B,).

    ``classes``: "present" averages over the classes present in each image's target,
    "all" over every class; "auto" is "present" in softmax mode and "all" in binary mode
    (as the paper's code). See the module docstring for the math.
    """
    t, p = segmentation_masks(y_true, y_pred, plugin=PLUGIN)
    t, p = ops.transpose(t, (0, 2, 1)), ops.transpose(p, (0, 2, 1))  # (B, C, S)
    if mode == "binary":
        errors = 1.0 - p * (2.0 * t - 1.0)
        per_class = lovasz_extension(errors, t, values=ops.relu(errors))
    else:
        per_class = lovasz_extension(ops.abs(t - p), t)
    if classes == "auto":
        classes = "all" if mode == "binary" else "present"
    if classes == "present":
        counted = ops.cast(ops.sum(t, axis=-1) > 0.0, per_class.dtype)
    else:
        counted = ops.ones_like(per_class)
    number = ops.sum(counted, axis=-1)
    return ops.sum(per_class * counted, axis=-1) / maximum(number, 1.0)

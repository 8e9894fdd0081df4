"""The per-sample margin softmax loss: over every class, or over a sample of them.

For features x (B, D), labels y (B,) and class weights W (D, C' * K), C' classes of
K sub-centres each (column j * K + k is sub-centre k of class j):

    c_j = max_k <x / ||x||, W_jk / ||W_jk||>       cosine to class j
    z_j = s * c_j (j != y),   z_y = s * phi(c_y)    margin on the target only
    loss = logsumexp_j z_j - z_y

:func:`margin_softmax_loss` is this over all C classes (C' = C).
:func:`sampled_margin_softmax_loss` is the same over the classes of
:func:`lossplug_margin_softmax.sampling.sample_classes`: W restricted to the
sampled columns by a gather, the labels remapped to their position in the
sample, so that

    loss_i = logsumexp_{j in S} z_ij - z_{i, y_i},     S = sampled classes, y_i in S

with the (B, |S|) logits, not (B, C), and a gradient of W that is exactly zero
outside the sampled columns (a gather's gradient).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug.numerics import categorical_log_probabilities, compute_dtype, l2_normalize, matmul

from .margins import cosine_and_sine, target_logit
from .sampling import Sample, sample_classes, sample_size, sampled_columns


def margin_logits(
    features: Any, labels: Any, weights: Any, config: Any, num_classes: Any = None
) -> tuple[Any, Any]:
    """(the logits z (B, C'), the target logits z_y (B,)) with the margin on the target.

    ``num_classes`` is C' (default ``config.num_classes``; a scalar tensor is allowed),
    ``weights`` has C' * K columns and ``labels`` lie in [0, C').
    """
    classes = config.num_classes if num_classes is None else num_classes
    dtype = compute_dtype(features)
    # bounded, finite gradients at (and near) zero features or weight columns
    x = l2_normalize(ops.cast(features, dtype), axis=1)
    w = l2_normalize(ops.cast(weights, dtype), axis=0)
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    scale = config.scale
    # s * c: the scale applied to the (B, D) features, not to the (B, C' * K) product
    logits = matmul(x * scale, w)  # the only (batch, classes) matrix
    target_columns = labels
    if config.sub_centers > 1:
        logits, target_columns = nearest_sub_centers(logits, labels, classes, config.sub_centers)
    # The target class, per sample and accurately: its unit weight, cosine and sine.
    target_weights = ops.transpose(ops.take(w, target_columns, axis=1))  # (B, D)
    cos_y, sin_y = cosine_and_sine(x, target_weights)
    phi = target_logit(
        cos_y,
        sin_y,
        config.kind,
        config.resolved_margin,
        easy_margin=config.easy_margin,
        sphere_lambda=config.sphere_lambda,
    )
    # z_y replaces s * c_y in place: B writes (and their gradient), not a (B, C') select
    rows = ops.arange(ops.shape(labels)[0], dtype="int32")
    target = scale * phi
    logits = ops.scatter_update(logits, ops.stack([rows, labels], axis=1), target)
    return logits, target


def margin_softmax_loss(features: Any, labels: Any, weights: Any, config: Any) -> Any:
    """Per-sample angular-margin softmax loss (B,) over all classes, for features (B, D),
    labels (B,) and W (D, C * K), K = ``config.sub_centers``."""
    logits, _ = margin_logits(features, labels, weights, config)
    return cross_entropy(logits, labels)


def sampled_margin_logits(
    features: Any, labels: Any, weights: Any, config: Any, seed: Any, step: Any
) -> tuple[Any, Any, Sample]:
    """(the logits (B, width), the target logits (B,), the :class:`Sample`) of a sampled step.

    The classes are max(|P|, ceil(r * C)), r = ``config.sample_rate`` (see
    :mod:`lossplug_margin_softmax.sampling`), drawn from ``seed`` and ``step`` (integer-valued
    scalars); column t of the logits is class ``sample.classes[t]``, columns
    past ``sample.used`` are -inf. ``labels`` must already lie in [0, C).
    """
    num_classes, sub_centers = config.num_classes, config.sub_centers
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    size = sample_size(config.sample_rate, num_classes)
    sample = sample_classes(labels, num_classes, size, seed, step)
    # a gather from W itself: its gradient is zero outside the sampled columns
    sampled = ops.take(weights, sampled_columns(sample.classes, sub_centers), axis=1)
    logits, target = margin_logits(features, sample.labels, sampled, config, sample.width)
    if sample.mask is not None:  # columns past max(|P|, n), only when B > n
        logits = ops.where(sample.mask[None, :], logits, float("-inf"))
    return logits, target, sample


def sampled_margin_softmax_loss(
    features: Any, labels: Any, weights: Any, config: Any, seed: Any, step: Any
) -> Any:
    """Per-sample loss (B,) over the batch's classes plus random others (Partial FC).

    See :func:`sampled_margin_logits`. It always samples, also when ceil(r * C) = C
    (then every class is used, in another order: the full loss up to rounding).
    """
    logits, _, sample = sampled_margin_logits(features, labels, weights, config, seed, step)
    return cross_entropy(logits, sample.labels)


def cross_entropy(logits: Any, labels: Any) -> Any:
    """-log softmax(z)_y = logsumexp_j z_j - z_y per sample, for logits (B, C) and labels (B,).

    One log-softmax over the (B, C) logits (a single fused kernel forward and backward
    on every backend, -inf columns allowed) and a gather of each sample's target column:
    about half the time of ``logsumexp(z) - z_y`` on PyTorch at 100,000 classes, whose
    backward makes three passes over (B, C).
    """
    labels = ops.cast(ops.reshape(labels, (-1, 1)), "int32")
    log_p = categorical_log_probabilities(logits, from_logits=True)
    return -ops.take_along_axis(log_p, labels, axis=1)[:, 0]


def nearest_sub_centers(
    cosine: Any, labels: Any, classes: Any, sub_centers: int
) -> tuple[Any, Any]:
    """Sub-center ArcFace: (the class cosines max_k c_jk (B, C'), the target's W columns (B,)).

    ``cosine`` holds c_jk (or s * c_jk, any positive scale) in column j * K + k. The target
    column is y * K + k*, k* the target class's nearest sub-centre (the first of equals);
    the gradient of a class cosine reaches its nearest sub-centre only.
    """
    per_centre = ops.reshape(cosine, (-1, classes, sub_centers))  # (B, C', K)
    # the K columns of each sample's own class, gathered (B, K)
    own = labels[:, None] * sub_centers + ops.arange(sub_centers, dtype="int32")[None, :]
    target_centres = ops.take_along_axis(cosine, own, axis=1)
    nearest = ops.cast(ops.argmax(target_centres, axis=1), "int32")
    return ops.max(per_centre, axis=2), labels * sub_centers + nearest


__all__ = [
    "cross_entropy",
    "margin_logits",
    "margin_softmax_loss",
    "nearest_sub_centers",
    "sampled_margin_logits",
    "sampled_margin_softmax_loss",
]

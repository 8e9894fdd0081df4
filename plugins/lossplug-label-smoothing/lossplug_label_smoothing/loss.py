"""The label-smoothed cross-entropy in ``keras.ops`` (imported lazily by the plugin).

For C classes, targets t (one-hot, soft, or sparse class ids turned one-hot) and
smoothing epsilon:

    q = (1 - epsilon) * t + epsilon / C            (the smoothed target)
    loss = -sum_c q_c * log p_c                    (one value per sample)

where log p = log_softmax(logits) (stable log-sum-exp form) when ``from_logits``,
otherwise p is the given probabilities clipped to [eps_k, 1], renormalised over
the class axis and clipped to [eps_k, 1 - eps_k] with eps_k =
keras.config.epsilon() (Keras' convention, so a probability of 0 costs
-log(eps_k) instead of infinity; the first clip changes nothing on valid rows
and turns any other scores into a distribution). Float64 inputs are computed
in float64, all others in float32.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import InvalidTensorError
from lossplug.numerics import categorical_log_probabilities, compute_dtype, one_hot_targets

PLUGIN = "label_smoothing"


def smoothed_targets(
    y_true: Any, y_pred_shape: tuple[Any, ...], epsilon: float, dtype: str = "float32"
) -> Any:
    """q = (1 - epsilon) * t + epsilon / C, with t one-hot if ``y_true`` holds class ids."""
    num_classes = y_pred_shape[-1]
    if num_classes is None:
        raise InvalidTensorError(
            f"loss plugin {PLUGIN!r}: the class axis (last axis) of y_pred must have a static "
            f"size, got shape {tuple(y_pred_shape)}"
        )
    target = one_hot_targets(
        y_true, tuple(y_pred_shape), plugin=PLUGIN, dtype=dtype, targets="one-hot targets"
    )
    return (1.0 - epsilon) * target + epsilon / num_classes


def label_smoothing_crossentropy(
    y_true: Any, y_pred: Any, *, epsilon: float = 0.1, from_logits: bool = True
) -> Any:
    """Per-sample cross-entropy -sum_c q_c log p_c against the smoothed target q.

    Args:
        y_true: class ids (shape ``y_pred.shape[:-1]``, or with a trailing 1) or
            one-hot / soft targets (shape ``y_pred.shape``).
        y_pred: logits (``from_logits=True``) or probabilities, classes last.
        epsilon: smoothing mass in [0, 1] spread uniformly over the C classes.
        from_logits: whether ``y_pred`` holds logits.

    Returns:
        tensor of shape ``y_pred.shape[:-1]``, float32 (float64 for float64 predictions).
    """
    q = smoothed_targets(y_true, tuple(y_pred.shape), epsilon, compute_dtype(y_pred))
    return -ops.sum(q * categorical_log_probabilities(y_pred, from_logits=from_logits), axis=-1)

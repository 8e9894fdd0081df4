"""NumPy helpers behind the properties the plugin claims (no TensorFlow at import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.numerics import is_sparse_labels
from lossplug.properties import Example

#: log of this stands in for log 0 when a smoothed target has zero mass (epsilon = 0)
_TINY = 1e-30


def dense_targets(y_true: Any, num_classes: int, pred_shape: tuple[int, ...]) -> np.ndarray:
    """Targets as float rows: class ids become one-hot."""
    y_true = np.asarray(y_true)
    if is_sparse_labels(y_true, pred_shape):
        ids = y_true.reshape(pred_shape[:-1]).astype(np.int64)
        return np.eye(num_classes, dtype=np.float64)[ids]
    return y_true.astype(np.float64)


def smoothed_target(example: Example) -> np.ndarray:
    """q = (1 - epsilon) * t + epsilon / C, renormalised so that each row sums to 1."""
    y_pred = np.asarray(example.outputs["y_pred"])
    num_classes = y_pred.shape[-1]
    t = dense_targets(example.inputs["y_true"], num_classes, y_pred.shape)
    eps = float(example.config.epsilon)
    q = (1.0 - eps) * t + eps / num_classes
    return q / np.maximum(q.sum(axis=-1, keepdims=True), _TINY)


def perfect(example: Example) -> Example:
    """The minimising prediction: p = q (logits log q, which softmax maps back to q)."""
    q = smoothed_target(example)
    if example.config.from_logits:
        y_pred = np.log(np.maximum(q, _TINY))
    else:
        y_pred = q
    dtype = np.asarray(example.outputs["y_pred"]).dtype
    return example.with_tensor("y_pred", y_pred.astype(dtype))


def as_distribution(y_pred: Any) -> np.ndarray:
    """Probabilities as the plugin reads them: clipped to [1e-7, 1], rows renormalised.

    The identity (to 1e-7) on valid probability rows; it gives a distribution for
    any other scores, as the plugin does, where Keras would divide by a sum of 0.
    """
    p = np.clip(np.asarray(y_pred, dtype=np.float64), 1e-7, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


def keras_crossentropy(example: Example) -> np.ndarray:
    """Keras' categorical (or sparse categorical) cross-entropy per sample, unsmoothed.

    With ``from_logits=False`` Keras gets the probabilities the plugin reads
    (:func:`as_distribution`), so the claim also covers scores that are not
    valid probability rows.
    """
    import keras

    y_true = np.asarray(example.inputs["y_true"])
    y_pred = np.asarray(example.outputs["y_pred"], dtype=np.float32)
    from_logits = bool(example.config.from_logits)
    if not from_logits:
        y_pred = as_distribution(y_pred).astype(np.float32)
    if is_sparse_labels(y_true, y_pred):
        value = keras.losses.sparse_categorical_crossentropy(
            y_true.astype(np.int64), y_pred, from_logits=from_logits
        )
    else:
        value = keras.losses.categorical_crossentropy(
            y_true.astype(np.float32), y_pred, from_logits=from_logits
        )
    return keras.ops.convert_to_numpy(value)


def _entropy(q: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(q > 0, q * np.log(np.maximum(q, _TINY)), 0.0), axis=-1)


def check_gibbs(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """loss >= H(q) for every prediction, and loss == H(q) at p = q (Gibbs' inequality).

    loss - H(q) is the KL divergence KL(q || p), so with epsilon > 0 the
    smallest reachable loss is the entropy of the smoothed target, not 0.
    """
    q = smoothed_target(example)
    entropy = _entropy(q)
    tol = 1e-4 * (1.0 + np.abs(entropy))
    loss = np.asarray(loss_fn(example), dtype=np.float64)
    assert np.all(loss >= entropy - tol), (
        f"loss {loss} is below the entropy of the smoothed target {entropy}"
    )
    at_q = np.asarray(loss_fn(perfect(example)), dtype=np.float64)
    np.testing.assert_allclose(at_q, entropy, rtol=1e-4, atol=1e-4)


def check_sparse_matches_one_hot(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """Class ids and their one-hot encoding give the same loss."""
    y_true = np.asarray(example.inputs["y_true"])
    y_pred = np.asarray(example.outputs["y_pred"])
    num_classes = y_pred.shape[-1]
    if is_sparse_labels(y_true, y_pred):
        ids = y_true.reshape(y_pred.shape[:-1]).astype(np.int64)
        one_hot = np.eye(num_classes, dtype=np.float32)[ids]
    else:
        rows = y_true.reshape(-1, num_classes)
        if not np.all((rows == 0) | (rows == 1)) or not np.all(rows.sum(axis=-1) == 1):
            return  # soft targets have no class-id form
        one_hot = y_true.astype(np.float32)
        ids = np.argmax(y_true, axis=-1).astype(np.int64)
    sparse_loss = loss_fn(example.with_tensor("y_true", ids))
    dense_loss = loss_fn(example.with_tensor("y_true", one_hot))
    np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-5, atol=1e-6)

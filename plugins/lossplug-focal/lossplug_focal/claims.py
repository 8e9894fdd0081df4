"""NumPy helpers behind the properties the focal plugin claims (no TensorFlow at import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from lossplug.numerics import is_sparse_labels
from lossplug.properties import Example
from lossplug.reference import dense_targets

_EPS = 1e-7  # keras.config.epsilon() default, used for probabilities


def as_distribution(y_pred: Any) -> np.ndarray:
    """Categorical probabilities as the plugin reads them: clipped to [1e-7, 1], renormalised."""
    p = np.clip(np.asarray(y_pred, dtype=np.float64), _EPS, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


def cross_entropy_reference(example: Example) -> np.ndarray:
    """Keras' cross-entropy per sample: categorical (or sparse) or binary, by ``mode``.

    In categorical mode with ``from_logits=False``, Keras gets the probabilities
    the plugin reads (:func:`as_distribution`; the identity on valid rows).
    """
    import keras

    cfg = example.config
    y_true = np.asarray(example.inputs["y_true"])
    # float64, where Keras' 1 - clip(p) keeps 1e-7 instead of rounding to 1.19e-7
    y_pred = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    if cfg.mode == "categorical" and not cfg.from_logits:
        y_pred = as_distribution(y_pred)
    if cfg.mode == "binary":
        target = dense_targets(y_true, y_pred.shape, binary=True)
        value = keras.losses.binary_crossentropy(target, y_pred, from_logits=cfg.from_logits)
    elif is_sparse_labels(y_true, y_pred):
        value = keras.losses.sparse_categorical_crossentropy(
            y_true.astype(np.int64), y_pred, from_logits=cfg.from_logits
        )
    else:
        value = keras.losses.categorical_crossentropy(
            y_true.astype(np.float64), y_pred, from_logits=cfg.from_logits
        )
    return keras.ops.convert_to_numpy(value)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _hard_example(example: Example) -> tuple[Example, np.ndarray]:
    """The example with hard targets, and p_t, the probability given to each target.

    Categorical: targets become class ids (arg-max of one-hot / soft rows).
    Binary: every element becomes its own example of shape (1,), target rounded.
    """
    cfg = example.config
    y_pred = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    target = dense_targets(example.inputs["y_true"], y_pred.shape, binary=cfg.mode == "binary")
    if cfg.mode == "binary":
        t = np.round(target).reshape(-1, 1)
        z = y_pred.reshape(-1, 1)
        if cfg.from_logits:
            p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
        else:
            p = np.clip(z, _EPS, 1.0 - _EPS)
        p_t = np.where(t == 1, p, 1.0 - p)[:, 0]
        dtype = np.asarray(example.outputs["y_pred"]).dtype
        hard = example.replace(
            inputs={**example.inputs, "y_true": t.astype(np.float32)},
            outputs={**example.outputs, "y_pred": z.astype(dtype)},
        )
        return hard, p_t
    ids = np.argmax(target, axis=-1)
    if cfg.from_logits:
        p = _softmax(y_pred)
    else:
        p = np.clip(y_pred, _EPS, 1.0)
        p = np.clip(p / p.sum(axis=-1, keepdims=True), _EPS, 1.0 - _EPS)
    p_t = np.take_along_axis(p, ids[..., None], axis=-1)[..., 0]
    return example.with_tensor("y_true", ids.astype(np.int64)), p_t


def check_down_weighting(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """Without alpha, focal = (1 - p_t)^gamma * cross-entropy for each hard target.

    So an example classified with p_t > 0.5 keeps at most 0.5^gamma of its
    cross-entropy, and the better it is classified the smaller that share.
    """
    hard, p_t = _hard_example(example)
    gamma = float(example.config.gamma)
    focal = np.asarray(
        loss_fn(hard.replace(config=attrs.evolve(example.config, alpha=None))), dtype=np.float64
    )
    ce = np.asarray(
        loss_fn(hard.replace(config=attrs.evolve(example.config, alpha=None, gamma=0.0))),
        dtype=np.float64,
    )
    expected = (1.0 - p_t) ** gamma * ce
    np.testing.assert_allclose(focal, expected, rtol=2e-3, atol=1e-5)
    well = p_t > 0.5
    assert np.all(focal[well] <= 0.5**gamma * ce[well] * (1 + 1e-4) + 1e-6), (
        f"well-classified examples (p_t > 0.5) keep more than 0.5^gamma of their "
        f"cross-entropy: focal={focal[well]}, ce={ce[well]}, gamma={gamma}"
    )

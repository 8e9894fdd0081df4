"""NumPy helpers behind the properties the center plugin claims (no TensorFlow at import).

Also the paper's centre rule in NumPy (:func:`paper_rule`), the reference the tests
compare ``update="paper"`` with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from lossplug.properties import Example


def class_ids(y_true: Any, num_classes: int) -> np.ndarray:
    """Same rule as :func:`lossplug_center.loss.class_ids`, in NumPy."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 2 and y_true.shape[-1] == 1:
        y_true = y_true[:, 0]
    elif y_true.ndim == 2 and y_true.shape[-1] == num_classes and num_classes > 1:
        y_true = np.argmax(y_true, axis=-1)
    return y_true.astype(np.int64)


def paper_rule(
    centers: Any, features: Any, labels: Any, alpha: float, weights: Any = None
) -> np.ndarray:
    """One step of Wen et al.'s rule, class by class, in float64 (see ``loss.paper_update``).

    c_j <- c_j - alpha * sum_{i: y_i = j} w_i (c_j - x_i) / (1 + sum_{i: y_i = j} w_i)
    """
    centers = np.asarray(centers, np.float64)
    features = np.asarray(features, np.float64).reshape(len(labels), *centers.shape[1:])
    labels = np.asarray(labels)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    new = centers.copy()
    for j in range(len(centers)):
        mine = labels == j
        w = weights[mine].reshape(-1, *([1] * (centers.ndim - 1)))
        delta = (w * (centers[j] - features[mine])).sum(axis=0) / (1.0 + weights[mine].sum())
        new[j] = centers[j] - alpha * delta
    return new


def perfect(example: Example) -> Example:
    """Every feature moved onto its class centre (``example.state["centers"]``)."""
    if "centers" not in example.state:
        raise KeyError(
            "center: the example has no 'centers' state; call the plugin once so that it "
            "creates its centres before asking for a perfect example"
        )
    centers = np.asarray(example.state["centers"])
    ids = class_ids(example.inputs["y_true"], example.config.num_classes)
    dtype = np.asarray(example.outputs["features"]).dtype
    return example.with_tensor("features", centers[ids].astype(dtype))


def check_alpha_keeps_value(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """The loss at alpha = 0, 0.5 and 1 is the loss at the example's alpha."""
    base = np.asarray(loss_fn(example))
    for alpha in (0.0, 0.5, 1.0):
        other = np.asarray(
            loss_fn(example.replace(config=attrs.evolve(example.config, alpha=alpha)))
        )
        np.testing.assert_allclose(other, base, rtol=1e-5, atol=1e-6)


def check_update_keeps_value(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """The loss under update="gradient" and update="paper" is the loss of the example's config.

    The rule changes how the centres move between steps, never the loss of one call.
    """
    base = np.asarray(loss_fn(example))
    for update in ("gradient", "paper"):
        other = np.asarray(
            loss_fn(example.replace(config=attrs.evolve(example.config, update=update)))
        )
        np.testing.assert_allclose(other, base, rtol=1e-5, atol=1e-6)

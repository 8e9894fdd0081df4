"""NumPy helpers behind the properties the center plugin claims (no TensorFlow at import)."""

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

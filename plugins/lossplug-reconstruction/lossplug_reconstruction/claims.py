"""NumPy helpers behind the properties the reconstruction plugin claims."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.properties import Example


def perfect(example: Example) -> Example:
    """Output equal to input; for bce the input is first rounded to 0/1 (where bce is 0)."""
    x = np.asarray(example.inputs["x"])
    if example.config.kind == "bce":
        x = np.round(np.clip(x, 0.0, 1.0)).astype(x.dtype)
        example = example.with_tensor("x", x)
    dtype = np.asarray(example.outputs["y_pred"]).dtype
    return example.with_tensor("y_pred", x.astype(dtype))


def check_minimal_at_input(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """For every kind and every x, no reconstruction has a smaller loss than y_pred = x.

    mse and mae are 0 there; for bce, loss(r) - loss(x) is the mean binary KL
    divergence between x and r, which is >= 0.
    """
    x = np.asarray(example.inputs["x"])
    at_input = np.asarray(
        loss_fn(
            example.with_tensor("y_pred", x.astype(np.asarray(example.outputs["y_pred"]).dtype))
        ),
        dtype=np.float64,
    )
    loss = np.asarray(loss_fn(example), dtype=np.float64)
    tol = 1e-5 * (1.0 + np.abs(at_input))
    assert np.all(at_input <= loss + tol), (
        f"a reconstruction other than the input has a smaller loss: {loss} < {at_input}"
    )

"""The properties ``dice`` claims, as the conformance kit checks them.

Bounds and symmetry hold for the Dice part alone: the BCE term (``bce_weight > 0``)
is unbounded above and not symmetric. The kit draws configs over every declared
range, so these two claims are :class:`~lossplug.properties.Custom` checks that
evaluate each generated example at ``bce_weight = 0`` (its other fields, such as
``smooth``, as drawn). Zero at a perfect mask holds for every config: the BCE term
is exactly 0 there too.
"""

from __future__ import annotations

import attrs
import numpy as np
from lossplug.properties import Custom, Example, ZeroAtPerfect

#: Rounding slack of the bounds check.
ATOL = 1e-6


def perfect_mask(example: Example) -> Example:
    """y_true rounded to a 0/1 mask, predicted exactly."""
    target = np.asarray(example.inputs["y_true"])
    mask = np.round(np.clip(target.astype(np.float64), 0.0, 1.0))
    return example.with_tensor("y_true", mask.astype(target.dtype)).with_tensor(
        "y_pred", mask.astype(np.asarray(example.outputs["y_pred"]).dtype)
    )


def without_bce(example: Example) -> Example:
    """The same example with the BCE term switched off."""
    return example.replace(config=attrs.evolve(example.config, bce_weight=0.0))


def check_bounded(example: Example, loss_fn) -> None:
    loss = np.asarray(loss_fn(without_bce(example)), dtype=np.float64)
    bad = ~((loss >= -ATOL) & (loss <= 1.0 + ATOL))
    assert not np.any(bad), (
        f"loss {loss[bad].tolist()} (samples {np.nonzero(bad)[0].tolist()}) outside [0, 1] "
        "at bce_weight=0"
    )


def check_symmetric(example: Example, loss_fn) -> None:
    example = without_bce(example)
    y_true, y_pred = example.inputs["y_true"], example.outputs["y_pred"]
    swapped = example.with_tensor("y_true", np.asarray(y_pred).astype(np.asarray(y_true).dtype))
    swapped = swapped.with_tensor("y_pred", np.asarray(y_true).astype(np.asarray(y_pred).dtype))
    before = np.asarray(loss_fn(example), dtype=np.float64)
    after = np.asarray(loss_fn(swapped), dtype=np.float64)
    np.testing.assert_allclose(
        after,
        before,
        rtol=1e-5,
        atol=ATOL,
        err_msg="swapping y_pred and y_true changes the loss at bce_weight=0",
    )


CLAIMS = (
    Custom(
        "bounded_without_bce",
        check_bounded,
        description="0 <= loss <= 1 at bce_weight=0",
    ),
    ZeroAtPerfect(perfect_mask, atol=1e-5, description="y_pred equal to a 0/1 mask"),
    Custom(
        "symmetric_without_bce",
        check_symmetric,
        description="symmetric in y_pred and y_true at bce_weight=0",
    ),
)

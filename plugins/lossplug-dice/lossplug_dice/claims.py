"""The properties ``dice`` claims, as the conformance kit checks them.

Bounds and symmetry hold for the Dice part alone: the BCE term (``bce_weight > 0``)
is unbounded above and not symmetric. These two claims therefore carry
``at={"bce_weight": 0.0}``: the kit checks them on configs drawn with
``bce_weight = 0`` (its other fields, such as ``smooth``, vary over their ranges).
Zero at a perfect mask holds for every config: the BCE term is exactly 0 there too.
"""

from __future__ import annotations

import numpy as np
from lossplug.properties import Bounded, Example, Symmetric, ZeroAtPerfect

#: The Config values at which the bounds and the symmetry hold.
WITHOUT_BCE = {"bce_weight": 0.0}


def perfect_mask(example: Example) -> Example:
    """y_true rounded to a 0/1 mask, predicted exactly."""
    target = np.asarray(example.inputs["y_true"])
    mask = np.round(np.clip(target.astype(np.float64), 0.0, 1.0))
    return example.with_tensor("y_true", mask.astype(target.dtype)).with_tensor(
        "y_pred", mask.astype(np.asarray(example.outputs["y_pred"]).dtype)
    )


CLAIMS = (
    Bounded(0.0, 1.0, at=WITHOUT_BCE),
    ZeroAtPerfect(perfect_mask, atol=1e-5, description="y_pred equal to a 0/1 mask"),
    Symmetric("y_true", "y_pred", rtol=1e-5, at=WITHOUT_BCE),
)

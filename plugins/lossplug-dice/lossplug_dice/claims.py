"""The properties ``dice`` claims, as the conformance kit checks them.

Bounds and symmetry hold for the Dice part alone: the BCE term (``bce_weight > 0``)
is unbounded above and not symmetric. These two claims therefore carry
``at={"bce_weight": 0.0}``: the kit checks them on configs drawn with
``bce_weight = 0`` (its other fields, such as ``smooth``, vary over their ranges).
Zero at a perfect mask holds for every config: the BCE term is exactly 0 there too.
"""

from __future__ import annotations

from lossplug.properties import Bounded, Symmetric, ZeroAtPerfect
from lossplug.reference import perfect_mask

#: The Config values at which the bounds and the symmetry hold.
WITHOUT_BCE = {"bce_weight": 0.0}


CLAIMS = (
    Bounded(0.0, 1.0, at=WITHOUT_BCE),
    ZeroAtPerfect(perfect_mask, atol=1e-5, description="y_pred equal to a 0/1 mask"),
    Symmetric("y_true", "y_pred", rtol=1e-5, at=WITHOUT_BCE),
)

"""NumPy helpers behind the properties ``jaccard`` claims (no Keras import at import).

The conformance kit generates channels-last masks of one shape for ``y_true`` (0/1)
and ``y_pred`` (soft, in [0, 1]); the helpers here work on those.
"""

from __future__ import annotations

import numpy as np
from lossplug.properties import Example
from lossplug.reference import dice_ratios, mask_channels, perfect_mask

__all__ = ["UNSMOOTHED", "from_dice", "perfect_mask"]

#: The Config values at which the loss is a function of the per-class Dice ratios.
UNSMOOTHED = {"smooth": 0.0}


def from_dice(example: Example) -> np.ndarray:
    """1 - mean_c D_c / (2 - D_c), D_c = 2 I_c / (P_c + T_c) the unsmoothed Dice ratio.

    Per class, I / (P + T - I) = D / (2 - D) for any values (soft or 0/1); a class
    with P + T = 0 has D = 1 and J = 1.
    """
    t, p = mask_channels(example.inputs["y_true"], example.outputs["y_pred"])
    dice = dice_ratios(t, p, 0.0)
    return 1.0 - np.mean(dice / (2.0 - dice), axis=-1)

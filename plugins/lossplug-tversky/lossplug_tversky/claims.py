"""NumPy helpers behind the properties ``tversky`` claims (no Keras import at import).

The conformance kit generates channels-last masks of one shape for ``y_true`` (0/1)
and ``y_pred`` (soft, in [0, 1]); the helpers here work on those.
"""

from __future__ import annotations

import numpy as np
from lossplug.properties import Example
from lossplug.reference import dice_ratios, mask_channels, perfect_mask

__all__ = ["AS_DICE", "SYMMETRIC", "dice_reference", "perfect_mask"]

#: The Config values at which the loss is the Dice loss (with twice the smoothing).
AS_DICE = {"alpha": 0.5, "beta": 0.5, "gamma": 1.0}
#: The Config values at which the loss is symmetric in y_true and y_pred.
SYMMETRIC = {"alpha": 0.5, "beta": 0.5}


def dice_reference(example: Example) -> np.ndarray:
    """The ``dice`` plugin's loss (bce_weight=0) with smoothing 2 * smooth, per sample.

    At alpha = beta = 1/2: TI = (I + s) / (I + (P - I) / 2 + (T - I) / 2 + s)
    = (2 I + 2 s) / (P + T + 2 s), Dice's ratio (2 I + s') / (P + T + s') with s' = 2 s.
    """
    t, p = mask_channels(example.inputs["y_true"], example.outputs["y_pred"])
    return 1.0 - dice_ratios(t, p, 2.0 * float(example.config.smooth)).mean(axis=-1)

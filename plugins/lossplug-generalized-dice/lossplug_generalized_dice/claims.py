"""NumPy helpers behind the properties ``generalized_dice`` claims (no Keras import at import).

The conformance kit generates channels-last masks of one shape for ``y_true`` (0/1)
and ``y_pred`` (soft, in [0, 1]); the helpers here work on those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.properties import Example
from lossplug.reference import dice_ratios, mask_channels, perfect_mask

__all__ = ["check_one_class_is_dice", "perfect_mask"]


def check_one_class_is_dice(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """With one class its weight is 1: the loss of each channel alone is the Dice loss.

    Dice loss (the ``dice`` plugin's, bce_weight=0): 1 - (2 I + s) / (P + T + s), 0 when
    P + T + s = 0.
    """
    t, p = np.asarray(example.inputs["y_true"]), np.asarray(example.outputs["y_pred"])
    if p.ndim <= 2:  # a flattened binary mask is one channel already
        t, p = t[..., None], p[..., None]
    smooth = float(example.config.smooth)
    for c in range(p.shape[-1]):
        single_t, single_p = t[..., c : c + 1], p[..., c : c + 1]
        single = example.with_tensor("y_true", single_t).with_tensor("y_pred", single_p)
        got = np.asarray(loss_fn(single), dtype=np.float64)
        dice = 1.0 - dice_ratios(*mask_channels(single_t, single_p), smooth)[:, 0]
        np.testing.assert_allclose(
            got,
            dice,
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"channel {c} alone: the generalised Dice loss of one class is not its "
            "Dice loss",
        )

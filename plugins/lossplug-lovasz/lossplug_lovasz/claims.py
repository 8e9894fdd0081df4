"""NumPy helpers behind the properties ``lovasz`` claims (no Keras import at import).

:func:`reference` is Algorithm 1 of Berman et al. (2018) written with Python loops over
images and classes; the plugin computes the same thing with one batched sort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.properties import Example
from lossplug.reference import binary_mask, mask_channels, perfect_mask

#: The claim on hard predictions is made for the softmax (probability) mode.
SOFTMAX = {"mode": "softmax"}


def _channels(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, C) float64 targets and predictions of an example's masks."""
    return mask_channels(example.inputs["y_true"], example.outputs["y_pred"])


def _counted_classes(config: Any) -> str:
    if config.classes != "auto":
        return config.classes
    return "all" if config.mode == "binary" else "present"


def lovasz_grad(sorted_targets: np.ndarray) -> np.ndarray:
    """Gradient of the Lovasz extension of the Jaccard loss at sorted errors (Algorithm 1)."""
    total = sorted_targets.sum()
    intersection = total - np.cumsum(sorted_targets)
    union = total + np.cumsum(1.0 - sorted_targets)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def reference(example: Example) -> np.ndarray:
    """The per-image loss by the paper's algorithm, one image and one class at a time."""
    t, p = _channels(example)
    mode, counted = example.config.mode, _counted_classes(example.config)
    out = np.zeros(len(t))
    for b in range(len(t)):
        losses = []
        for c in range(t.shape[-1]):
            fg = t[b, :, c]
            if counted == "present" and fg.sum() == 0:
                continue
            if mode == "binary":
                errors = 1.0 - p[b, :, c] * (2.0 * fg - 1.0)
            else:
                errors = np.abs(fg - p[b, :, c])
            order = np.argsort(-errors, kind="stable")
            values = np.maximum(errors[order], 0.0) if mode == "binary" else errors[order]
            losses.append(float(np.dot(values, lovasz_grad(fg[order]))))
        out[b] = np.mean(losses) if losses else 0.0
    return out


def _hinge_logits(mask: np.ndarray) -> np.ndarray:
    """Logits +-2 on the side of each 0/1 target: hinge errors max(0, 1 - 2) = 0."""
    return 2.0 * (2.0 * mask - 1.0)


def perfect(example: Example) -> Example:
    """y_true rounded to 0/1; y_pred equal to it (softmax) or logits +-2 on its side (binary)."""
    return perfect_mask(example, _hinge_logits if example.config.mode == "binary" else None)


def check_hard_predictions_give_one_minus_iou(
    example: Example, loss_fn: Callable[[Example], Any]
) -> None:
    """With 0/1 predictions the errors are 0/1 and the loss is exactly 1 - IoU per class.

    The Lovasz extension agrees with the set function it extends on indicator vectors:
    for each counted class, loss_c = 1 - |t and p| / |t or p| (0 when both are empty).
    """
    t, p = (binary_mask(a) for a in _channels(example))
    hard = example.with_tensor("y_true", t.astype(np.asarray(example.inputs["y_true"]).dtype))
    hard = hard.with_tensor("y_pred", p.astype(np.asarray(example.outputs["y_pred"]).dtype))
    got = np.asarray(loss_fn(hard), dtype=np.float64)
    inter, union = np.sum(t * p, axis=1), np.sum(np.maximum(t, p), axis=1)
    per_class = 1.0 - np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)
    if _counted_classes(example.config) == "present":
        counted = t.sum(axis=1) > 0
    else:
        counted = np.ones_like(per_class, dtype=bool)
    expected = np.sum(per_class * counted, axis=-1) / np.maximum(counted.sum(axis=-1), 1)
    np.testing.assert_allclose(
        got, expected, rtol=1e-5, atol=1e-6, err_msg="hard predictions: loss != 1 - IoU"
    )

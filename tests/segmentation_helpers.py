"""Helpers of the plugins' tests of segmentation losses (region and overlap losses on masks).

The test suites of lossplug-dice, -jaccard, -lovasz, -tversky and -generalized-dice import them;
``plugins/conftest.py`` puts this folder on ``sys.path``. Each helper takes the plugin's
name or its ``call``, so that one piece of code states what every such plugin must do:
the loss and its gradient as the core computes them, Hypothesis strategies of masks, the
mask layouts of :func:`lossplug.numerics.segmentation_masks` (and the errors for the
others), float16 masks, and the small segmentation tasks the plugins are trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.testing import call_plugin, plugin_gradients

__all__ = [
    "TINY_SMOOTHS",
    "check_bad_class_ids_are_refused",
    "check_empty_masks_with_a_tiny_smooth",
    "check_half_precision_gives_the_float32_loss",
    "check_mask_layouts_are_accepted",
    "check_mismatched_masks_are_refused",
    "check_perfect_and_empty_masks_give_zero",
    "iou",
    "loss_and_gradient",
    "make_blobs",
    "make_shapes",
    "mask_pairs",
    "per_class_iou",
    "plugin_loss",
    "segmenter",
    "smooths",
    "unit",
]


# ----------------------------------------------------------------------------- calls
def plugin_loss(name: str, y_true, y_pred, **config) -> np.ndarray:
    """The per-sample loss of plugin ``name`` (float32 NumPy), called as the core calls it."""
    loss, _ = call_plugin(name, {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == (np.shape(y_pred)[0],)
    return loss


def loss_and_gradient(name: str, y_true, y_pred, **config) -> tuple[np.ndarray, np.ndarray]:
    """(loss, d sum(loss) / d y_pred) of plugin ``name``, through the kit's harness."""
    loss, grads, _ = plugin_gradients(
        name, {"y_true": y_true}, {"y_pred": y_pred}, ["y_pred"], config=config
    )
    return loss, grads["y_pred"]


# ----------------------------------------------------------------------------- strategies
# No subnormals: TensorFlow flushes them to zero on CPU (see the dice plugin's tests).
unit = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32)
smooths = st.sampled_from([0.0, 1e-3, 1.0, 10.0])


@st.composite
def mask_pairs(draw, binary_target: bool = True, empty_classes: bool = False):
    """(y_true, y_pred): float32 masks (B, H, W, C) of one shape, B <= 3, H, W <= 5, C <= 4;
    y_true 0/1 (``binary_target``) or soft, y_pred soft. ``empty_classes`` empties some
    classes of some samples' targets (or every class of a sample)."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    shape = (*shape, draw(st.integers(1, 4)))
    elements = st.sampled_from([0.0, 1.0]) if binary_target else unit
    y_true = draw(hnp.arrays(np.float32, shape, elements=elements))
    if empty_classes:
        keep = draw(hnp.arrays(np.bool_, (shape[0], 1, 1, shape[-1])))
        y_true = y_true * keep
    y_pred = draw(hnp.arrays(np.float32, shape, elements=unit))
    return y_true, y_pred


# ----------------------------------------------------------------------------- checks
def check_perfect_and_empty_masks_give_zero(gradient: Callable, **config) -> None:
    """A mask predicted exactly, with empty classes and an empty sample: loss 0 and finite
    gradients (``gradient`` is a plugin's :func:`loss_and_gradient`)."""
    y_true = np.zeros((2, 3, 3, 2), np.float32)
    y_true[0, :2, :2, 0] = 1.0
    loss, grad = gradient(y_true, y_true.copy(), **config)
    np.testing.assert_array_equal(loss, 0.0)
    assert np.all(np.isfinite(grad))


#: Tiny smooths: 3.2e-33 (the kit's failure on JAX, where the gradient of n / d was
#: -n * d**-2 with d**2 underflowing to 0), 1e-20, float32's smallest normal number 2**-126
#: and a subnormal 1e-40 (which counts as 0: TensorFlow and XLA flush it to zero on CPU).
TINY_SMOOTHS = (3.2e-33, 1e-20, 2.0**-126, 1e-40)


def check_empty_masks_with_a_tiny_smooth(gradient: Callable, slope: float = 1.0, **config) -> None:
    """Empty masks (y_true = y_pred = 0, one and three classes) with each of
    :data:`TINY_SMOOTHS`: loss 0 and the finite gradient slope / (C smooth) at every pixel,
    0 for a subnormal smooth (``gradient`` is a plugin's :func:`loss_and_gradient`)."""
    for classes in (1, 3):
        empty = np.zeros((2, 3, 3, classes), np.float32)
        for smooth in TINY_SMOOTHS:
            loss, grad = gradient(empty, empty.copy(), smooth=smooth, **config)
            np.testing.assert_array_equal(loss, 0.0)
            assert np.all(np.isfinite(grad)), f"smooth={smooth}: gradient {grad.ravel()[:3]}"
            normal = smooth >= np.finfo(np.float32).tiny
            expected = slope / (classes * np.float32(smooth)) if normal else 0.0
            np.testing.assert_allclose(grad, np.full_like(grad, expected), rtol=1e-5)


def check_mask_layouts_are_accepted(
    call: Callable,
    y_pred: Callable[[np.random.Generator], np.ndarray] | None = None,
    binary_pred: Callable[[np.random.Generator], np.ndarray] | None = None,
    **binary_config,
) -> None:
    """Class ids (B, H, W) and (B, H, W, 1) give the loss of their one-hot masks, and a
    binary mask may omit its channel axis or be flattened to (B, N).

    ``call`` is a plugin's :func:`plugin_loss`. The predictions, of shape (2, 4, 5, 3) for
    three classes and (2, 4, 5, 1) for the binary mask, are uniform probabilities unless
    ``y_pred`` or ``binary_pred`` draws them; ``binary_config`` configures the binary calls.
    """
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 3, size=(2, 4, 5))
    probabilities = (
        rng.uniform(size=(2, 4, 5, 3)).astype("float32") if y_pred is None else y_pred(rng)
    )
    expected = call(np.eye(3, dtype="float32")[ids], probabilities)
    np.testing.assert_allclose(call(ids, probabilities), expected, rtol=1e-6)
    np.testing.assert_allclose(call(ids[..., None], probabilities), expected, rtol=1e-6)
    binary = (ids == 1).astype("float32")
    prediction = probabilities[..., 1:2] if binary_pred is None else binary_pred(rng)
    channel = call(binary[..., None], prediction, **binary_config)
    np.testing.assert_allclose(call(binary, prediction, **binary_config), channel)
    flat = call(binary.reshape(2, -1), prediction.reshape(2, -1), **binary_config)
    np.testing.assert_allclose(flat, channel, rtol=1e-6)


def check_mismatched_masks_are_refused(name: str, call: Callable) -> None:
    """Masks of other shapes than the layouts accepted are refused, naming the plugin and
    the convention."""
    y_pred = np.full((2, 4, 4, 3), 1 / 3, np.float32)
    with pytest.raises(
        lossplug.InvalidTensorError, match=rf"'{name}'.*channels-last masks \(B, \.\.\., C\)"
    ):
        call(np.zeros((2, 4, 2, 3), np.float32), y_pred)
    with pytest.raises(lossplug.InvalidTensorError, match=f"'{name}'.*class ids of shape"):
        call(np.zeros((2, 4, 4, 2), np.float32), y_pred)
    with pytest.raises(lossplug.InvalidTensorError, match=f"'{name}'.*flattened binary mask"):
        call(np.zeros((2, 16, 1), np.float32), np.zeros((2, 16), np.float32))


def check_bad_class_ids_are_refused(name: str, call: Callable, bad_id: int) -> None:
    """A class id outside [0, C) is refused, naming the plugin and the range."""
    y_pred = np.full((2, 4, 4, 3), 1 / 3, np.float32)
    with pytest.raises(Exception, match=rf"'{name}'.*class ids outside \[0, 3\)"):
        call(np.full((2, 4, 4), bad_id), y_pred)


def check_half_precision_gives_the_float32_loss(
    call: Callable, reference: Callable, channels: int = 1
) -> None:
    """float16 masks of 64x64 pixels (their sums exceed float16's precision) give the
    float32 loss, close to the float64 ``reference(y_true, y_pred)``."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(2, 64, 64, channels)).astype("float16")
    y_pred = rng.uniform(size=(2, 64, 64, channels)).astype("float16")
    loss = call(y_true, y_pred)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss, reference(y_true, y_pred), rtol=1e-4)


# ----------------------------------------------------------------------------- end to end
def make_blobs(n, size=16, seed=0, radius=(1.2, 2.8)):
    """Noisy images with one or two discs of a radius in ``radius``: 0/1 masks (B, H, W, 1).

    The default radii give about 8% foreground, an imbalanced task; radii 3 to 5, 26%.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(2, size - 2, 2)
            r = rng.uniform(*radius)
            masks[i] = np.maximum(masks[i], (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2)
    images = masks * 0.8 + rng.normal(0.0, 0.5, masks.shape)
    return images[..., None].astype("float32"), masks[..., None]


def make_shapes(n, size=16, seed=0, *, noise=0.6, values=(0.0, 1.0, -1.0)):
    """Class ids (B, H, W) and images: a rectangle (1) and a 3x3 square (2, 3.5% of pixels) on
    a background (0), of intensities ``values`` (bright and dark) plus Gaussian ``noise``."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        h, w = rng.integers(3, 7, 2)
        labels[i, r : r + h, c : c + w] = 1
        r, c = rng.integers(0, size - 3, 2)
        labels[i, r : r + 3, c : c + 3] = 2
    images = rng.normal(0.0, noise, size=(n, size, size, 1)).astype("float32")
    images[..., 0] += np.array(values, np.float32)[labels]
    return images, labels


def iou(truth, predicted) -> float:
    """|truth and predicted| / |truth or predicted| of boolean masks (1 if both are empty)."""
    union = np.sum(truth | predicted)
    return float(np.sum(truth & predicted) / union) if union else 1.0


def per_class_iou(ids, predicted, classes=3) -> np.ndarray:
    """The IoU of each class of class-id masks."""
    return np.array([iou(ids == c, predicted == c) for c in range(classes)])


def segmenter(classes, loss, *, logits=False):
    """Two 3x3 convolutions and a 1x1 one to ``classes`` channels named ``masks`` (sigmoid
    for one class, softmax for more, none for ``logits``), compiled with Adam and ``loss``."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    activation = None if logits else "sigmoid" if classes == 1 else "softmax"
    masks = keras.layers.Conv2D(classes, 1, activation=activation, name="masks")(h)
    model = lossplug.LossModel(inputs, masks)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    return model

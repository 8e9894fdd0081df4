"""A Mask R-CNN style mask head: a loss on an intermediate layer and on the output, with ``bind``.

Mask heads are often supervised twice: a coarse mask predicted from the
backbone features (an *intermediate* layer the refinement stage builds on) and
the refined mask the model outputs. In Keras 2 the intermediate loss needed the
targets as an extra model input and a Lambda "loss layer" calling ``add_loss``.

Here the ``bind`` plugin applies any Keras loss to any two tensors, and every
term shows in the progress bar under its own name:

    mask_bce    = binary_crossentropy(masks, refined mask logits)   the output
    coarse_mse  = mean_squared_error(masks, coarse mask)             an intermediate layer

``predict`` returns only the refined mask; the coarse mask stays reachable
through ``model.get_layer("coarse_mask")``.

Data: generated 24x24 images holding one to three noisy rectangles and discs;
the target mask is the union of the shapes.

Run: python examples/mask_rcnn_bind.py [--smoke]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np

SIZE = 24


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n noisy grey images (n, SIZE, SIZE, 1) and their binary masks (same shape)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(3, SIZE - 3, size=2)
            size = rng.integers(2, 6)
            if rng.random() < 0.5:  # a rectangle
                masks[i] |= (abs(rows - r) <= size) & (abs(cols - c) <= rng.integers(2, 6))
            else:  # a disc
                masks[i] |= (rows - r) ** 2 + (cols - c) ** 2 <= size**2
    images = 0.6 * masks + rng.normal(0.2, 0.25, size=masks.shape)
    return images[..., None].astype("float32"), masks[..., None].astype("float32")


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = pred > 0.5, target > 0.5
    return float((pred & target).sum() / max((pred | target).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train = make_images(64 if args.smoke else 1500, rng)
    x_test, y_test = make_images(32 if args.smoke else 300, rng)

    conv = keras.layers.Conv2D
    image = keras.Input((SIZE, SIZE, 1), name="image")
    features = conv(16, 3, padding="same", activation="relu")(image)
    features = conv(16, 3, padding="same", activation="relu")(features)
    # The intermediate mask (probabilities), which the refinement stage uses.
    coarse = conv(1, 1, activation="sigmoid", name="coarse_mask")(features)
    refined = keras.layers.Concatenate()([features, coarse])
    refined = conv(16, 3, padding="same", activation="relu")(refined)
    mask_logits = conv(1, 1, name="mask_logits")(refined)

    model = lossplug.LossModel(image, mask_logits, expose=["coarse_mask"])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=[
            # y_true (the masks given to fit) against the output (y_pred) by default ...
            lossplug.use(
                "bind", loss="binary_crossentropy", from_logits=True, display_name="mask_bce"
            ),
            # ... and against the exposed intermediate layer: bind y_pred to it.
            lossplug.use(
                "bind",
                loss="mse",
                bind={"y_pred": "coarse_mask"},
                weight=0.5,
                display_name="coarse_mse",
            ),
        ],
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=2 if args.smoke else 8,
        batch_size=32,
        verbose=2,
    )

    refined_masks = keras.ops.sigmoid(model.predict(x_test, verbose=0))
    coarse_model = keras.Model(model.input, model.get_layer("coarse_mask").output)
    coarse_masks = coarse_model.predict(x_test, verbose=0)
    print(f"terms logged: {sorted(k for k in history.history if not k.startswith('val_'))}")
    print(
        f"coarse_mse: epoch 1 {history.history['coarse_mse'][0]:.4f}, "
        f"last {history.history['coarse_mse'][-1]:.4f}"
    )
    print(
        f"mask IoU on the test images: coarse {iou(coarse_masks, y_test):.3f}, "
        f"refined {iou(keras.ops.convert_to_numpy(refined_masks), y_test):.3f}"
    )


if __name__ == "__main__":
    main()

"""Center loss on scikit-learn's digits: class centres owned by the plugin, saved with the model.

Center loss (Wen et al. 2016) pulls each sample's feature vector towards a
trainable centre of its class:

    center_i = 1/2 * ||features_i - c_{y_i}||^2

In Keras 2 this needed the labels as a second model input, an Embedding layer
holding the centres and a Lambda "loss layer". Here the ``center`` plugin owns
the centres (created through ``extras.state``, trained by the optimizer, saved
in the ``.keras`` file) and reads an intermediate layer that the model exposes.

Run: python examples/center_loss.py [--smoke]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance to the class mean over mean distance between class means (lower: tighter)."""
    means = np.stack([features[labels == c].mean(0) for c in range(10)])
    within = np.linalg.norm(features - means[labels], axis=1).mean()
    between = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(10, 1)]
    return float(within / between.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype("float32"),
        y.astype("int32"),
        test_size=0.25,
        stratify=y,
        random_state=0,
    )
    if args.smoke:
        x_train, y_train = x_train[:300], y_train[:300]

    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    embedding = keras.layers.Dense(16, name="embedding")(hidden)
    logits = keras.layers.Dense(10, name="logits")(keras.layers.ReLU()(embedding))
    # expose: plugins may read the "embedding" layer; predict still returns the logits only.
    model = lossplug.LossModel(inputs, logits, expose=["embedding"])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=[
            # Keras' own losses mix freely with plugin terms.
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            # center reads a tensor called "features": bind it to the exposed layer.
            # alpha is the paper's centre learning rate relative to the network's.
            lossplug.use(
                "center",
                weight=0.1,
                num_classes=10,
                alpha=0.5,
                bind={"features": "embedding"},
            ),
        ],
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=2 if args.smoke else 20,
        batch_size=32,
        verbose=2,
    )

    features = keras.Model(model.input, model.get_layer("embedding").output)
    test_features = features.predict(x_test, verbose=0)
    print(
        f"center term: epoch 1 {history.history['center'][0]:.4f}, "
        f"last {history.history['center'][-1]:.4f}"
    )
    print(f"class spread of the test embeddings: {spread(test_features, y_test):.3f}")
    # The learnt centres are the term's state: where the class means should sit.
    centres = keras.ops.convert_to_numpy(model.term_state("center")["centers"])
    means = np.stack([test_features[y_test == c].mean(0) for c in range(10)])
    gap = float(np.linalg.norm(centres - means, axis=1).mean())
    print(f"mean distance from each learnt centre to its class mean: {gap:.3f}")

    # The centres are saved with the model; safe_mode stays on when loading.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "center.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    same = all(
        np.allclose(a, b) for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True)
    )
    accuracy = loaded.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    print(f"saved and reloaded (weights and centres identical: {same})")
    print(f"test accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    main()

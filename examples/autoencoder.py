"""An autoencoder trained with ``fit(x)``: the loss reads the model's own input.

Keras' ``compile(loss=...)`` compares a prediction with targets, so the usual
recipe is ``fit(x, x)``: the data pipeline carries every batch twice. The
``reconstruction`` plugin instead reads the model input (the core passes a
single-input model's input to plugins as ``x``), so the model trains on ``x``
alone, and the loss can compare the output with any input, not only a copy:

    reconstruction_i = mean_j (decoded_ij - x_ij)^2        (kind="mse")

Run: python examples/autoencoder.py [--smoke]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

CODE = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x = (load_digits().data / 16.0).astype("float32")
    x_train, x_test = train_test_split(x, test_size=0.2, random_state=0)
    if args.smoke:
        x_train = x_train[:256]

    pixels = keras.Input((64,), name="pixels")
    code = keras.layers.Dense(32, activation="relu")(pixels)
    code = keras.layers.Dense(CODE, name="code")(code)
    decoded = keras.layers.Dense(32, activation="relu")(code)
    decoded = keras.layers.Dense(64, activation="sigmoid", name="decoded")(decoded)
    model = lossplug.LossModel(pixels, decoded)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="reconstruction")

    before = model.evaluate(x_test, verbose=0, return_dict=True)["reconstruction"]
    # No targets anywhere: fit(x), evaluate(x), and validation data without targets.
    history = model.fit(
        x_train,
        validation_data=(x_test,),
        epochs=2 if args.smoke else 30,
        batch_size=64,
        verbose=2,
    )
    after = model.evaluate(x_test, verbose=0, return_dict=True)["reconstruction"]

    # The encoder half, for embeddings; predict needs no targets and computes no loss.
    encoder = keras.Model(model.input, model.get_layer("code").output)
    codes = encoder.predict(x_test, verbose=0)
    baseline = float(np.mean((x_test - x_train.mean(0)) ** 2))  # predicting the mean digit
    print(f"codes: {codes.shape[1]} numbers per 64-pixel image")
    print(
        f"val_reconstruction per epoch: first {history.history['val_reconstruction'][0]:.4f}, "
        f"last {history.history['val_reconstruction'][-1]:.4f}"
    )
    print(
        f"test reconstruction error: {before:.4f} before training, {after:.4f} after "
        f"(the mean digit scores {baseline:.4f})"
    )


if __name__ == "__main__":
    main()

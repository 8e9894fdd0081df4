"""Watch an intermediate layer's activations while training, next to the loss terms.

Keras 3 removed ``Layer.add_metric``, which was how Keras 2 showed a statistic
of an intermediate tensor in the progress bar. Metric plugins return metrics
and no loss, so they never change training:

    hidden = mean over the samples of ||hidden_b||^2   (activation_norm)
    correct                = correct arg-max predictions this epoch     (categorical_true_positives)

Two identical classifiers are trained on scikit-learn's digits, one with an L2
activity regulariser on the hidden layer; the activation norm shows its effect
epoch by epoch (and under ``val_`` on the validation data).

Run: python examples/activation_norm.py [--smoke]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def build(regularize: bool) -> lossplug.LossModel:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(
        64,
        activation="relu",
        name="hidden",
        activity_regularizer=keras.regularizers.L2(1e-3) if regularize else None,
    )(inputs)
    logits = keras.layers.Dense(10, name="logits")(hidden)
    model = lossplug.LossModel(inputs, logits, expose=["hidden"])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=[
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            # Metric plugins: shown as <display name>_<metric name> in History.
            lossplug.use("activation_norm", bind={"activations": "hidden"}, display_name="hidden"),
            lossplug.use("categorical_true_positives", display_name="train"),
        ],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        (x / 16.0).astype("float32"), y.astype("int32"), test_size=0.25, random_state=0
    )
    if args.smoke:
        x_train, y_train = x_train[:256], y_train[:256]
    epochs = 2 if args.smoke else 10

    histories = {}
    for regularize in (False, True):
        name = "L2 activity regulariser" if regularize else "plain"
        print(f"--- {name}")
        model = build(regularize)
        histories[name] = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=32,
            verbose=2,
        ).history

    header = "  ".join(f"{name:>24}" for name in histories)
    print(f"epoch  {header}   (hidden)")
    for epoch in range(epochs):
        row = [f"{h['hidden'][epoch]:24.3f}" for h in histories.values()]
        print(f"{epoch + 1:5d}  " + "  ".join(row))
    for name, history in histories.items():
        correct = history["train"][-1]
        print(
            f"{name}: {correct:.0f} of {len(x_train)} training digits right in the last epoch, "
            f"val_hidden {history['val_hidden'][-1]:.3f}"
        )


if __name__ == "__main__":
    main()

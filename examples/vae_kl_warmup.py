"""A variational autoencoder whose KL weight warms up over the first epochs.

The loss of a VAE on x (per sample, averaged over the 64 pixels of a digit):

    reconstruction = mean_j BCE(x_j, decoder(z)_j),   z = mean + exp(log_var / 2) * noise
    kl             = w(epoch) * KL(N(mean, exp(log_var)) || N(0, 1))

With w = 1/64 the sum is the negative ELBO divided by the number of pixels.
KL warm-up starts w at 0 so the decoder learns to use the code before the
prior pulls the posterior in (Bowman et al. 2016). In Keras 2 the epoch-dependent
weight was a backend variable updated by a callback and read inside a Lambda
loss layer; here it is a schedule of the epoch, evaluated inside the compiled
step without retracing, and the ``kl`` plugin reads the two exposed layers.

Trained with ``fit(x)``: the ``reconstruction`` plugin reads the model input,
so no targets are needed.

Run: python examples/vae_kl_warmup.py [--smoke]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
from keras import ops
from lossplug.schedules import LinearRamp
from sklearn.datasets import load_digits

LATENT = 2
PIXELS = 64


class Sampling(keras.layers.Layer):
    """z = mean + exp(log_var / 2) * noise, the reparameterisation trick."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, inputs):
        mean, log_var = inputs
        noise = keras.random.normal(ops.shape(mean), seed=self.seed)
        return mean + ops.exp(0.5 * log_var) * noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x = (load_digits().data / 16.0).astype("float32")
    if args.smoke:
        x = x[:256]
    epochs, warmup = (3, 2) if args.smoke else (20, 8)

    pixels = keras.Input((PIXELS,), name="pixels")
    hidden = keras.layers.Dense(128, activation="relu")(pixels)
    z_mean = keras.layers.Dense(LATENT, name="z_mean")(hidden)
    z_log_var = keras.layers.Dense(LATENT, name="z_log_var")(hidden)
    z = Sampling(name="z")([z_mean, z_log_var])
    decoded = keras.layers.Dense(128, activation="relu")(z)
    decoded = keras.layers.Dense(PIXELS, activation="sigmoid", name="decoded")(decoded)

    model = lossplug.LossModel(pixels, decoded, expose=["z_mean", "z_log_var"])
    kl_weight = LinearRamp(start=0.0, end=1.0 / PIXELS, begin=0, stop=warmup)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=[
            lossplug.use("reconstruction", kind="bce"),
            lossplug.use("kl", weight=kl_weight, bind={"mean": "z_mean", "log_var": "z_log_var"}),
        ],
    )
    history = model.fit(x, epochs=epochs, batch_size=64, verbose=2).history

    print("epoch  kl weight  kl term (weighted)  KL (nats)  reconstruction")
    for epoch in range(epochs):
        weight = kl_weight.value_at(epoch)
        term = history["kl"][epoch]
        raw = f"{term / weight:9.3f}" if weight > 0 else "        -"
        print(
            f"{epoch + 1:5d}  {weight:9.5f}  {term:18.5f}  {raw}  "
            f"{history['reconstruction'][epoch]:14.4f}"
        )
    encoder = keras.Model(model.input, model.get_layer("z_mean").output)
    codes = encoder.predict(x, verbose=0)
    print(f"latent codes: mean {np.round(codes.mean(0), 2)}, std {np.round(codes.std(0), 2)}")
    print(
        f"KL weight ramped from {kl_weight.value_at(0):.4f} to {kl_weight.value_at(epochs - 1):.4f}"
    )


if __name__ == "__main__":
    main()

"""Helpers of the plugins' tests of metric-learning losses: pair losses and proxy losses.

The test suites of lossplug-contrastive, -lifted-structure, -multi-similarity and -npair
(losses over the pairs of a batch) and of lossplug-proxy-anchor and -proxy-nca (losses
against trainable class proxies) import them; ``plugins/conftest.py`` puts this folder on
``sys.path``. Each helper takes the plugin's name, so that one piece of code states what
every such plugin must do: Hypothesis strategies of labelled batches, the loss and its
gradients through the kit's harness (any backend's autodiff), the checks of bad tensors
and labels, Adam's step on the proxies, and training on scikit-learn's digits.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.numerics import L2_EPSILON
from lossplug.testing import call_plugin, plugin_gradients
from pair_helpers import np_pairwise

__all__ = [
    "SETTINGS",
    "check_adam_moves_a_proxy_by_the_learning_rate",
    "check_bad_proxy_labels_are_explained",
    "check_training_gathers_each_class_around_its_proxy",
    "check_training_separates_the_digits",
    "check_wrong_tensors_are_reported",
    "digits",
    "distance_ratio",
    "labelled_embeddings",
    "loss_and_gradient",
    "np_distances",
    "proxy_batches",
    "proxy_gradients",
    "sample_weights",
]

#: The Hypothesis settings of the pair losses' property tests.
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# ----------------------------------------------------------------------------- strategies
@st.composite
def labelled_embeddings(draw, max_size: int = 8, classes: int = 3):
    """(x, labels): 1 to ``max_size`` float32 embeddings of 1 to 4 dimensions in [-3, 3]
    and their int32 labels in [0, classes)."""
    n = draw(st.integers(1, max_size))
    dim = draw(st.integers(1, 4))
    x = draw(hnp.arrays(np.float32, (n, dim), elements=st.floats(-3, 3, width=32, allow_nan=False)))
    labels = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, classes - 1)))
    return x, labels


def sample_weights(n: int) -> st.SearchStrategy:
    """None (no sample weights) or n weights among 0 (a removal), 0.5, 1 and 2 (a duplicate)."""
    return st.none() | hnp.arrays(np.float32, (n,), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0]))


@st.composite
def proxy_batches(draw, max_batch: int, classes: tuple[int, int], dims: tuple[int, int]):
    """(labels, embeddings, proxies): int32 labels of the proxies' classes and float32
    embeddings and proxies with coordinates in [-3, 3], none within 0.05 of 0."""
    b = draw(st.integers(1, max_batch))
    c = draw(st.integers(*classes))
    d = draw(st.integers(*dims))
    elements = st.floats(-3, 3, width=32).filter(lambda v: abs(v) > 0.05)
    x = draw(hnp.arrays(np.float32, (b, d), elements=elements))
    p = draw(hnp.arrays(np.float32, (c, d), elements=elements))
    y = draw(hnp.arrays(np.int32, (b,), elements=st.integers(0, c - 1)))
    return y, x, p


# ----------------------------------------------------------------------------- calls
def loss_and_gradient(name: str, x, labels, **config) -> tuple[float, np.ndarray]:
    """The pair loss of plugin ``name`` and d loss / d embeddings, through the kit's harness."""
    loss, grads, _ = plugin_gradients(
        name,
        {"y_true": np.asarray(labels, np.int32)},
        {"embeddings": np.asarray(x, np.float32)},
        ["embeddings"],
        config=config,
    )
    return float(loss), grads["embeddings"]


def proxy_gradients(name: str, labels, embeddings, proxies, **config):
    """(d sum(loss) / d embeddings, d sum(loss) / d proxies) of plugin ``name`` with the given
    proxies (``num_classes`` defaults to their number), through the kit's harness."""
    config.setdefault("num_classes", len(proxies))
    _, grads, state_grads = plugin_gradients(
        name,
        {"y_true": labels},
        {"embeddings": embeddings},
        ["embeddings"],
        config=config,
        state={"proxies": proxies},
    )
    return grads["embeddings"], state_grads["proxies"]


# ----------------------------------------------------------------------------- errors
def check_wrong_tensors_are_reported(name: str) -> None:
    """Embeddings of rank 3 and one-hot labels are refused, naming the plugin or the fix."""
    with pytest.raises(lossplug.InvalidTensorError, match=f"'{name}' needs embeddings"):
        call_plugin(name, {"y_true": np.arange(4)}, {"embeddings": np.zeros((4, 2, 2))})
    with pytest.raises(lossplug.InvalidTensorError, match="one-hot"):
        call_plugin(name, {"y_true": np.eye(4)}, {"embeddings": np.zeros((4, 2))})


def check_bad_proxy_labels_are_explained(name: str) -> None:
    """Class ids without a proxy and one-hot labels are refused, naming the plugin."""
    proxies = np.eye(3, dtype=np.float32)
    x = np.ones((2, 3), np.float32)

    def run(labels):
        inputs, outputs = {"y_true": labels}, {"embeddings": x}
        return call_plugin(
            name, inputs, outputs, config={"num_classes": 3}, state={"proxies": proxies}
        )

    with pytest.raises(Exception, match=rf"{name}.*class ids outside \[0, num_classes=3\)"):
        run(np.array([0, 3]))
    with pytest.raises(lossplug.InvalidTensorError, match=rf"{name}.*one-hot\?"):
        run(np.eye(3, dtype=np.int32)[:2])


# ----------------------------------------------------------------------------- training
def proxies_of(model) -> keras.Variable:
    """The proxies of the (one) proxy loss a model is compiled with."""
    return next(w for w in model.weights if w.path.endswith("proxies"))


def check_adam_moves_a_proxy_by_the_learning_rate(name: str, labels) -> None:
    """Dense proxy gradients (no IndexedSlices): with repeated labels, Adam's first step is
    lr per coordinate, not up to sqrt(k) lr for k samples of a class (see the authoring
    guide's note)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    embeddings = keras.layers.Dense(3, name="embeddings")(inputs)
    model = lossplug.LossModel(inputs, embeddings)
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=lossplug.use(name, num_classes=4))
    proxies = proxies_of(model)
    before = proxies.numpy().copy()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, np.asarray(labels, "int32"), epochs=1, batch_size=8, verbose=0)
    step = np.abs(proxies.numpy() - before)
    assert step.max() <= 0.1 + 1e-5 and step.max() > 0.09


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: pixels in [0, 1] (float32, 64 per image), int32 labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def np_distances(x, metric: str) -> np.ndarray:
    """Distances between the rows of x in float64, "euclidean" or "cosine" (1 - cos, in
    [0, 2]), as the pair losses' references compute them; 0 on the diagonal."""
    return np_pairwise(x, None, metric, L2_EPSILON)


def distance_ratio(embeddings, labels, metric: str = "euclidean") -> float:
    """Mean inter-class over mean intra-class distance ("euclidean" or "cosine")."""
    d = np_distances(embeddings, metric)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    return float(d[~same].mean() / d[same & off].mean())


def embedding_model() -> lossplug.LossModel:
    """64 pixels -> 64 (relu) -> 16-D ``embeddings``, initialised with seed 0."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    return lossplug.LossModel(inputs, keras.layers.Dense(16, name="embeddings")(hidden))


def check_training_separates_the_digits(
    name: str,
    metric: str = "euclidean",
    *,
    batch_size: int = 128,
    batch_order: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Five epochs of plugin ``name`` on the digits: the loss falls by 30% and the ratio of
    inter- to intra-class distances of the embeddings grows by half. ``batch_order(labels)``
    gives the order of the samples when the batches must be formed (not shuffled)."""
    x, y = digits()
    model = embedding_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=lossplug.use(name))
    before = distance_ratio(model.predict(x, verbose=0), y, metric)
    if batch_order is None:
        history = model.fit(x, y, epochs=5, batch_size=batch_size, verbose=0)
    else:
        order = batch_order(y)
        history = model.fit(
            x[order], y[order], epochs=5, batch_size=batch_size, shuffle=False, verbose=0
        )
    after = distance_ratio(model.predict(x, verbose=0), y, metric)
    losses = history.history[name]
    print(
        f"\n{name} on digits: inter/intra {metric} distance ratio {before:.2f} -> {after:.2f}, "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    assert losses[-1] < 0.7 * losses[0], losses
    assert after > 1.5 * before, (before, after)


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _proxy_scores(model, x_train, y_train, x_test, y_test) -> tuple[float, float, float]:
    """(nearest-proxy accuracy, 1-NN accuracy, inter / intra-class distance ratio), held out."""
    train, test = _unit(model.predict(x_train, verbose=0)), _unit(model.predict(x_test, verbose=0))
    proxies = _unit(proxies_of(model).numpy())
    nearest_proxy = float(((test @ proxies.T).argmax(1) == y_test).mean())
    one_nn = float((y_train[(test @ train.T).argmax(1)] == y_test).mean())
    return nearest_proxy, one_nn, distance_ratio(test, y_test)


def check_training_gathers_each_class_around_its_proxy(
    name: str, loss_drop: float, ratio_gain: float
) -> None:
    """Five epochs of proxy loss ``name`` on 70% of the digits: on the other 30%, over 85%
    of the embeddings are nearest to their class's proxy, 1-NN accuracy gains 4 points and
    the inter / intra-class distance ratio grows by ``ratio_gain``; the loss falls to
    ``loss_drop`` of its first epoch's and the proxy accuracy exceeds 90%."""
    from sklearn.model_selection import train_test_split

    x, y = digits()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    model = embedding_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=lossplug.use(name, num_classes=10))
    before = _proxy_scores(model, x_train, y_train, x_test, y_test)
    history = model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0).history
    after = _proxy_scores(model, x_train, y_train, x_test, y_test)
    names = ("nearest-proxy accuracy", "1-NN accuracy", "inter/intra distance ratio")
    print("\ndigits, held out, before -> after 5 epochs:")
    for score, b, a in zip(names, before, after, strict=True):
        print(f"  {score}: {b:.3f} -> {a:.3f}")
    assert history[name][-1] < loss_drop * history[name][0]
    assert history[f"{name}_proxy_accuracy"][-1] > 0.9
    assert after[0] > 0.85 and after[1] > before[1] + 0.04 and after[2] > ratio_gain * before[2]

"""The ``categorical_true_positives`` metric plugin: counting, accumulation and reset."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug.terms import call_plugin
from lossplug.testing import conformance_tests

NAME = "categorical_true_positives"

test_conformance = conformance_tests("categorical_true_positives")  # the kit: every check and claim


def call(y_true, y_pred, sample_weight=None):
    """Call the installed plugin through the core's validation; return (count, aggregation)."""
    spec = lossplug.registry.spec(NAME)
    extras = lossplug.Extras(
        config=spec.make_config({}),
        epoch=ops.zeros((), "int64"),
        step=ops.zeros((), "int64"),
        training=True,
        state=lossplug.StateStore(plugin=NAME),
        sample_weight=sample_weight,
    )
    out = call_plugin(
        spec,
        lossplug.registry.hook_caller(NAME),
        {"y_true": y_true},
        {"y_pred": y_pred},
        extras,
        term=NAME,
    )
    assert out.loss is None and list(out.metrics) == [NAME]
    value, aggregation = out.metrics[NAME]
    return float(ops.convert_to_numpy(value)), aggregation


def logged_key(logs, term=NAME):
    """History key of the term's metric: a metric named like its plugin goes by the term name."""
    assert term in logs, f"expected the metric of {term!r} in {sorted(logs)}"
    assert not any(key.startswith(f"{term}_") for key in logs), sorted(logs)
    return term


@st.composite
def batches(draw):
    batch, classes = draw(st.integers(1, 8)), draw(st.integers(2, 5))
    labels = draw(hnp.arrays(np.int32, (batch,), elements=st.integers(0, classes - 1)))
    # few distinct values, so that ties between classes happen
    logits = draw(
        hnp.arrays(np.float32, (batch, classes), elements=st.sampled_from([-1.0, 0.0, 2.5]))
    )
    weights = draw(hnp.arrays(np.float32, (batch,), elements=st.floats(0.0, 3.0, width=32)))
    return labels, logits, weights


@settings(max_examples=40, deadline=None)
@given(batches())
def test_count_is_the_number_of_correct_argmaxes_for_every_label_form(batch):
    labels, logits, weights = batch
    hits = logits.argmax(axis=-1) == labels  # ties: the first maximal class, as numpy
    one_hot = np.eye(logits.shape[1], dtype="float32")[labels]
    for y_true in (labels, labels[:, None], one_hot, labels.astype("float32")):
        count, aggregation = call(y_true, logits)
        assert aggregation == "sum"
        assert count == hits.sum()
    count, _ = call(labels, logits, sample_weight=weights)
    assert count == pytest.approx(float(np.sum(weights * hits)), rel=1e-6, abs=1e-6)


def test_probabilities_count_like_their_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype("float32")
    labels = rng.integers(0, 4, 50)
    probabilities = ops.convert_to_numpy(ops.softmax(logits))
    assert (
        call(labels, logits)[0]
        == call(labels, probabilities)[0]
        == (logits.argmax(-1) == labels).sum()
    )


def test_spec_declares_a_metric_only_plugin():
    spec = lossplug.registry.spec(NAME)
    assert spec.returns == "metrics" and spec.properties == ()
    with pytest.raises(lossplug.PluginConfigError, match=f"'{NAME}' has no parameter 'top_k'"):
        lossplug.use(NAME, top_k=5)


def make_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    logits = keras.layers.Dense(3)(hidden)
    return lossplug.LossModel(inputs, logits)


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (np.argmax(x[:, :3], axis=1)).astype("int64")
    return x, y


@pytest.mark.slow
def test_evaluate_counts_the_correct_predictions_over_all_batches():
    x, y = data()
    model = make_classifier()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), NAME],
    )
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    correct = int((model.predict(x, verbose=0).argmax(-1) == y).sum())
    assert correct > 0
    first = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)  # 7 batches
    assert first[logged_key(first)] == correct
    again = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    assert again[logged_key(again)] == correct  # reset, not accumulated over calls
    weights = np.where(np.arange(len(y)) % 2 == 0, 1.0, 0.0).astype("float32")
    weighted = model.evaluate(
        x, y, sample_weight=weights, batch_size=10, verbose=0, return_dict=True
    )
    hits = model.predict(x, verbose=0).argmax(-1) == y
    assert weighted[logged_key(weighted)] == int(hits[::2].sum())


@pytest.mark.slow
def test_the_count_is_reset_at_every_epoch():
    x, y = data()
    model = make_classifier(seed=1)
    # learning rate 0: the predictions are the same in every epoch
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), NAME],
    )
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history
    correct = int((model.predict(x, verbose=0).argmax(-1) == y).sum())
    assert history[logged_key(history)] == [correct] * 3


def test_a_single_score_column_is_refused():
    with pytest.raises(lossplug.PluginConfigError, match="C >= 2 classes"):
        call(np.zeros((3,), "int32"), np.zeros((3, 1), "float32"))

"""What a plugin returns is checked, with errors naming the plugin."""

from __future__ import annotations

import attrs
import keras
import lossplug
import numpy as np
import pytest
from keras import ops
from lossplug import Kind, PluginSpec, TensorSpec, hookimpl


@attrs.frozen
class Empty:
    pass


def plugin(name, fn, returns="per_sample"):
    class P:
        @hookimpl
        def lossplug_spec(self):
            return PluginSpec(
                name=name,
                description="test",
                config=Empty,
                tensors=(TensorSpec("y_pred", Kind.ANY, shape=("B", "C")),),
                returns=returns,
            )

        @hookimpl
        def build_loss_graph(self, inputs, outputs, extras):
            return fn(outputs["y_pred"])

    return P()


@pytest.fixture
def registered():
    names = []

    def add(name, fn, returns="per_sample"):
        lossplug.register(plugin(name, fn, returns), replace=True)
        names.append(name)

    yield add
    for name in names:
        lossplug.unregister(name)


def model():
    inputs = keras.Input((3,))
    return lossplug.LossModel(inputs, keras.layers.Dense(3)(inputs))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda p: ops.ones((5,)), r"loss of shape \(5,\), but the batch has 2 samples"),
        (
            lambda p: ops.cast(ops.argmax(p, axis=-1), "int32"),
            "dtype int32; losses must be floating",
        ),
        (lambda p: "loss", "returned a loss of type str"),
        (lambda p: None, "returned None"),
    ],
    ids=["shape", "dtype", "type", "none"],
)
def test_wrong_result_is_refused_at_compile(registered, fn, message):
    registered("bad_result", fn)
    with pytest.raises(lossplug.PluginResultError, match=message) as info:
        model().compile(loss="bad_result")
    assert "'bad_result'" in str(info.value)


def test_plugin_exception_starts_with_the_plugin_and_keeps_its_type(registered):
    def boom(p):
        raise RuntimeError("kaboom")

    registered("boom", boom)
    with pytest.raises(RuntimeError) as info:
        model().compile(loss="boom")
    assert str(info.value) == "loss plugin 'boom' (term 'boom'), in build_loss_graph: kaboom"


def test_plugin_exception_without_a_plain_message_gets_a_note(registered):
    def boom(p):
        raise KeyError("missing")  # KeyError's message is the repr of its argument

    registered("boom_key", boom)
    with pytest.raises(KeyError) as info:
        model().compile(loss="boom_key")
    assert any("loss plugin 'boom_key'" in note for note in info.value.__notes__)


def test_metrics_only_plugin_adds_no_loss(registered):
    registered(
        "only_metrics",
        lambda p: lossplug.LossResult(None, {"mean_pred": ops.mean(p)}),
        returns="metrics",
    )
    m = model()
    m.compile("sgd", loss=["mse", "only_metrics"])
    h = m.fit(np.ones((4, 3)), np.zeros((4, 3)), epochs=1, verbose=0).history
    assert "only_metrics_mean_pred" in h and "only_metrics" not in h
    assert h["loss"][0] == pytest.approx(h["mse"][0], rel=1e-5)


def test_metric_plugin_main_metric_goes_by_term_name(registered):
    registered(
        "mean_pred",
        lambda p: lossplug.LossResult(None, {"mean_pred": ops.mean(p)}),
        returns="metrics",
    )
    m = model()
    m.compile("sgd", loss=["mse", "mean_pred"])
    h = m.fit(np.ones((4, 3)), np.zeros((4, 3)), epochs=1, verbose=0).history
    assert "mean_pred" in h and "mean_pred_mean_pred" not in h


def test_probe_accepts_sparse_targets_for_any_kind(registered):
    class AnyTargets:
        @hookimpl
        def lossplug_spec(self):
            return PluginSpec(
                name="any_targets",
                description="test",
                config=Empty,
                tensors=(
                    TensorSpec("y_true", Kind.ANY, source="inputs"),
                    TensorSpec("y_pred", Kind.ANY),
                ),
            )

        @hookimpl
        def build_loss_graph(self, inputs, outputs, extras):
            return keras.losses.sparse_categorical_crossentropy(
                inputs["y_true"], outputs["y_pred"], from_logits=True
            )

    lossplug.register(AnyTargets(), replace=True)
    try:
        m = model()
        m.compile("sgd", loss="any_targets")
        h = m.fit(np.ones((4, 3)), np.array([0, 1, 2, 0]), epochs=1, verbose=0).history
        assert np.isfinite(h["any_targets"][0])
    finally:
        lossplug.unregister("any_targets")

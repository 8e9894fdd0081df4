"""Hook calling: a named loss calls exactly its plugin; wrappers see every call."""

from __future__ import annotations

import attrs
import keras
import lossplug
import numpy as np
import pytest
from keras import ops
from lossplug import hookimpl

pytestmark = pytest.mark.usefixtures("toy_plugins")


def small_model():
    inputs = keras.Input((5,))
    features = keras.layers.Dense(4, name="features")(inputs)
    return lossplug.LossModel(inputs, keras.layers.Dense(3)(features), expose=["features"])


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 5)).astype("float32"), rng.integers(0, 3, 16)


class Observer:
    def __init__(self):
        self.terms = []

    @hookimpl(wrapper=True)
    def build_loss_graph(self, inputs, outputs, extras):
        result = yield
        self.terms.append(extras.term)
        return result


class Doubler:
    @hookimpl(wrapper=True)
    def build_loss_graph(self, inputs, outputs, extras):
        result = yield
        if isinstance(result, lossplug.LossResult):
            return result._replace(loss=ops.multiply(result.loss, 2.0))
        return ops.multiply(result, 2.0)


def test_named_loss_calls_exactly_its_plugin(toy_plugins):
    toy_plugins.EpochProbe.calls = 0
    model = small_model()
    model.compile("sgd", loss=["toy_ce", lossplug.use("toy_center", num_classes=3)])
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    assert toy_plugins.EpochProbe.calls == 0  # registered, never named, never called


def test_a_plugin_registered_later_never_answers_for_an_earlier_term(toy_plugins):
    # build_loss_graph is firstresult: a caller made before another plugin was registered
    # must still reach only its own plugin (a retrace of an earlier model's step, e.g. for a
    # new batch size, would otherwise run the newer plugin's loss).
    model = small_model()
    model.compile("sgd", loss=["toy_ce"])
    x, y = data()
    before = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)

    class Impostor(toy_plugins.SparseCE):
        @hookimpl
        def lossplug_spec(self):
            return (
                super()
                .lossplug_spec()
                .__class__(
                    **{
                        **attrs.asdict(super().lossplug_spec(), recurse=False),
                        "name": "toy_impostor",
                    }
                )
            )

        @hookimpl
        def build_loss_graph(self, inputs, outputs, extras):
            return ops.zeros_like(ops.cast(outputs["y_pred"], "float32")[:, 0]) + 123.0

    lossplug.register(Impostor())
    try:
        after = model.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)  # retraces
    finally:
        lossplug.unregister("toy_impostor")
    assert after["toy_ce"] == pytest.approx(before["toy_ce"], rel=1e-5)


def test_wrappers_observe_every_call_and_can_change_results():
    observer, doubler = Observer(), Doubler()
    x, y = data()
    keras.utils.set_random_seed(0)
    plain = small_model()
    plain.compile("sgd", loss="toy_ce")
    expected = plain.evaluate(x, y, verbose=0, return_dict=True)["toy_ce"]
    lossplug.register_wrapper(observer)
    lossplug.register_wrapper(doubler)
    try:
        keras.utils.set_random_seed(0)
        model = small_model()
        model.compile("sgd", loss=["toy_ce", lossplug.use("toy_center", num_classes=3)])
        result = model.evaluate(x, y, verbose=0, return_dict=True)
    finally:
        lossplug.unregister_wrapper(observer)
        lossplug.unregister_wrapper(doubler)
    # The compile-time probe and the traced evaluation step, once per term each.
    assert observer.terms.count("toy_ce") >= 2 and observer.terms.count("toy_center") >= 2
    assert result["toy_ce"] == pytest.approx(2 * expected, rel=1e-5)

"""Spec validation: invalid specs and configs fail with the plugin, field and rule named."""

from __future__ import annotations

import attrs
import lossplug
import pytest
from lossplug import Kind, PluginSpec, TensorSpec, param
from lossplug.specs import make_config


@attrs.frozen
class EmptyConfig:
    pass


pytestmark = pytest.mark.backend_independent


@attrs.frozen
class Config:
    epsilon: float = param(0.1, low=0.0, high=1.0, high_inclusive=False, doc="smoothing")
    mode: str = param("a", choices=("a", "b"))
    classes: int = param(10, low=1)


def spec(**changes):
    base = dict(
        name="my_loss",
        description="a loss",
        config=Config,
        tensors=(TensorSpec("y_pred", Kind.LOGITS, shape=("B", "C")),),
    )
    base.update(changes)
    return PluginSpec(**base)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "My-Loss"}, "plugin name 'My-Loss' is invalid"),
        ({"name": "mse"}, "Keras built-in loss name"),
        ({"description": ""}, "description must be one non-empty line"),
        ({"description": "two\nlines"}, "description must be one non-empty line"),
        ({"config": dict}, "config must be an attrs class"),
        (
            {"tensors": (TensorSpec("y", Kind.ANY), TensorSpec("y", Kind.ANY))},
            "tensor 'y' is declared twice",
        ),
        ({"properties": ("non-negative",)}, "lossplug.properties.Property"),
        ({"api_version": 0}, "api_version must be a positive int"),
    ],
)
def test_invalid_specs_name_the_plugin_and_field(changes, message):
    with pytest.raises(lossplug.InvalidSpecError, match=message):
        spec(**changes)


def test_config_field_without_default_is_refused():
    @attrs.frozen
    class NoDefault:
        k: int = param(low=1)

    with pytest.raises(lossplug.InvalidSpecError, match="Config field 'k' has no default"):
        spec(config=NoDefault)


def test_dice_may_shadow_keras_name():
    assert spec(name="dice").name == "dice"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epsilon": 1.0}, r"parameter epsilon=1.0 is invalid: must be in \[0.0, 1.0\)"),
        ({"epsilon": -0.5}, r"epsilon=-0.5 is invalid"),
        ({"epsilon": float("nan")}, r"epsilon=nan is invalid"),
        ({"epsilon": "x"}, r"must be int or float, got str"),
        ({"mode": "c"}, r"must be one of 'a', 'b'"),
        ({"classes": True}, r"must be int, got bool"),
        ({"classes": 0}, r"classes=0 is invalid: must be in \[1, inf\]"),
        (
            {"gamma": 1},
            r"plugin 'my_loss' has no parameter 'gamma'; its parameters are: epsilon, mode, classes",
        ),
    ],
)
def test_bad_config_names_plugin_field_value_and_rule(values, message):
    with pytest.raises(lossplug.PluginConfigError, match=message) as info:
        make_config(spec(), values)
    assert "my_loss" in str(info.value)


def test_valid_config_and_metadata():
    config = make_config(spec(), {"epsilon": 0.2, "classes": 3})
    assert config == Config(epsilon=0.2, mode="a", classes=3)
    meta = attrs.fields(Config).epsilon.metadata["lossplug"]
    assert meta["low"] == 0.0 and meta["high"] == 1.0 and meta["doc"] == "smoothing"


def test_schedules_validate_and_compute():
    from lossplug import schedules

    assert schedules.LinearRamp(0, 1, begin=2, stop=6).value_at(4) == pytest.approx(0.5)
    assert schedules.Step([2, 4], [1.0, 0.5, 0.1]).value_at(3) == pytest.approx(0.5)
    assert schedules.Cosine(1.0, 0.0, stop=10).value_at(5) == pytest.approx(0.5)
    assert schedules.Cosine(1.0, 0.0, stop=10).value_at(12) == pytest.approx(0.0)
    with pytest.raises(lossplug.PluginConfigError, match="stop .* must be greater than begin"):
        schedules.LinearRamp(0, 1, begin=3, stop=3)
    with pytest.raises(
        lossplug.PluginConfigError, match="len\\(values\\) == len\\(boundaries\\) \\+ 1"
    ):
        schedules.Step([1], [1.0])
    with pytest.raises(lossplug.PluginConfigError, match="must be finite"):
        schedules.as_schedule(float("inf"))


def test_tuple_fields_round_trip_through_json_lists():
    @attrs.frozen
    class WithTuple:
        sizes: tuple = param((1, 2), doc="sizes")

    s = spec(config=WithTuple)
    assert make_config(s, {"sizes": [3, 4]}) == WithTuple(sizes=(3, 4))
    with pytest.raises(lossplug.PluginConfigError, match="must be tuple, got str"):
        make_config(s, {"sizes": "34"})


def test_spec_looks_up_its_tensors_by_name():
    s = spec()
    assert s.tensor("y_pred").kind == Kind.LOGITS
    with pytest.raises(KeyError):
        s.tensor("features")


def test_a_plugin_declaring_other_backends_is_refused_by_name():
    import keras
    import lossplug

    current = keras.backend.backend()
    other = next(b for b in ("tensorflow", "jax", "torch") if b != current)

    class OnlyOther:
        @lossplug.hookimpl
        def lossplug_spec(self):
            return lossplug.PluginSpec(
                name="only_other",
                description="declares another backend (test plugin)",
                config=EmptyConfig,
                tensors=(lossplug.TensorSpec("y_pred", lossplug.Kind.ANY),),
                backends=(other,),
            )

        @lossplug.hookimpl
        def build_loss_graph(self, inputs, outputs, extras):
            return outputs["y_pred"]

    lossplug.register(OnlyOther())
    try:
        with pytest.raises(lossplug.UnsupportedBackendError) as info:
            lossplug.use("only_other")
        assert str(info.value).startswith(
            f"loss plugin 'only_other' supports the Keras backends {other}; this process "
            f"uses {current!r}."
        )
    finally:
        lossplug.unregister("only_other")


def test_backends_must_be_known_names():
    with pytest.raises(lossplug.InvalidSpecError, match="backends must be None"):
        lossplug.PluginSpec(
            name="bad_backends",
            description="x",
            config=EmptyConfig,
            tensors=(),
            backends=("theano",),
        )

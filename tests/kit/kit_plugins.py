"""Plugins for testing the conformance kit: correct references and deliberately broken mutants.

Every plugin is a class; an instance is registered in-process with
``lossplug.register`` by the ``register`` fixture (tests/kit/conftest.py). The
references must pass every check; each mutant plants one bug that one check
must catch (see ``MUTANTS`` at the bottom).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import keras
import numpy as np
from keras import ops
from lossplug import Kind, LossResult, Metric, PluginSpec, TensorSpec, hookimpl, numerics, param
from lossplug.properties import (
    Bounded,
    Custom,
    Example,
    Monotone,
    NonNegative,
    ReducesTo,
    ScaleInvariant,
    Symmetric,
    ZeroAtPerfect,
)


def compute_dtype(x: Any) -> str:
    """float64 stays float64 (finite differences); everything else is computed in float32."""
    return "float64" if keras.backend.standardize_dtype(x.dtype) == "float64" else "float32"


class Plugin:
    """Base of the test plugins: a spec plus ``compute(inputs, outputs, extras)``."""

    name = "kit_plugin"
    description = "a conformance-kit test plugin"
    Config: type
    returns = "per_sample"
    batch_coupled = False

    def __init__(self, name: str | None = None, properties: tuple | None = None) -> None:
        if name is not None:
            self.name = name
        self.properties = self.default_properties() if properties is None else tuple(properties)

    def tensors(self) -> tuple[TensorSpec, ...]:
        raise NotImplementedError

    def default_properties(self) -> tuple:
        return ()

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        raise NotImplementedError

    @hookimpl
    def lossplug_spec(self) -> PluginSpec:
        return PluginSpec(
            name=self.name,
            description=self.description,
            config=self.Config,
            tensors=self.tensors(),
            properties=self.properties,
            batch_coupled=self.batch_coupled,
            returns=self.returns,
        )

    @hookimpl
    def build_loss_graph(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        return self.compute(inputs, outputs, extras)


# ------------------------------------------------------------------ helpers
def numpy_ce(example: Example) -> np.ndarray:
    """Sparse categorical cross-entropy from logits, in float64 NumPy."""
    z = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    y = np.asarray(example.inputs["y_true"]).astype(int)
    top = z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=-1)) + top[:, 0]
    return log_norm - z[np.arange(len(y)), y]


def confident_logits(example: Example) -> Example:
    """The perfect prediction for sparse labels: logits +1e4 on the true class."""
    z = np.asarray(example.outputs["y_pred"])
    y = np.asarray(example.inputs["y_true"]).astype(int)
    perfect = np.zeros_like(z)
    perfect[np.arange(len(y)), y] = 1e4
    return example.with_tensor("y_pred", perfect)


def true_logit_helps(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """Raising the true-class logit never increases a sample's loss."""
    z = np.asarray(example.outputs["y_pred"], dtype=np.float64)
    y = np.asarray(example.inputs["y_true"]).astype(int)
    better = z.copy()
    better[np.arange(len(y)), y] += 1.0
    before = np.asarray(loss_fn(example))
    after = np.asarray(loss_fn(example.with_tensor("y_pred", better)))
    assert np.all(after <= before + 1e-5), f"loss rose from {before.tolist()} to {after.tolist()}"


def sparse_tensors() -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("y_true", Kind.SPARSE_LABELS, source="inputs", shape=("B",), classes="C"),
        TensorSpec("y_pred", Kind.LOGITS, shape=("B", "C")),
    )


def log_softmax_true(inputs: Any, outputs: Any) -> tuple[Any, Any]:
    """log p(true class) (stable), and the computation dtype."""
    z = outputs["y_pred"]
    dtype = compute_dtype(z)
    z = ops.cast(z, dtype)
    y = ops.cast(inputs["y_true"], "int32")
    logp = ops.log_softmax(z, axis=-1)
    return ops.sum(logp * ops.one_hot(y, ops.shape(z)[-1], dtype=dtype), axis=-1), dtype


# ------------------------------------------------------------------ references
@attrs.frozen
class FocalConfig:
    gamma: float = param(2.0, low=0.0, high=5.0, doc="focusing parameter")


class Focal(Plugin):
    """Focal cross-entropy -(1 - p)^gamma log p (sparse labels, logits); a correct reference."""

    name = "kit_focal"
    description = "focal cross-entropy (conformance-kit reference)"
    Config = FocalConfig

    def tensors(self) -> tuple[TensorSpec, ...]:
        return sparse_tensors()

    def default_properties(self) -> tuple:
        return (
            NonNegative(),
            Bounded(low=0.0),
            ZeroAtPerfect(perfect=confident_logits, description="logits +1e4 on the true class"),
            ReducesTo("sparse categorical cross-entropy", reference=numpy_ce, at={"gamma": 0.0}),
            Monotone("gamma", values=(0.0, 0.5, 1.0, 2.0, 5.0)),
            Custom(
                "true logit helps",
                check=true_logit_helps,
                description="raising the true-class logit never increases the loss",
            ),
        )

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        log_p, _ = log_softmax_true(inputs, outputs)
        one_minus_p = numerics.maximum(1.0 - ops.exp(log_p), 1e-12)
        return -ops.power(one_minus_p, extras.config.gamma) * log_p


@attrs.frozen
class CenterConfig:
    num_classes: int = param(4, low=1, high=64, doc="number of classes")


class Center(Plugin):
    """||x - c_y||^2 with trainable random centres in the state store; a correct reference."""

    name = "kit_center"
    description = "center loss with state (conformance-kit reference)"
    Config = CenterConfig

    def tensors(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("features", Kind.EMBEDDINGS, shape=("B", "D")),
            TensorSpec(
                "y_true", Kind.SPARSE_LABELS, source="inputs", shape=("B",), classes="num_classes"
            ),
        )

    def default_properties(self) -> tuple:
        def on_centres(example: Example) -> Example:
            centres = np.asarray(example.state["centers"])
            y = np.asarray(example.inputs["y_true"]).astype(int)
            return example.with_tensor("features", centres[y])

        return (
            NonNegative(),
            ZeroAtPerfect(
                perfect=on_centres, atol=1e-5, description="features on their class centres"
            ),
        )

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        x = outputs["features"]
        dtype = compute_dtype(x)
        x = ops.cast(x, dtype)
        centres = extras.state.variable(
            "centers", (extras.config.num_classes, x.shape[-1]), initializer="random_normal"
        )
        c = ops.take(ops.cast(centres, dtype), ops.cast(inputs["y_true"], "int32"), axis=0)
        loss = ops.sum(ops.square(x - c), axis=-1)
        return LossResult(loss=loss, metrics={"distance": Metric(ops.mean(ops.sqrt(loss + 1.0)))})


@attrs.frozen
class NoConfig:
    pass


def _unit(x: Any) -> Any:
    # numerics.maximum, not ops.maximum: Keras 3.15 computes ops.maximum of a float64
    # tensor in float32 on JAX and torch (docs/decisions.md), which the finite-difference
    # check (float64) sees as an error of ~1e-3
    return x / ops.sqrt(numerics.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


class Cosine(Plugin):
    """1 - cos(a, b) between two embeddings; a correct reference."""

    name = "kit_cosine"
    description = "cosine distance (conformance-kit reference)"
    Config = NoConfig

    def tensors(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("a", Kind.EMBEDDINGS, shape=("B", "D")),
            TensorSpec("b", Kind.EMBEDDINGS, shape=("B", "D")),
        )

    def default_properties(self) -> tuple:
        return (
            NonNegative(atol=1e-6),
            Bounded(0.0, 2.0),
            Symmetric("a", "b"),
            ScaleInvariant("a"),
            ZeroAtPerfect(
                perfect=lambda ex: ex.with_tensor("b", ex.outputs["a"]),
                atol=1e-5,
                description="b == a",
            ),
        )

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        dtype = compute_dtype(outputs["a"])
        a, b = ops.cast(outputs["a"], dtype), ops.cast(outputs["b"], dtype)
        return 1.0 - ops.sum(_unit(a) * _unit(b), axis=-1)


class Accuracy(Plugin):
    """A metric-only plugin: accuracy of the arg-max prediction; a correct reference."""

    name = "kit_accuracy"
    description = "accuracy metric (conformance-kit reference)"
    Config = NoConfig
    returns = "metrics"

    def tensors(self) -> tuple[TensorSpec, ...]:
        return sparse_tensors()

    def default_properties(self) -> tuple:
        return (Bounded(0.0, 1.0),)

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        predicted = ops.argmax(outputs["y_pred"], axis=-1)
        hits = ops.cast(
            ops.equal(ops.cast(predicted, "int32"), ops.cast(inputs["y_true"], "int32")), "float32"
        )
        return LossResult(loss=None, metrics={"accuracy": ops.mean(hits)})


REFERENCES = (Focal, Center, Cosine, Accuracy)


# ------------------------------------------------------------------ mutants
class CrossEntropy(Plugin):
    """Plain sparse cross-entropy; the base the mutants change."""

    name = "kit_ce"
    description = "sparse cross-entropy (mutant base)"
    Config = NoConfig

    def tensors(self) -> tuple[TensorSpec, ...]:
        return sparse_tensors()

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        log_p, _ = log_softmax_true(inputs, outputs)
        return -log_p


class NegativeCE(CrossEntropy):
    """Bug: subtracts a constant, so confident samples get negative losses (claims >= 0)."""

    name = "kit_bad_negative"

    def default_properties(self) -> tuple:
        return (NonNegative(),)

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        return super().compute(inputs, outputs, extras) - 1.0


class NaiveSoftmaxCE(CrossEntropy):
    """Bug: softmax without subtracting the max: exp(1e4) = inf, inf / inf = NaN."""

    name = "kit_bad_extreme_nan"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        z = ops.cast(outputs["y_pred"], "float32")
        e = ops.exp(z)
        p = e / ops.sum(e, axis=-1, keepdims=True)
        onehot = ops.one_hot(ops.cast(inputs["y_true"], "int32"), ops.shape(z)[-1])
        return -ops.log(ops.sum(p * onehot, axis=-1))


class Float16OverflowCE(CrossEntropy):
    """Bug: logits clipped to +-30 then a naive softmax in the input dtype: exp(12) overflows
    float16 (largest value 65504), so float16 inputs give NaN while float32 is fine."""

    name = "kit_bad_float16"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        z = ops.clip(outputs["y_pred"], -30.0, 30.0)
        e = ops.exp(z)
        onehot = ops.one_hot(ops.cast(inputs["y_true"], "int32"), ops.shape(z)[-1], dtype=z.dtype)
        true = ops.sum(e * onehot, axis=-1)
        return ops.cast(-ops.log(true / ops.sum(e, axis=-1)), "float32")


class PreAveragedCE(CrossEntropy):
    """Bug: divides the per-sample losses by the batch size (the core averages again)."""

    name = "kit_bad_reduction"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        loss = super().compute(inputs, outputs, extras)
        return loss / ops.cast(ops.shape(loss)[0], loss.dtype)


class ScalarCE(CrossEntropy):
    """Bug: returns the batch mean although the spec says per_sample (sample weights lost)."""

    name = "kit_bad_shape"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        return ops.mean(super().compute(inputs, outputs, extras))


class BatchNormalisedCE(CrossEntropy):
    """Bug: standardises the logits with batch statistics, so samples influence each other."""

    name = "kit_bad_independence"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        z = ops.cast(outputs["y_pred"], compute_dtype(outputs["y_pred"]))
        z = z - ops.mean(z, axis=0, keepdims=True)
        return super().compute(inputs, {"y_pred": z}, extras)


class GraphBreakingCE(CrossEntropy):
    """Bug: pulls values to NumPy inside the loss, which only works eagerly."""

    name = "kit_bad_graph"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        scale = float(np.asarray(outputs["y_pred"]).std() + 1.0)
        return super().compute(inputs, outputs, extras) * (scale / scale)


class OutsideStateCenter(Center):
    """Bug: keeps its centres in a keras.Variable of its own, not in extras.state: they are
    neither trained nor saved (every other check passes)."""

    name = "kit_bad_state"

    def __init__(self) -> None:
        super().__init__()
        self._centres: Any = None

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        x = outputs["features"]
        dtype = compute_dtype(x)
        if self._centres is None:
            self._centres = keras.Variable(
                np.zeros((extras.config.num_classes, x.shape[-1]), "float32"), name="centres"
            )
        c = ops.take(ops.cast(self._centres, dtype), ops.cast(inputs["y_true"], "int32"), axis=0)
        return ops.sum(ops.square(ops.cast(x, dtype) - c), axis=-1)


class RunningCenter(Center):
    """||x - c_y||^2 with centres that follow their own rule, not the optimizer; a correct
    reference for the update checks: c_j <- c_j - 1/2 sum_{y_i = j} (c_j - x_i) / (1 + n_j).
    """

    name = "kit_running_center"
    description = "center loss with centres updated by a rule (conformance-kit reference)"

    def centres(self, extras: Any, x: Any) -> Any:
        return extras.state.variable(
            "centers", (extras.config.num_classes, x.shape[-1]), trainable=False
        )

    def new_centres(self, centres: Any, x: Any, y: Any, num_classes: int) -> Any:
        one_hot = ops.one_hot(ops.cast(y, "int32"), num_classes, dtype="float32")
        counts = ops.sum(one_hot, axis=0)[:, None]
        sums = ops.matmul(ops.transpose(one_hot), ops.cast(x, "float32"))
        delta = (counts * centres - sums) / (1.0 + counts)
        return centres - 0.5 * delta

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        x = outputs["features"]
        dtype = compute_dtype(x)
        centres = self.centres(extras, x)
        y = inputs["y_true"]
        if extras.training:
            frozen = ops.stop_gradient(ops.convert_to_tensor(centres))
            self.record(extras, centres, self.new_centres(frozen, x, y, extras.config.num_classes))
        c = ops.take(ops.cast(centres, dtype), ops.cast(y, "int32"), axis=0)
        return ops.sum(ops.square(ops.cast(x, dtype) - ops.stop_gradient(c)), axis=-1)

    def record(self, extras: Any, centres: Any, value: Any) -> None:
        extras.state.update("centers", ops.stop_gradient(value))


class AssigningCenter(RunningCenter):
    """Bug: assigns the new centres itself, bypassing the core (applied at every call,
    before the optimizer, also for a step the finite guard skips)."""

    name = "kit_bad_assign"

    def record(self, extras: Any, centres: Any, value: Any) -> None:
        centres.assign(value)


class NoisyCenter(RunningCenter):
    """Bug: the update draws fresh noise on every call, so it is not deterministic."""

    name = "kit_bad_noisy_update"

    def record(self, extras: Any, centres: Any, value: Any) -> None:
        noise = keras.random.normal(ops.shape(value), stddev=0.01)
        extras.state.update("centers", value + noise)


class NormalisedCenter(RunningCenter):
    """Bug: moves the centres towards the *normalised* features x / ||x||: a zero feature
    row makes the update NaN while the loss stays finite."""

    name = "kit_bad_update_extremes"

    def new_centres(self, centres: Any, x: Any, y: Any, num_classes: int) -> Any:
        x = ops.cast(x, "float32")
        unit = x / ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        return super().new_centres(centres, unit, y, num_classes)


@attrs.frozen
class TemperatureConfig:
    temperature: float = param(1.0, doc="softmax temperature (no range declared: the bug)")


class UnrangedTemperatureCE(CrossEntropy):
    """Bug: a temperature without a declared range; at temperature 0 the loss is NaN."""

    name = "kit_bad_range"
    Config = TemperatureConfig

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        z = ops.cast(outputs["y_pred"], compute_dtype(outputs["y_pred"]))
        return super().compute(inputs, {"y_pred": z / extras.config.temperature}, extras)


class NeighbourPull(Plugin):
    """Bug: pulls each sample towards the next one in the batch; declared batch-coupled, but
    the per-sample values then depend on the order of the batch."""

    name = "kit_bad_batch_order"
    description = "pull towards the next sample (mutant)"
    Config = NoConfig
    batch_coupled = True

    def tensors(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("features", Kind.EMBEDDINGS, shape=("B", "D")),)

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        x = ops.cast(outputs["features"], compute_dtype(outputs["features"]))
        return ops.sum(ops.square(x - ops.roll(x, 1, axis=0)), axis=-1)


class SameClassSpread(Plugin):
    """Bug: mean squared distance to the other samples of the same class as sum / count, with
    no guard for count == 0: a batch of one (or all labels distinct) gives 0 / 0 = NaN."""

    name = "kit_bad_degenerate"
    description = "same-class spread (mutant)"
    Config = NoConfig
    batch_coupled = True

    def tensors(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("features", Kind.EMBEDDINGS, shape=("B", "D")),
            TensorSpec("y_true", Kind.SPARSE_LABELS, source="inputs", shape=("B",)),
        )

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        x = ops.cast(outputs["features"], compute_dtype(outputs["features"]))
        y = ops.cast(inputs["y_true"], "int32")
        same = ops.cast(ops.equal(y[:, None], y[None, :]), x.dtype)
        same = same * (1.0 - ops.eye(ops.shape(x)[0], dtype=x.dtype))
        d2 = ops.sum(ops.square(x[:, None, :] - x[None, :, :]), axis=-1)
        return ops.sum(same * d2, axis=-1) / ops.sum(same, axis=-1)


def _squared_error_wrong_gradient(diff: Any) -> Any:
    """diff^2 in value, but with the gradient 3 diff (should be 2 diff), on every backend."""
    return 1.5 * ops.square(diff) - ops.stop_gradient(0.5 * ops.square(diff))


@attrs.frozen
class RegressionConfig:
    pass


class WrongGradientMSE(Plugin):
    """Bug: squared error with a hand-written (wrong) gradient: 3 (y_pred - y_true) instead of 2."""

    name = "kit_bad_gradient"
    description = "squared error with a wrong custom gradient (mutant)"
    Config = RegressionConfig

    def tensors(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("y_true", Kind.REAL, source="inputs", shape=("B", "D")),
            TensorSpec("y_pred", Kind.REAL, shape=("B", "D")),
        )

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        dtype = compute_dtype(outputs["y_pred"])
        diff = ops.cast(outputs["y_pred"], dtype) - ops.cast(inputs["y_true"], dtype)
        # sum / D rather than ops.mean, which Keras 3.15 computes in float32 for float64
        # inputs on JAX and torch (docs/decisions.md): the check compares in float64
        return ops.sum(_squared_error_wrong_gradient(diff), axis=-1) / diff.shape[-1]


def _degrees_to_radians(value: float) -> float:
    return float(value) * math.pi / 180.0


@attrs.frozen
class AngleConfig:
    # Bug: a converter that is not idempotent; lossplug.use(**saved values) converts twice.
    margin: float = attrs.field(default=30.0, converter=_degrees_to_radians)


class AngleMarginCE(CrossEntropy):
    """Bug: its Config converts degrees to radians on every construction (no round trip)."""

    name = "kit_bad_config"
    Config = AngleConfig


@attrs.frozen
class WeightsConfig:
    # Bug: a set-valued field; JSON has no sets, so a saved config cannot be written or read.
    class_weights: frozenset = param(frozenset({1.0, 2.0}), kind=frozenset, doc="weights")


class TupleConfigCE(CrossEntropy):
    """Bug: a Config field holding a frozenset, which a saved (JSON) config cannot hold."""

    name = "kit_bad_config_tuple"
    Config = WeightsConfig


class AsymmetricCosine(Cosine):
    """Bug for the claims: adds 0.01 * ||a||, which is neither symmetric nor scale invariant."""

    name = "kit_bad_symmetric"

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        a = ops.cast(outputs["a"], compute_dtype(outputs["a"]))
        return super().compute(inputs, outputs, extras) + 0.01 * ops.sqrt(
            ops.sum(ops.square(a), axis=-1)
        )


@attrs.frozen
class TiltConfig:
    scale: float = param(1.0, low=0.5, high=2.0, doc="overall factor")
    tilt: float = param(0.0, low=0.0, high=1.0, neutral=0.0, doc="weight of the tilt term")


class TiltedCosine(Cosine):
    """scale * (1 - cos(a, b) - 5 tilt (1 + ||a||)): a correct plugin whose claims hold only
    at tilt = 0 (non-negative, bounded by 2 * scale, symmetric, invariant to scaling a, zero
    at b == a, non-decreasing in scale); claimed without ``at``, each of them is false (any
    tilt > 0.4 makes every loss negative, whatever the embeddings)."""

    name = "kit_tilted"
    description = "cosine distance plus a tilt term (conformance-kit reference for at=)"
    Config = TiltConfig

    def compute(self, inputs: Any, outputs: Any, extras: Any) -> Any:
        a = ops.cast(outputs["a"], compute_dtype(outputs["a"]))
        norm = ops.sqrt(ops.sum(ops.square(a), axis=-1))
        config = extras.config
        return config.scale * (
            super().compute(inputs, outputs, extras) - 5.0 * config.tilt * (1.0 + norm)
        )


def _at_least_zero(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    loss = np.asarray(loss_fn(example))
    assert np.all(loss >= -1e-5), f"loss {loss.tolist()} is below 0"


def tilted_claims(**at: Any) -> tuple:
    """One claim of every kind; each holds for TiltedCosine exactly when ``at`` fixes tilt=0."""
    return (
        NonNegative(atol=1e-6, at=at),
        Bounded(0.0, 4.0, at=at),
        Symmetric("a", "b", at=at),
        ScaleInvariant("a", at=at),
        ZeroAtPerfect(
            perfect=lambda ex: ex.with_tensor("b", ex.outputs["a"]),
            atol=1e-5,
            description="b == a",
            at=at,
        ),
        Monotone("scale", (0.5, 1.0, 2.0), increasing=True, at=at),
        Custom("at least zero", check=_at_least_zero, at=at),
    )


#: check id of each claim of tilted_claims(), in order
TILTED_CHECKS = (
    "non_negative",
    "bounded",
    "symmetric",
    "scale_invariant",
    "zero_at_perfect",
    "monotone",
    "custom_at_least_zero",
)


def _not_perfect(example: Example) -> Example:
    return example.with_tensor("y_pred", np.zeros_like(np.asarray(example.outputs["y_pred"])))


def _doubled_ce(example: Example) -> np.ndarray:
    return 2.0 * numpy_ce(example)


def _small_loss(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    loss = np.asarray(loss_fn(example))
    assert np.all(loss < 0.5), f"loss {loss.tolist()} is not below 0.5"


#: (plugin factory, the check id that must fail, words its report must contain)
MUTANTS: list[tuple[Callable[[], Plugin], str, tuple[str, ...]]] = [
    (NegativeCE, "non_negative", ("negative", "loss >= 0")),
    (NaiveSoftmaxCE, "finite_extremes", ("not finite", "extreme")),
    (NeighbourPull, "batch_order", ("permut",)),
    (PreAveragedCE, "reduction", ("computed alone",)),
    (ScalarCE, "reduction", ("returns='per_sample'", "scalar")),
    (BatchNormalisedCE, "sample_independence", ("depends on the other samples",)),
    (WrongGradientMSE, "gradient_fd", ("finite differences", "autodiff")),
    (Float16OverflowCE, "dtypes", ("float16", "not finite")),
    (AngleMarginCE, "config_roundtrip", ("margin",)),
    (TupleConfigCE, "config_roundtrip", ("class_weights",)),
    (SameClassSpread, "degenerate_batch", ("degenerate", "not finite")),
    (GraphBreakingCE, "compiled", ("works eagerly but fails under",)),
    (GraphBreakingCE, "finite", ("requires grad", "numpy()")),
    (OutsideStateCenter, "state_store", ("outside its state store", "extras.state.variable")),
    (UnrangedTemperatureCE, "declared_ranges", ("no declared range", "temperature=0.0")),
    (AssigningCenter, "state_updates", ("changed its state variable", "extras.state.update")),
    (NoisyCenter, "state_updates", ("deterministic",)),
    (NormalisedCenter, "state_updates_extremes", ("not finite", "extreme inputs")),
    (lambda: Cosine("kit_bad_bounded", (Bounded(0.0, 1.0),)), "bounded", ("outside",)),
    (
        lambda: Focal(
            "kit_bad_zero", (ZeroAtPerfect(perfect=_not_perfect, description="all-zero logits"),)
        ),
        "zero_at_perfect",
        ("all-zero logits",),
    ),
    (
        lambda: Focal(
            "kit_bad_reduces",
            (ReducesTo("2 x cross-entropy", reference=_doubled_ce, at={"gamma": 0.0}),),
        ),
        "reduces_to",
        ("2 x cross-entropy",),
    ),
    (
        lambda: AsymmetricCosine("kit_bad_symmetric", (Symmetric("a", "b"),)),
        "symmetric",
        ("swapping",),
    ),
    (
        lambda: AsymmetricCosine("kit_bad_scale", (ScaleInvariant("a"),)),
        "scale_invariant",
        ("scaling 'a'",),
    ),
    (
        lambda: Focal("kit_bad_monotone", (Monotone("gamma", (0.0, 1.0, 2.0), increasing=True),)),
        "monotone",
        ("non-decreasing in gamma",),
    ),
    (
        lambda: Focal("kit_bad_custom", (Custom("small loss", check=_small_loss),)),
        "custom_small_loss",
        ("not below 0.5",),
    ),
]

#: The backends on which a (mutant name, check) pair of ``MUTANTS`` applies; every other pair
#: applies to all. NumPy inside the loss (kit_bad_graph) fails under TensorFlow's and JAX's
#: compilers; on PyTorch ``torch.compile`` traces NumPy calls on tensors (dynamo's NumPy
#: support, also with ``fullgraph=True``), so ``compiled`` passes, and what fails is eager
#: training, Keras' torch default: ``numpy()`` of the prediction, which requires grad
#: (docs/kit.md, "How the kit is tested").
MUTANT_BACKENDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("kit_bad_graph", "compiled"): ("tensorflow", "jax"),
    ("kit_bad_graph", "finite"): ("torch",),
}

"""The checks of the conformance kit: what every plugin gets, and one per claimed property.

A :class:`Check` pairs a Hypothesis strategy with a body that calls the plugin
(through a :class:`~lossplug.testing.harness.PluginHarness`) and raises
:class:`~lossplug.testing.report.KitFailure` naming the offending values.
:func:`checks_for` lists the checks that apply to a spec, in the order they run.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from ..errors import InvalidSpecError, LossplugError
from ..properties import (
    Bounded,
    Custom,
    Example,
    Monotone,
    NonNegative,
    Property,
    ReducesTo,
    ScaleInvariant,
    Symmetric,
    ZeroAtPerfect,
)
from ..specs import Kind, PluginSpec, Source, make_config
from . import declarations, updates
from . import strategies as kst
from ._data import (
    CONTINUOUS_KINDS,
    batch_size,
    cast_floats,
    float_tensors,
    is_float,
    magnitude,
    take,
)
from .harness import Outcome, PluginHarness
from .report import KitFailure

LOW_PRECISION = ("float16", "bfloat16", "float32")
EPS32 = float(np.finfo(np.float32).eps)


@attrs.define
class Context:
    """What every check body receives: the plugin and the strategies to draw from."""

    harness: PluginHarness
    config_strategy: Any = None
    example_strategy: Any = None

    @property
    def spec(self) -> PluginSpec:
        return self.harness.spec

    @property
    def name(self) -> str:
        return self.spec.name

    def configs(self, **fixed: Any) -> Any:
        if self.config_strategy is None:
            return kst.configs(self.spec, **fixed)
        if not fixed:
            return self.config_strategy
        return self.config_strategy.map(lambda c: _with_fields(self.spec, c, fixed))

    def examples(self, *, custom_ok: bool = True, **kwargs: Any) -> Any:
        """Typical examples: the author's strategy if given, else the kit's."""
        if self.example_strategy is not None and custom_ok:
            dtype = kwargs.get("dtype")
            if dtype is None:
                return self.example_strategy
            return self.example_strategy.map(lambda ex: cast_floats(ex, dtype))
        config_strategy = kwargs.pop("config_strategy", None)
        if config_strategy is None:
            config_strategy = self.configs()
        return kst.examples(self.spec, config_strategy, **kwargs)

    def prepare(self, example: Example) -> Example:
        return self.harness.prepare(example)

    def evaluate(self, example: Example, **kwargs: Any) -> Outcome:
        return self.harness.evaluate(example, **kwargs)


@attrs.frozen
class Check:
    """One check: its id (the pytest id), title, strategy and body."""

    id: str
    title: str
    strategy: Callable[[Context], Any]
    body: Callable[[Context, Any], None]
    budget: float = 1.0  #: fraction of the profile's max_examples
    cap: int | None = None  #: at most this many examples
    shrink: bool = True  #: let Hypothesis shrink a failure (off where one example costs seconds)
    claim: Property | None = None

    def max_examples(self, base: int) -> int:
        n = max(1, round(base * self.budget))
        return min(n, self.cap) if self.cap is not None else n


# --------------------------------------------------------------------- helpers
def _with_fields(spec: PluginSpec, config: Any, fields: dict[str, Any]) -> Any:
    values = config_values(config)
    values.update(fields)
    try:
        return make_config(spec, values)
    except LossplugError:
        assume(False)


def config_values(config: Any) -> dict[str, Any]:
    """The init arguments of a Config instance (tuples kept as tuples)."""
    return {f.name: getattr(config, f.name) for f in attrs.fields(type(config)) if f.init}


def num(value: Any) -> str:
    """A number for a report: ints as ints, floats with 7 significant digits."""
    arr = np.asarray(value)
    if arr.ndim:
        return nums(arr)
    if arr.dtype.kind in "iub":
        return str(int(arr))
    return format(float(arr), ".7g")


def nums(values: Any, limit: int = 8) -> str:
    """A short list of numbers: ``[0.5, 1, nan, ...]``."""
    flat = np.asarray(values).reshape(-1)
    text = ", ".join(num(v) for v in flat[:limit])
    return "[" + text + (", ..." if flat.size > limit else "") + "]"


def _index_text(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]" if index else ""


def offending(label: str, values: np.ndarray, mask: np.ndarray, limit: int = 3) -> str:
    """``loss[2] = -0.5, loss[4] = -1.2 (2 of 6 values)`` for the entries where ``mask`` holds."""
    values = np.asarray(values)
    mask = np.broadcast_to(np.asarray(mask), values.shape)
    where = list(zip(*np.nonzero(mask), strict=False)) if values.ndim else ([()] if mask else [])
    parts = [
        f"{label}{_index_text(tuple(int(i) for i in idx))} = {num(values[idx])}"
        for idx in where[:limit]
    ]
    text = ", ".join(parts)
    if len(where) > limit or values.size > 1:
        text += f" ({len(where)} of {values.size} values)"
    return text


def claim_values(outcome: Outcome) -> list[tuple[str, np.ndarray]]:
    """The values a claim is about: the loss, or every metric of a metric-only plugin."""
    if outcome.loss is not None:
        return [("loss", outcome.loss)]
    return [(f"metric {k!r}", v) for k, v in outcome.metrics.items()]


def _finite_mask(value: np.ndarray) -> np.ndarray:
    return np.isfinite(np.asarray(value, dtype=np.float64))


def assert_finite(outcome: Outcome, what: str = "", example: Example | None = None) -> None:
    for label, value in outcome.values().items():
        ok = _finite_mask(value)
        if not np.all(ok):
            raise KitFailure(
                f"{label} is not finite{what}: {offending(label, value, ~ok)}", example=example
            )


def _close(a: Any, b: Any, rtol: float, atol: float) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: not close, no warning
        return both_inf | (np.abs(a - b) <= atol + rtol * np.abs(b))


def _stable_rng(*arrays: Any) -> np.random.Generator:
    digest = 0
    for arr in arrays:
        digest = zlib.crc32(
            np.ascontiguousarray(np.asarray(arr, dtype=np.float64)).tobytes(), digest
        )
    return np.random.default_rng(digest)


def _restore_dtypes(original: Example, changed: Example) -> Example:
    """Cast the tensors of ``changed`` back to the dtypes they have in ``original``."""

    def fix(new: Any, old: Any) -> dict[str, Any]:
        out = {}
        for name, value in new.items():
            value = np.asarray(value)
            if name in old:
                value = value.astype(np.asarray(old[name]).dtype)
            out[name] = value
        return out

    return changed.replace(
        inputs=fix(changed.inputs, original.inputs), outputs=fix(changed.outputs, original.outputs)
    )


def _is_loss_plugin(spec: PluginSpec) -> bool:
    return spec.returns != "metrics"


# --------------------------------------------------------------------- finiteness
def _finite_body(ctx: Context, example: Example, what: str) -> None:
    example = ctx.prepare(example)
    spec = ctx.spec
    if not _is_loss_plugin(spec):
        outcome = ctx.evaluate(example)
        if outcome.loss is not None:
            raise KitFailure(
                "the spec declares returns='metrics' but the plugin returned a loss of shape "
                f"{outcome.loss.shape}; declare returns='per_sample' (or 'scalar') instead"
            )
        assert_finite(outcome, what)
        return
    wrt = [t.name for t in float_tensors(spec, example)]
    outcome, grads, state_grads = ctx.harness.gradients(example, wrt)
    assert_finite(outcome, what)
    for name, grad in grads.items():
        if grad is not None and not np.all(_finite_mask(grad)):
            label = f"d sum(loss) / d outputs[{name!r}]"
            raise KitFailure(
                f"the gradient is not finite{what} (the loss is finite): "
                f"{offending(label, grad, ~_finite_mask(grad))}"
            )
    for name, grad in state_grads.items():
        if grad is not None and not np.all(_finite_mask(grad)):
            label = f"d sum(loss) / d state[{name!r}]"
            raise KitFailure(
                f"the gradient with respect to the state variable {name!r} is not finite{what}: "
                f"{offending(label, grad, ~_finite_mask(grad))}"
            )


def _finite(ctx: Context, example: Example) -> None:
    _finite_body(ctx, example, "")


def _finite_extremes(ctx: Context, example: Example) -> None:
    _finite_body(ctx, example, " at extreme inputs")


def _degenerate(ctx: Context, example: Example) -> None:
    n = batch_size(ctx.spec, example)
    _finite_body(ctx, example, f" on a degenerate batch ({n} sample{'s' if n != 1 else ''})")


# --------------------------------------------------------------------- dtypes
def _eps(dtype: str) -> float:
    if dtype == "bfloat16":
        return 2.0**-7
    return float(np.finfo(np.dtype(dtype)).eps)


def _dtypes(ctx: Context, example: Example) -> None:
    example = ctx.prepare(example)
    reference64 = ctx.evaluate(example)
    assert_finite(reference64, " with float64 inputs")
    scale = magnitude(ctx.spec, example)
    for dtype in LOW_PRECISION:
        low = cast_floats(example, dtype)
        rounded = cast_floats(low, "float64")  # the same values, exactly
        reference = ctx.evaluate(rounded)
        try:
            got = ctx.evaluate(example, dtype=dtype)
        except Exception as exc:
            raise KitFailure(
                f"with {dtype} inputs the plugin raised {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                example=low,
                call={"dtype": dtype},
            ) from exc
        for label, value in got.values().items():
            ok = _finite_mask(value)
            if not np.all(ok):
                raise KitFailure(
                    f"with {dtype} inputs {offending(label, value, ~ok)} is not finite, while the "
                    f"same values in float64 give {label} = {nums(reference.values()[label])} "
                    "(overflow or underflow in low precision? compute in float32: "
                    "keras.ops.cast(x, 'float32'))",
                    example=low,
                    call={"dtype": dtype},
                )
        if got.loss is None:
            continue
        ref = reference.loss
        tol = 8 * _eps(dtype) * (1.0 + np.abs(ref.astype(np.float64)) + scale)
        diff = np.abs(got.loss.astype(np.float64) - ref.astype(np.float64))
        bad = diff > tol
        if np.any(bad):
            raise KitFailure(
                f"with {dtype} inputs the loss differs from the float64 result on the same values "
                f"by more than 8 * eps({dtype}) * (1 + |loss| + size of the inputs): "
                f"{offending('loss', got.loss, bad)} vs float64 "
                f"{offending('loss', ref, bad)}",
                example=low,
                call={"dtype": dtype},
            )


# --------------------------------------------------------------------- compiled
#: Tolerances (rtol, atol) and rounding allowance of each compiled mode against eager.
#: A mode that fuses or reorders operations (XLA: "jit" on TensorFlow, jax.jit,
#: torch.compile) gets the looser ones.
_MODE_TOL = {"function": (1e-5, 1e-6)}
_FUSED_TOL = (1e-4, 1e-5)
_ROUNDING = {"function": 8 * EPS32}
_FUSED_ROUNDING = 32 * EPS32


def _compiled(ctx: Context, example: Example) -> None:
    from .harness import mode_text, modes

    example = ctx.prepare(example)
    eager = ctx.evaluate(example)
    expected = eager.values()
    size = magnitude(ctx.spec, example)
    texts = {mode: mode_text(mode) for mode in modes()}
    for mode in modes()[1:]:
        try:
            got = ctx.evaluate(example, mode=mode)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise KitFailure(
                f"the plugin works eagerly but fails under {texts[mode]} (traced as Keras' "
                f"fit traces a training step): {type(exc).__name__}: {first}"
            ) from exc
        values = got.values()
        if set(values) != set(expected):
            raise KitFailure(
                f"under {texts[mode]} the plugin returned {sorted(values)}, eagerly "
                f"{sorted(expected)}"
            )
        rtol, atol = _MODE_TOL.get(mode, _FUSED_TOL)
        rounding = _ROUNDING.get(mode, _FUSED_ROUNDING) * size
        for label, value in expected.items():
            other = values[label]
            if np.shape(other) != np.shape(value):
                raise KitFailure(
                    f"under {texts[mode]} {label} has shape {np.shape(other)}, eagerly "
                    f"{np.shape(value)}"
                )
            scale = float(np.max(np.abs(value))) if np.size(value) else 0.0
            ok = _close(other, value, rtol, atol * (1 + scale) + rounding)
            if not np.all(ok):
                raise KitFailure(
                    f"eager and {texts[mode]} disagree: eagerly "
                    f"{offending(label, value, ~ok)}; under {texts[mode]} "
                    f"{offending(label, other, ~ok)}"
                )


# --------------------------------------------------------------------- batch
def _permutations(n: int) -> list[np.ndarray]:
    return [np.arange(n)[::-1].copy(), np.roll(np.arange(n), 1)]


def _batch_order(ctx: Context, example: Example) -> None:
    n = batch_size(ctx.spec, example)
    assume(n >= 2)
    example = ctx.prepare(example)
    base = ctx.evaluate(example)
    rounding = 8 * EPS32 * magnitude(ctx.spec, example)
    for perm in _permutations(n):
        got = ctx.evaluate(take(ctx.spec, example, perm))
        for label, value in base.values().items():
            expected = value[perm] if (label == "loss" and base.per_sample) else value
            other = got.values()[label]
            scale = float(np.max(np.abs(value))) if np.size(value) else 0.0
            ok = _close(other, expected, 1e-5, 1e-6 * (1 + scale) + rounding)
            if not np.all(ok):
                what = (
                    "the per-sample losses are not permuted with the batch"
                    if label == "loss" and base.per_sample
                    else f"{label} changes when the batch is permuted"
                )
                raise KitFailure(
                    f"{what} (permutation {perm.tolist()}): expected "
                    f"{offending(label, expected, ~ok)}, got {offending(label, other, ~ok)}"
                )


def _independence(ctx: Context, example: Example) -> None:
    n = batch_size(ctx.spec, example)
    assume(n >= 2)
    example = ctx.prepare(example)
    base = ctx.evaluate(example).loss
    rounding = 8 * EPS32 * magnitude(ctx.spec, example)
    k = n // 2
    for part in (np.arange(k), np.arange(k, n)):
        alone = ctx.evaluate(take(ctx.spec, example, part)).loss
        expected = base[part]
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        ok = _close(alone, expected, 1e-5, 1e-6 * (1 + scale) + rounding)
        if not np.all(ok):
            first = int(np.nonzero(np.reshape(~ok, (len(part), -1)).any(axis=1))[0][0])
            raise KitFailure(
                f"sample {int(part[first])}'s loss depends on the other samples of the batch: "
                f"{nums(expected[first])} in the batch of {n}, "
                f"{nums(alone[first])} in a batch of samples "
                f"{part.tolist()} only. Declare batch_coupled=True if that is intended."
            )


# --------------------------------------------------------------------- reduction
def _weights(n: int) -> np.ndarray:
    """Non-uniform sample weights with a zero: 2, 1, 0, 2, 1, 0, ..."""
    return np.array([(2.0 - (i % 3)) for i in range(n)], dtype=np.float32)


def _reduction(ctx: Context, example: Example) -> None:
    from ..terms import reduce_per_sample

    spec = ctx.spec
    example = ctx.prepare(example)
    outcome = ctx.evaluate(example)
    loss = outcome.loss
    n = batch_size(spec, example)
    if spec.returns == "scalar":
        if loss.ndim != 0:
            raise KitFailure(
                f"the spec declares returns='scalar' but the plugin returned a loss of shape "
                f"{loss.shape}; return one reduced value or declare returns='per_sample'"
            )
        return
    if loss.ndim == 0:
        raise KitFailure(
            "the spec declares returns='per_sample' but the plugin returned a scalar "
            f"({num(loss)}) for a batch of {n}: the core cannot apply sample weights to it. "
            "Return one value per sample (shape (batch,) or (batch, ...)), or declare "
            "returns='scalar' and batch_coupled=True"
        )
    weights = _weights(n)
    core = float(np.asarray(reduce_per_sample(loss, weights)))
    w = np.reshape(weights.astype(np.float64), (n,) + (1,) * (loss.ndim - 1))
    numpy_ref = float(np.sum(w * loss.astype(np.float64)) / loss.size)
    largest = float(np.max(np.abs(loss))) if loss.size else 0.0
    if not _close(core, numpy_ref, 1e-5, 1e-6 * (1 + largest)):
        raise KitFailure(
            f"lossplug.terms.reduce_per_sample(loss, sample_weight={weights.tolist()}) = "
            f"{num(core)}, "
            f"but sum(w * loss) / loss.size = {num(numpy_ref)} (a bug in the core's reduction)"
        )
    if spec.batch_coupled or n < 2:
        return
    singles = np.concatenate(
        [ctx.evaluate(take(spec, example, [i])).loss.astype(np.float64) for i in range(n)]
    )
    reference = float(np.sum(w * singles) / singles.size)
    rounding = 8 * EPS32 * magnitude(spec, example)
    if not _close(core, reference, 1e-5, 1e-6 * (1 + float(np.max(np.abs(singles)))) + rounding):
        raise KitFailure(
            f"the weighted mean of the batch's per-sample losses is {num(core)}, but the same "
            f"weighted mean of each sample's loss computed alone is {num(reference)} "
            f"(sample_weight={weights.tolist()}; per-sample losses in the batch "
            f"{nums(loss)}, alone {nums(singles)}). A sample's loss depends on the batch it is in: "
            "on the other samples, their number or its position (the batch_order and "
            "sample_independence checks tell which), or the plugin rescales by the batch size "
            "itself. Return each sample's own loss and let the core reduce; declare "
            "batch_coupled=True if the coupling is intended"
        )


# --------------------------------------------------------------------- gradients
def _fd_settings(dtype: str) -> tuple[float, float, float]:
    eps = float(np.finfo(np.dtype(dtype if dtype != "bfloat16" else "float32")).eps)
    if dtype == "float64":
        return eps ** (1 / 3), 1e-4, 1e-8
    return eps ** (1 / 3), 2e-2, 1e-5


#: Kinds whose values live in [0, 1]: finite differences must not step outside.
_UNIT_KINDS = (Kind.PROBABILITIES, Kind.IMAGES, Kind.MASKS)
_BOUNDARY = 1e-3


def _direction(tensor: Any, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit direction for ``x``, tangent to the simplex and away from [0, 1]'s ends."""
    direction = rng.standard_normal(x.shape)
    if tensor.kind in _UNIT_KINDS:
        free = np.minimum(x, 1.0 - x) > _BOUNDARY
        direction *= free
        if tensor.kind == Kind.PROBABILITIES and x.ndim >= 2:
            count = np.maximum(free.sum(axis=-1, keepdims=True), 1)
            direction -= direction.sum(axis=-1, keepdims=True) / count  # stay on the simplex
            direction *= free
    norm = np.linalg.norm(direction)
    return direction / norm if norm > 0 else direction


def _step(tensor: Any, x: np.ndarray, direction: np.ndarray, base: float) -> float:
    h = base * max(1.0, float(np.max(np.abs(x))) if x.size else 1.0)
    if tensor.kind in _UNIT_KINDS:
        moving = direction != 0
        if np.any(moving):
            room = np.minimum(x, 1.0 - x)[moving] / np.abs(direction[moving])
            h = min(h, 0.5 * float(np.min(room)))
    return h


def _gradient_fd(ctx: Context, example: Example) -> None:
    spec = ctx.spec
    example = ctx.prepare(cast_floats(example, "float64"))
    tensors = float_tensors(spec, example)
    assume(tensors)
    names = [t.name for t in tensors]
    value, dtype, grads = ctx.harness.raw(example, names)
    assume(np.isfinite(value))
    base, rtol, atol = _fd_settings(dtype)
    rng = _stable_rng(*[example.tensor(n) for n in names])
    roundoff = float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)
    for tensor in tensors:
        name = tensor.name
        x = np.asarray(example.tensor(name), dtype=np.float64)
        grad = grads[name]
        grad = np.zeros_like(x) if grad is None else np.asarray(grad, dtype=np.float64)
        direction = _direction(tensor, x, rng)
        if not np.any(direction):
            continue
        h = _step(tensor, x, direction, base)

        def f(delta: Any, x: np.ndarray = x, name: str = name) -> float:
            return ctx.harness.raw(example.with_tensor(name, x + delta), ())[0]

        plus, minus = f(h * direction), f(-h * direction)
        central = (plus - minus) / (2 * h)
        half = (f(0.5 * h * direction) - f(-0.5 * h * direction)) / h
        forward, backward = (plus - value) / h, (value - minus) / h
        analytic = float(np.sum(grad * direction))
        gnorm = float(np.linalg.norm(grad))
        tol = rtol * (gnorm + abs(central)) + 20 * roundoff * abs(value) / h + atol
        if not np.isfinite(central) or abs(forward - backward) > 2 * tol:
            continue  # not differentiable here (a kink, a clip): finite differences say nothing
        if abs(central - half) > tol:
            continue  # the step does not resolve the curvature here (near a singularity)
        if abs(central - analytic) > tol:
            detail = (
                f"the gradient of sum(loss) with respect to outputs[{name!r}] disagrees with "
                f"central finite differences in {dtype}: along a random unit direction the "
                f"autodiff derivative is {num(analytic)}, finite differences (h={h:.3g}) give "
                f"{num(central)} (|difference| {abs(central - analytic):.3g} > tolerance {tol:.3g})"
            )
            if x.size <= 16:
                numeric = np.full_like(x, np.nan)
                for idx in np.ndindex(x.shape):
                    e = np.zeros_like(x)
                    e[idx] = 1.0
                    if tensor.kind in _UNIT_KINDS and not direction[idx]:
                        continue
                    hi = _step(tensor, x, e, base)
                    numeric[idx] = (f(hi * e) - f(-hi * e)) / (2 * hi)
                detail += (
                    f"; autodiff gradient {np.round(grad, 6).tolist()}, finite-difference "
                    f"gradient {np.round(numeric, 6).tolist()}. A custom gradient "
                    "(tf.custom_gradient, jax.custom_vjp), a stop_gradient, or NumPy (or "
                    "Python float) arithmetic on tensors inside the plugin is the usual cause"
                )
            raise KitFailure(detail, example=example)


# --------------------------------------------------------------------- config
def _config_roundtrip(ctx: Context, config: Any) -> None:
    import keras

    from ..terms import Term, use

    spec = ctx.spec
    values = config_values(config)
    try:
        term = use(spec.name, **values)
    except LossplugError as exc:
        raise KitFailure(
            f"lossplug.use({spec.name!r}, **{values!r}) rejects the values of a valid Config: {exc}"
        ) from exc
    if term.config != config:
        raise KitFailure(
            f"lossplug.use({spec.name!r}, **values of a Config) builds a different Config: "
            f"{config!r} became {term.config!r} (a converter that is not idempotent?)"
        )
    saved = term.get_config()
    fields = {f.name for f in attrs.fields(spec.config)}
    missing = sorted(fields - set(saved.get("config", {})))
    if missing:
        raise KitFailure(
            f"Term.get_config()['config'] lacks the Config field(s) {missing}; every field must "
            "be saved"
        )
    try:
        text = json.dumps(saved)
    except (TypeError, ValueError) as exc:
        raise KitFailure(
            f"the term's config is not JSON-serializable ({exc}): {saved['config']!r}; Config "
            "values must be numbers, strings, booleans, None, or lists/tuples of them"
        ) from exc
    try:
        restored = Term.from_config(json.loads(text))
    except LossplugError as exc:
        raise KitFailure(
            f"the saved config {json.loads(text)['config']!r} does not load back: {exc}"
        ) from exc
    if restored.config != config:
        raise KitFailure(
            f"the config does not round-trip through Term.get_config/from_config: {config!r} "
            f"came back as {restored.config!r}"
        )
    serialized = keras.saving.serialize_keras_object(term)
    again = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    if not isinstance(again, Term) or again.config != config:
        raise KitFailure(
            f"the config does not round-trip through keras.saving.serialize_keras_object: "
            f"{config!r} came back as {getattr(again, 'config', again)!r}"
        )


# --------------------------------------------------------------------- save / load
def _save_load(ctx: Context, example: Example) -> None:
    from .model_check import save_and_load

    save_and_load(ctx, example)


# --------------------------------------------------------------------- properties
def _non_negative(claim: NonNegative) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        example = ctx.prepare(example)
        for label, value in claim_values(ctx.evaluate(example)):
            bad = np.asarray(value, dtype=np.float64) < -claim.atol
            if np.any(bad):
                raise KitFailure(
                    f"{offending(label, value, bad)}: negative, but the plugin claims loss >= 0"
                    + (f" (atol {claim.atol})" if claim.atol else "")
                )

    return body


def _bounded(claim: Bounded) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        example = ctx.prepare(example)
        for label, value in claim_values(ctx.evaluate(example)):
            v = np.asarray(value, dtype=np.float64)
            bad = ~np.isfinite(v)
            if claim.low is not None:
                bad |= v < claim.low - claim.atol
            if claim.high is not None:
                bad |= v > claim.high + claim.atol
            if np.any(bad):
                raise KitFailure(
                    f"{offending(label, value, bad)}: outside the claimed bounds "
                    f"[{claim.low if claim.low is not None else '-inf'}, "
                    f"{claim.high if claim.high is not None else 'inf'}] (atol {claim.atol})"
                )

    return body


def _call_claim(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as exc:
        raise KitFailure(f"the claim's {what} raised {type(exc).__name__}: {exc}") from exc


def _zero_at_perfect(claim: ZeroAtPerfect) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        example = ctx.prepare(example)
        perfect = _call_claim("perfect()", claim.perfect, example)
        perfect = _restore_dtypes(example, perfect)
        best = ctx.evaluate(perfect)
        if not claim.minimal:
            for label, value in claim_values(best):
                bad = ~_close(value, claim.value, 0.0, claim.atol)
                if np.any(bad):
                    raise KitFailure(
                        f"at {claim.description} {offending(label, value, bad)}, but the plugin "
                        f"claims {claim.value} (atol {claim.atol})",
                        example=perfect,
                    )
            return
        others = [("the generated prediction", example)]
        rng = _stable_rng(
            *[np.asarray(v, dtype=np.float64) for v in perfect.outputs.values() if is_float(v)]
        )
        nudged_outputs = {
            k: (np.asarray(v) + 0.1 * rng.standard_normal(np.shape(v))).astype(np.asarray(v).dtype)
            if is_float(v)
            else v
            for k, v in perfect.outputs.items()
        }
        others.append(("a perturbed perfect prediction", perfect.replace(outputs=nudged_outputs)))
        for what, other in others:
            worse = ctx.evaluate(other)
            for (label, best_v), (_, other_v) in zip(
                claim_values(best), claim_values(worse), strict=True
            ):
                bad = np.asarray(other_v, np.float64) < np.asarray(best_v, np.float64) - claim.atol
                if np.any(bad):
                    raise KitFailure(
                        f"{what} has a smaller loss than {claim.description}: "
                        f"{offending(label, other_v, bad)} < {offending(label, best_v, bad)}; the "
                        "plugin claims the loss is minimal there",
                        example=other,
                    )

    return body


def _reduces_to(claim: ReducesTo) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        example = ctx.prepare(example)
        outcome = ctx.evaluate(example)
        reference = np.asarray(_call_claim("reference()", claim.reference, example), np.float64)
        loss = outcome.loss
        try:
            reference = np.broadcast_to(reference, loss.shape)
        except ValueError:
            raise KitFailure(
                f"the reference {claim.name!r} returned shape {reference.shape}, the plugin's loss "
                f"has shape {loss.shape}"
            ) from None
        ok = _close(loss, reference, claim.rtol, claim.atol)
        if not np.all(ok):
            raise KitFailure(
                f"{offending('loss', loss, ~ok)}, but {claim.name} gives "
                f"{offending('reference', reference, ~ok)} (rtol {claim.rtol}, atol {claim.atol})"
            )

    return body


def _symmetric(claim: Symmetric) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        example = ctx.prepare(example)
        a, b = np.asarray(example.tensor(claim.first)), np.asarray(example.tensor(claim.second))
        if a.shape != b.shape:
            raise KitFailure(
                f"cannot swap {claim.first!r} {a.shape} and {claim.second!r} {b.shape}: shapes "
                "differ; declare both tensors with the same symbolic shape"
            )
        swapped = example.with_tensor(claim.first, b.astype(a.dtype)).with_tensor(
            claim.second, a.astype(b.dtype)
        )
        base = claim_values(ctx.evaluate(example))
        other = claim_values(ctx.evaluate(swapped))
        for (label, v1), (_, v2) in zip(base, other, strict=True):
            ok = _close(v2, v1, claim.rtol, claim.atol)
            if not np.all(ok):
                raise KitFailure(
                    f"swapping {claim.first!r} and {claim.second!r} changes the result: "
                    f"{offending(label, v1, ~ok)} before, {offending(label, v2, ~ok)} after",
                    example=example,
                )

    return body


def _scale_invariant(claim: ScaleInvariant) -> Callable[[Context, Any], None]:
    def body(ctx: Context, drawn: tuple[Example, float]) -> None:
        example, factor = drawn
        example = ctx.prepare(example)
        x = np.asarray(example.tensor(claim.tensor))
        scaled = example.with_tensor(claim.tensor, (x.astype(np.float64) * factor).astype(x.dtype))
        base = claim_values(ctx.evaluate(example))
        other = claim_values(ctx.evaluate(scaled))
        for (label, v1), (_, v2) in zip(base, other, strict=True):
            for value, which in ((v1, "the example"), (v2, f"the example scaled by {num(factor)}")):
                finite = _finite_mask(value)
                if not np.all(finite):
                    raise KitFailure(
                        f"{offending(label, value, ~finite)} is not finite on {which}, so "
                        "scale invariance cannot hold (see the finite checks)",
                        example=example,
                    )
            ok = _close(v2, v1, claim.rtol, claim.atol)
            if not np.all(ok):
                raise KitFailure(
                    f"scaling {claim.tensor!r} by {num(factor)} changes the result: "
                    f"{offending(label, v1, ~ok)} before, {offending(label, v2, ~ok)} after "
                    f"(rtol {claim.rtol}, atol {claim.atol})",
                    example=example,
                )

    return body


def _monotone(claim: Monotone) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        spec = ctx.spec
        results = []
        for value in claim.values:
            values = config_values(example.config)
            values[claim.parameter] = value
            try:
                config = make_config(spec, values)
            except LossplugError as exc:
                raise KitFailure(
                    f"the claim compares {claim.parameter}={value!r}, which the Config "
                    f"rejects: {exc}"
                ) from exc
            at = _same_state(ctx, example, config)
            results.append((value, at, claim_values(ctx.evaluate(at))))
        for (v1, _, r1), (v2, at2, r2) in zip(results, results[1:], strict=False):
            for (label, a), (_, b) in zip(r1, r2, strict=True):
                a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
                bad = b64 < a64 - claim.atol if claim.increasing else b64 > a64 + claim.atol
                if np.any(bad):
                    direction = "non-decreasing" if claim.increasing else "non-increasing"
                    raise KitFailure(
                        f"the plugin claims the loss is {direction} in {claim.parameter}, but "
                        f"{offending(label, a, bad)} at {claim.parameter}={v1!r} and "
                        f"{offending(label, b, bad)} at {claim.parameter}={v2!r}",
                        example=at2,
                    )

    return body


def _same_state(ctx: Context, example: Example, config: Any) -> Example:
    """``example`` under ``config``, with the same state values when their shapes still fit.

    A claim comparing parameter values compares the loss, not fresh random state: the
    state (class weights, proxies) of the first value is kept for the others unless the
    new config gives the variables other shapes (then each gets its own initial state).
    """
    prepared = ctx.prepare(example)
    fresh = ctx.prepare(prepared.replace(config=config, state={}))
    same = set(prepared.state) == set(fresh.state) and all(
        np.shape(prepared.state[k]) == np.shape(fresh.state[k]) for k in prepared.state
    )
    return fresh.replace(state=dict(prepared.state)) if same else fresh


def _custom(claim: Custom) -> Callable[[Context, Example], None]:
    def body(ctx: Context, example: Example) -> None:
        example = ctx.prepare(example)

        def loss_fn(ex: Example) -> np.ndarray:
            ex = _restore_dtypes(example, ex)
            outcome = ctx.evaluate(ctx.prepare(ex))
            if outcome.loss is not None:
                return outcome.loss
            return {k: v for k, v in outcome.metrics.items()}

        try:
            claim.check(example, loss_fn)
        except AssertionError as exc:
            raise KitFailure(f"{claim.describe()}: {exc or 'assertion failed'}") from exc

    return body


# --------------------------------------------------------------------- assembly
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "claim"


def claim_config(spec: PluginSpec, claim: Property) -> Any:
    """The Config of ``claim.at`` (other fields at their defaults), validated by ``make_config``.

    Raises :class:`~lossplug.errors.InvalidSpecError` naming the plugin, the claim and
    the field when ``at`` names an unknown field or a value the Config rejects.
    """
    at = dict(claim.at)
    if not at:
        return None
    try:
        return make_config(spec, at)
    except LossplugError as exc:
        fields = ", ".join(f"{k}={v!r}" for k, v in at.items())
        raise InvalidSpecError(
            f"plugin {spec.name!r}: the claim {type(claim).__name__} ({claim.describe()}) "
            f"holds at {fields}, which the Config rejects: {exc}. Fix the claim's at={{...}} "
            "(each key a Config field, each value valid for it)"
        ) from None


def examples_at(ctx: Context, claim: Property, *, extremes: bool = False) -> Any:
    """Examples for ``claim``: typical ones (and extreme ones) with ``claim.at`` fixed.

    With an author's example strategy, its examples get ``claim.at`` applied to
    their Config; drawn configs the Config rejects with those fields are discarded.
    """
    at = dict(claim.at)
    claim_config(ctx.spec, claim)
    configs = ctx.configs(**at)
    if ctx.example_strategy is not None:
        typical = ctx.example_strategy
        if at:
            typical = typical.map(
                lambda ex: ex.replace(config=_with_fields(ctx.spec, ex.config, at))
            )
    else:
        typical = ctx.examples(custom_ok=False, config_strategy=configs)
    if not extremes:
        return typical
    return st.one_of(typical, kst.extreme_examples(ctx.spec, config_strategy=configs))


def property_check(claim: Property, check_id: str) -> Check:
    """The check of one claimed property (its examples drawn with ``claim.at`` fixed)."""
    title = f"{claim.describe()}"

    def typical(ctx: Context) -> Any:
        return examples_at(ctx, claim)

    def any_examples(ctx: Context) -> Any:
        return examples_at(ctx, claim, extremes=True)

    if isinstance(claim, NonNegative):
        return Check(check_id, title, any_examples, _non_negative(claim), claim=claim)
    if isinstance(claim, Bounded):
        return Check(check_id, title, any_examples, _bounded(claim), claim=claim)
    if isinstance(claim, ZeroAtPerfect):
        return Check(check_id, title, typical, _zero_at_perfect(claim), claim=claim)
    if isinstance(claim, ReducesTo):
        return Check(check_id, title, typical, _reduces_to(claim), claim=claim)
    if isinstance(claim, Symmetric):
        return Check(check_id, title, typical, _symmetric(claim), claim=claim)
    if isinstance(claim, ScaleInvariant):
        return Check(
            check_id,
            title,
            lambda ctx: st.tuples(typical(ctx), st.floats(claim.low, claim.high, allow_nan=False)),
            _scale_invariant(claim),
            claim=claim,
        )
    if isinstance(claim, Monotone):
        return Check(check_id, title, typical, _monotone(claim), claim=claim, budget=0.5)
    if isinstance(claim, Custom):
        return Check(check_id, title, typical, _custom(claim), claim=claim)
    raise TypeError(f"the conformance kit cannot check properties of type {type(claim).__name__}")


def property_ids(properties: Sequence[Property]) -> list[str]:
    """Unique check ids for claims: the claim's key, or ``custom_<name>``, numbered if repeated."""
    ids: list[str] = []
    for claim in properties:
        base = f"custom_{_slug(claim.name)}" if isinstance(claim, Custom) else claim.key
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}_{n}"
        ids.append(candidate)
    return ids


def _has_continuous_outputs(spec: PluginSpec) -> bool:
    return any(t.source == Source.OUTPUTS and t.kind in CONTINUOUS_KINDS for t in spec.tensors)


def generic_checks(spec: PluginSpec) -> list[Check]:
    """The checks every plugin gets (those that apply to metric-only plugins, for them)."""
    loss = _is_loss_plugin(spec)
    batch2 = st.integers(2, 5)
    checks = [
        Check(
            "config_roundtrip",
            "the config round-trips through lossplug.use and saving",
            lambda ctx: ctx.configs(),
            _config_roundtrip,
        ),
        Check(
            "finite",
            "finite values and gradients on typical inputs",
            lambda ctx: ctx.examples(),
            _finite,
        ),
        Check(
            "finite_extremes",
            "finite values and gradients at extreme inputs",
            lambda ctx: kst.extreme_examples(ctx.spec, config_strategy=ctx.configs()),
            _finite_extremes,
        ),
        Check(
            "degenerate_batch",
            "finite on a batch of one, all labels equal, no two labels equal",
            lambda ctx: kst.degenerate_examples(ctx.spec, ctx.configs()),
            _degenerate,
            budget=0.6,
        ),
        Check(
            "batch_order",
            "results do not depend on the order of the batch",
            lambda ctx: ctx.examples(batch_sizes=batch2),
            _batch_order,
            budget=0.5,
        ),
    ]
    if loss and spec.returns == "per_sample" and not spec.batch_coupled:
        checks.append(
            Check(
                "sample_independence",
                "one sample's loss does not depend on the others",
                lambda ctx: ctx.examples(batch_sizes=batch2),
                _independence,
                budget=0.5,
            )
        )
    if loss:
        checks.append(
            Check(
                "reduction",
                "per-sample shape and weighted reduction match NumPy",
                lambda ctx: ctx.examples(batch_sizes=batch2),
                _reduction,
                budget=0.5,
            )
        )
    checks.append(
        Check(
            "state_store",
            "every variable comes from extras.state.variable (so it is trained and saved)",
            lambda ctx: ctx.examples(),
            declarations.state_store,
            budget=0.1,
            cap=2,
            shrink=False,
        )
    )
    checks += [
        Check(
            "state_updates",
            "state changes only through extras.state.update, in training, deterministically",
            lambda ctx: ctx.examples(),
            updates.state_updates,
            budget=0.1,
            cap=3,
        ),
        Check(
            "state_updates_extremes",
            "state updates are finite at extreme inputs",
            lambda ctx: kst.extreme_examples(ctx.spec, config_strategy=ctx.configs()),
            updates.state_updates_extremes,
            budget=0.2,
        ),
    ]
    if declarations.undeclared_float_fields(spec):
        checks.append(
            Check(
                "declared_ranges",
                "float parameters without a declared range work at 0 and below",
                lambda ctx: ctx.examples(),
                declarations.declared_ranges,
                budget=0.2,
            )
        )
    checks.append(
        Check(
            "dtypes",
            "float16, bfloat16, float32 and float64 inputs agree",
            lambda ctx: ctx.examples(dtype="float64"),
            _dtypes,
            budget=0.5,
        )
    )
    if loss and _has_continuous_outputs(spec):
        checks.append(
            Check(
                "gradient_fd",
                "gradients match central finite differences in float64",
                lambda ctx: ctx.examples(dtype="float64", batch_sizes=st.integers(1, 3)),
                _gradient_fd,
                budget=0.5,
            )
        )
    checks.append(
        Check(
            "compiled",
            "eager and compiled (tf.function and XLA, jax.jit or torch.compile) agree",
            lambda ctx: ctx.examples(),
            _compiled,
            budget=0.2,
        )
    )
    checks.append(
        Check(
            "save_load",
            "a LossModel using the plugin saves and loads",
            lambda ctx: ctx.examples(batch_sizes=4),
            _save_load,
            budget=0.03,
            cap=3,
            shrink=False,
        )
    )
    return checks


def checks_for(spec: PluginSpec) -> list[Check]:
    """Every check that applies to ``spec``: generic ones, then one per claimed property."""
    checks = generic_checks(spec)
    extra = [
        property_check(c, i)
        for c, i in zip(spec.properties, property_ids(spec.properties), strict=True)
    ]
    # Claims are cheap and specific: run them before the expensive compiled/model checks.
    split = next(i for i, c in enumerate(checks) if c.id == "compiled")
    return checks[:split] + extra + checks[split:]


def select(
    spec: PluginSpec, only: Sequence[str] | None = None, skip: Sequence[str] = ()
) -> list[Check]:
    """The checks to run: all of them, or ``only`` those, minus ``skip`` (unknown ids raise)."""
    checks = checks_for(spec)
    known = [c.id for c in checks]
    for name in [*(only or ()), *skip]:
        if name not in known:
            raise ValueError(
                f"plugin {spec.name!r} has no conformance check {name!r}; its checks are: "
                f"{', '.join(known)}"
            )
    if only:
        checks = [c for c in checks if c.id in set(only)]
    return [c for c in checks if c.id not in set(skip)]


__all__ = [
    "Check",
    "Context",
    "checks_for",
    "claim_config",
    "examples_at",
    "generic_checks",
    "property_check",
    "select",
]

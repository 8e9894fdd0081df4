"""Tests of lossplug.numerics, the numerics helpers loss plugins share."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug import backend, numerics

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
#: float64 tensors exist inside this context on every backend (JAX: 64-bit mode)
float64_available = backend.current().kit_scope


@pytest.fixture(autouse=True)
def _float64_everywhere():
    """The rules under test map float64 to float64: run where float64 exists (JAX: x64)."""
    with float64_available():
        yield


EPS = keras.config.epsilon()
DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool")


@st.composite
def logits(draw, scale=30.0):
    batch, classes = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    elements = st.floats(-scale, scale, width=32)
    return draw(hnp.arrays(np.float32, (batch, classes), elements=elements))


@st.composite
def class_id_batches(draw):
    """Class ids of shape (B,) for predictions (B, C), C >= 2."""
    batch, classes = draw(st.integers(1, 6)), draw(st.integers(2, 6))
    ids = draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, classes - 1)))
    return ids, classes


# ----------------------------------------------------------------- import cost
def test_import_lossplug_imports_neither_numerics_nor_any_backend():
    code = (
        "import sys, lossplug\n"
        "assert 'lossplug.numerics' not in sys.modules\n"
        "assert 'numerics' in dir(lossplug)\n"
        "import lossplug.numerics\n"  # cheap too: claims modules use its shape rule
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras', 'jax', 'torch'})\n"
        "assert lossplug.numerics.is_sparse_labels((2,), (2, 3))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_lazy_attribute_is_the_module():
    assert lossplug.numerics is numerics


# ----------------------------------------------------------------- compute dtype
@given(st.lists(st.sampled_from(DTYPES), max_size=4))
@SETTINGS
def test_compute_dtype_is_float64_exactly_when_an_input_is(dtypes):
    with float64_available():
        tensors = [keras.ops.zeros((2,), dtype) for dtype in dtypes]
        expected = "float64" if "float64" in dtypes else "float32"
        assert numerics.compute_dtype(*tensors) == expected
    numpy_dtypes = [d for d in dtypes if d != "bfloat16"]  # NumPy has no bfloat16
    arrays = [np.zeros((2,), d) for d in numpy_dtypes]
    assert numerics.compute_dtype(*arrays) == (
        "float64" if "float64" in numpy_dtypes else "float32"
    )


def test_compute_dtype_of_python_numbers_and_nothing_is_float32():
    assert numerics.compute_dtype() == "float32"
    assert numerics.compute_dtype(1.5, 2) == "float32"
    assert numerics.compute_dtype(1.5, np.float64(2.0)) == "float64"


@given(hnp.arrays(np.float16, (3, 2), elements=st.floats(-1e4, 1e4, width=16)))
@SETTINGS
def test_to_compute_dtype_widens_half_precision_exactly(values):
    out = numerics.to_compute_dtype(values)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), values.astype(np.float32))
    wide = numerics.to_compute_dtype(values.astype(np.float64))
    assert keras.backend.standardize_dtype(wide.dtype) == "float64"
    ints = numerics.to_compute_dtype(np.array([1, 2], np.int64))
    assert keras.backend.standardize_dtype(ints.dtype) == "float32"


# ----------------------------------------------------------------- sparse labels
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)


@given(shapes)
@SETTINGS
def test_is_sparse_labels_follows_the_rank_rule(pred_shape):
    classes = pred_shape[-1]
    # one axis fewer: class ids
    assert numerics.is_sparse_labels(pred_shape[:-1], pred_shape)
    # the predictions' own shape: rows
    assert not numerics.is_sparse_labels(pred_shape, pred_shape)
    # a trailing axis of 1: ids when there is more than one class, else a (B, 1) row
    assert numerics.is_sparse_labels((*pred_shape[:-1], 1), pred_shape) == (classes != 1)
    # any other rank: neither
    assert not numerics.is_sparse_labels((*pred_shape, 1), pred_shape)
    if len(pred_shape) >= 3:
        assert not numerics.is_sparse_labels(pred_shape[:-2], pred_shape)


@given(shapes, shapes)
@SETTINGS
def test_is_sparse_labels_reads_tensors_arrays_and_shapes_alike(true_shape, pred_shape):
    expected = numerics.is_sparse_labels(true_shape, pred_shape)
    assert numerics.is_sparse_labels(np.zeros(true_shape), np.zeros(pred_shape)) == expected
    assert numerics.is_sparse_labels(keras.ops.zeros(true_shape), tuple(pred_shape)) == expected


def test_is_sparse_labels_with_unknown_dimensions():
    assert numerics.is_sparse_labels((None,), (None, 4))
    assert numerics.is_sparse_labels((None, 1), (None, None))  # C unknown: ids
    assert not numerics.is_sparse_labels((None, None), (None, 4))


# ----------------------------------------------------------------- class ids
@given(class_id_batches(), st.sampled_from(["int64", "int32", "float32"]))
@SETTINGS
def test_class_ids_are_int32_with_the_same_values(batch, dtype):
    ids, classes = batch
    out = numerics.class_ids(ids.astype(dtype), classes, plugin="p")
    assert keras.backend.standardize_dtype(out.dtype) == "int32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), ids)


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0], [7]])
def test_out_of_range_class_ids_name_the_plugin_and_the_fix(bad):
    bad = np.array(bad)
    wrong = bad[(bad < 0) | (bad >= 3)]
    found = f"smallest offending id {wrong.min()}, largest {wrong.max()}"
    with pytest.raises(lossplug.InvalidTensorError) as info:
        numerics.class_ids(bad, 3, plugin="my_loss")
    assert str(info.value) == (
        f"loss plugin 'my_loss': y_true holds class ids outside [0, 3) (the predictions have 3 "
        f"classes): {found}. Check the labels, and the number of classes of the output layer."
    )
    with pytest.raises(lossplug.InvalidTensorError) as info:
        numerics.class_ids(bad, 3, plugin="my_loss", field="num_classes", tensor="ids")
    assert str(info.value) == (
        f"loss plugin 'my_loss': ids holds class ids outside [0, num_classes=3): {found}. Set "
        "lossplug.use('my_loss', num_classes=<the number of classes>) or fix the labels."
    )


def test_class_ids_inside_compiled_functions_report_and_never_fail_a_gather():
    """Traced: the error is recorded on the host, the term marked invalid, the ids made safe."""
    from lossplug import runtime

    runtime.clear_reported()
    table = keras.ops.arange(3)

    def fn(ids):
        with runtime.term_scope("t", "my_loss") as scope:
            checked = numerics.class_ids(ids, 3, plugin="my_loss")
            flag = scope.invalid[0] if scope.invalid else False  # eagerly: raised, or fine
        return keras.ops.take(table, checked), flag

    compiled = _compiled(fn)
    bad = np.array([0, 5, -2, 2], "int32")
    if keras.backend.backend() == "torch":
        # Keras' torch trainer runs steps eagerly: the values are concrete, the error is
        # raised at once.
        with pytest.raises(lossplug.InvalidTensorError) as info:
            fn(bad)
        error = info.value
    else:
        gathered, invalid = compiled(bad)
        assert bool(keras.ops.convert_to_numpy(invalid))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(gathered), [0, 0, 0, 2])
        error = runtime.take_reported()
    assert isinstance(error, lossplug.InvalidTensorError)
    assert str(error).startswith(
        "loss plugin 'my_loss' (term 't'): y_true holds class ids outside [0, 3)"
    )
    assert "smallest offending id -2, largest 5" in str(error)
    gathered, invalid = compiled(np.array([2, 0], "int32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(gathered), [2, 0])
    assert not bool(keras.ops.convert_to_numpy(invalid))
    assert runtime.take_reported() is None


def _compiled(fn):
    """``fn`` compiled by the current backend's compiler (as Keras compiles a train step)."""
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if name == "jax":
        import jax

        return jax.jit(fn)
    return fn  # torch: Keras' trainer runs eagerly by default


# ----------------------------------------------------------------- one-hot targets
@given(class_id_batches(), st.sampled_from(["float32", "float64"]))
@SETTINGS
def test_one_hot_targets_of_ids_are_identity_rows(batch, dtype):
    ids, classes = batch
    pred = np.zeros((len(ids), classes), np.float32)
    expected = np.eye(classes)[ids]
    for y_true in (ids, ids[:, None], ids.astype(np.float32)):
        out = numerics.one_hot_targets(y_true, pred, plugin="p", dtype=dtype)
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)
    # the predictions' shape serves as well as the predictions
    out = numerics.one_hot_targets(ids, pred.shape, plugin="p")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), expected)


@given(hnp.arrays(np.float16, (3, 4), elements=st.floats(0.0, 1.0, width=16)))
@SETTINGS
def test_one_hot_targets_keep_rows_and_cast_them(rows):
    out = numerics.one_hot_targets(rows, np.zeros((3, 4)), plugin="p", dtype="float64")
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), rows.astype(np.float64))


def test_one_hot_targets_of_sequences():
    ids = np.array([[0, 2], [1, 1]])
    out = numerics.one_hot_targets(ids, (2, 2, 3), plugin="p")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), np.eye(3)[ids])


def test_one_hot_targets_of_a_wrong_shape_name_the_plugin_and_both_shapes():
    with pytest.raises(lossplug.InvalidTensorError) as info:
        numerics.one_hot_targets(np.zeros((2, 3)), (2, 4), plugin="my_loss")
    assert str(info.value) == (
        "loss plugin 'my_loss': y_true has shape (2, 3) but y_pred has shape (2, 4); pass class "
        "ids of shape (2,) or targets of shape (2, 4)"
    )
    with pytest.raises(lossplug.InvalidTensorError, match=r"or one-hot targets of shape \(2, 4\)"):
        numerics.one_hot_targets(
            np.zeros((2, 3, 4)), (2, 4), plugin="my_loss", targets="one-hot targets"
        )


def test_one_hot_targets_of_ids_need_a_static_class_axis():
    with pytest.raises(lossplug.InvalidTensorError, match=r"'my_loss': class ids need a static"):
        numerics.one_hot_targets(np.array([0, 1]), (2, None), plugin="my_loss")


@pytest.mark.backends("tensorflow")  # only TensorFlow traces with unknown axes
def test_one_hot_rows_of_unknown_class_axis_match_any_predictions():
    import tensorflow as tf

    rows = tf.function(
        lambda y: numerics.one_hot_targets(y, (None, 3), plugin="my_loss"),
        input_signature=[tf.TensorSpec((None, None), tf.float32)],
    )
    np.testing.assert_array_equal(rows(tf.ones((2, 3))).numpy(), 1.0)


def test_out_of_range_ids_in_one_hot_targets_name_the_plugin():
    with pytest.raises(lossplug.InvalidTensorError, match=r"^loss plugin 'my_loss'.*\[0, 3\)"):
        numerics.one_hot_targets(np.array([0, 3]), (2, 3), plugin="my_loss")


# ----------------------------------------------------------------- log probabilities
def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@given(logits())
@SETTINGS
def test_log_probabilities_of_logits_are_the_log_softmax(z):
    log_p = keras.ops.convert_to_numpy(numerics.categorical_log_probabilities(z, from_logits=True))
    np.testing.assert_allclose(log_p, _log_softmax(z), rtol=1e-5, atol=1e-5)
    # a distribution: logsumexp(log p) = 0, and log p <= 0
    np.testing.assert_allclose(np.log(np.exp(log_p.astype(np.float64)).sum(-1)), 0.0, atol=1e-5)
    assert np.all(log_p <= 1e-6)


@given(logits(scale=5.0).map(lambda z: np.abs(z) * np.float32(0.3)))
@SETTINGS
def test_log_probabilities_of_scores_are_clipped_and_renormalised(scores):
    log_p = keras.ops.convert_to_numpy(
        numerics.categorical_log_probabilities(scores, from_logits=False)
    )
    p = np.clip(scores.astype(np.float64), EPS, 1.0)
    p = np.clip(p / p.sum(-1, keepdims=True), EPS, 1.0 - EPS)
    np.testing.assert_allclose(log_p, np.log(p), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(log_p)) and np.all(log_p >= np.log(np.float32(EPS)) - 1e-5)


def test_log_probabilities_of_degenerate_rows_are_finite_and_in_the_compute_dtype():
    zeros = np.zeros((1, 4), np.float32)
    log_p = numerics.categorical_log_probabilities(zeros, from_logits=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_p), np.log(0.25), rtol=1e-6)
    half = numerics.categorical_log_probabilities(zeros.astype(np.float16), from_logits=True)
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    wide = numerics.categorical_log_probabilities(zeros.astype(np.float64), from_logits=True)
    assert keras.backend.standardize_dtype(wide.dtype) == "float64"


@given(hnp.arrays(np.float32, (6,), elements=st.floats(0.0, 1.0, width=32)))
@SETTINGS
def test_clipped_binary_probabilities_stay_in_range_and_complement(p):
    clipped, complement = (
        keras.ops.convert_to_numpy(v) for v in numerics.clipped_binary_probabilities(p)
    )
    for v in (clipped, complement):
        assert np.all(v >= np.float32(EPS)) and np.all(v <= np.float32(1 - EPS))
    inside = (p >= EPS) & (p <= 1 - EPS)
    np.testing.assert_allclose(clipped[inside] + complement[inside], 1.0, atol=1e-6)


def test_clipped_binary_probabilities_clip_the_complement_itself():
    """At p = 1, 1 - p is clipped to eps exactly (1 - clip(p) would give 1.19e-7 in float32)."""
    for dtype in ("float16", "float32", "float64"):
        with float64_available():
            _, complement = numerics.clipped_binary_probabilities(keras.ops.ones((1,), dtype))
            expected = np.asarray(EPS, dtype) if dtype != "float16" else np.float16(EPS)
            # float64: eps itself, not eps rounded to float32 (as Keras' torch clip would)
            rel = 1e-15 if dtype == "float64" else 1e-7
            assert keras.ops.convert_to_numpy(complement)[0] == pytest.approx(expected, rel=rel)


# ----------------------------------------------------------------- reductions
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
        elements=st.floats(-100, 100),
    )
)
@SETTINGS
def test_reduce_trailing_sums_or_averages_every_axis_but_the_batch_axis(values):
    axes = tuple(range(1, values.ndim))
    for reduction, fn in (("sum", np.sum), ("mean", np.mean)):
        with float64_available():
            tensor = keras.ops.convert_to_tensor(values)
            out = keras.ops.convert_to_numpy(numerics.reduce_trailing(tensor, reduction))
        assert out.shape == values.shape[:1]
        expected = fn(values, axis=axes) if axes else values
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_reduce_trailing_refuses_an_unknown_reduction():
    with pytest.raises(ValueError, match=r"reduction must be one of \('sum', 'mean'\), got 'max'"):
        numerics.reduce_trailing(keras.ops.zeros((2, 3)), "max")


# ----------------------------------------------------------------- ratio
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ratio_is_the_exact_quotient_and_at_zero_below_the_smallest_normal(dtype):
    """n / d bitwise (also where d is rescaled, below 2**-60 in float32), ``at_zero`` at d = 0
    and at a subnormal d, in the compute dtype."""
    rng = np.random.default_rng(0)
    scales = 10.0 ** rng.integers(-37 if dtype == "float32" else -300, 5, 2000)
    d = (rng.uniform(0.1, 1.0, 2000) * scales).astype(dtype)
    n = (d * rng.uniform(0.0, 1.0, 2000)).astype(dtype)
    n = np.where(n < np.finfo(dtype).tiny, 0.0, n).astype(dtype)  # no subnormal numerators
    out = numerics.ratio(keras.ops.convert_to_tensor(n), keras.ops.convert_to_tensor(d))
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), n / d)
    zero = np.zeros(2, dtype)
    for below in (0.0, np.finfo(dtype).tiny / 4):  # 0 and a subnormal denominator
        got = numerics.ratio(
            keras.ops.convert_to_tensor(zero),
            keras.ops.convert_to_tensor(zero + below),
            at_zero=1.0,
        )
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ratio_gradients_are_finite_for_tiny_denominators(dtype):
    """d(n/d)/dn = 1 / d and d(n/d)/dd = -(n / d) / d, however small d is (a plain n / d
    gave NaN on JAX at n = 0, d = 3.2e-33: JAX differentiates it as -n d**-2)."""
    from lossplug.testing import value_and_gradients

    tiny = np.finfo(dtype).tiny
    d = np.array([3.2e-33, 1e-20, 2.0**-61, tiny, 1.0, tiny / 4, 0.0], dtype)
    n = np.array([0.0, 5e-21, 2.0**-62, tiny, 0.25, 0.0, 0.0], dtype)
    _, grads = value_and_gradients(
        lambda n, d: numerics.ratio(n, d), {"n": n, "d": d}, wrt=["n", "d"]
    )
    normal = d >= tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        want_n = np.where(normal, 1.0 / np.where(normal, d, 1.0), 0.0)
        want_d = np.where(normal, -(n / np.where(normal, d, 1.0)) / np.where(normal, d, 1.0), 0.0)
    for got, want in ((grads["n"], want_n), (grads["d"], want_d)):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------- float64-exact ops
THIRD = 1.0 / 3.0  # not a float32 number: a constant Keras' torch ops would round
#: case -> (the helper on tensors a[, b], its NumPy float64 reference, arity)
FLOAT64_OPS = {
    "maximum": (numerics.maximum, np.maximum, 2),
    "maximum of a number": (
        lambda a: numerics.maximum(a, THIRD),
        lambda a: np.maximum(a, THIRD),
        1,
    ),
    "minimum": (numerics.minimum, np.minimum, 2),
    "minimum of a number": (
        lambda a: numerics.minimum(THIRD, a),
        lambda a: np.minimum(THIRD, a),
        1,
    ),
    "clip": (lambda a: numerics.clip(a, -THIRD, THIRD), lambda a: np.clip(a, -THIRD, THIRD), 1),
    "matmul": (
        lambda a, b: numerics.matmul(keras.ops.reshape(a, (2, 4)), keras.ops.reshape(b, (4, 2))),
        lambda a, b: a.reshape(2, 4) @ b.reshape(4, 2),
        2,
    ),
    "cumsum": (lambda a: numerics.cumsum(a, 0), np.cumsum, 1),
    "floor": (lambda a: numerics.floor(a * 3.0), lambda a: np.floor(a * 3.0), 1),
    "cos": (numerics.cos, np.cos, 1),
    "arctan2": (numerics.arctan2, np.arctan2, 2),
    "logaddexp": (numerics.logaddexp, np.logaddexp, 2),
    "mean": (numerics.mean, np.mean, 1),
}
#: values of either sign, magnitudes 1e-3 to 10, some 1e-12 below a multiple of 1/3
float64_values = hnp.arrays(
    np.float64,
    (8,),
    elements=st.one_of(
        st.floats(-10.0, 10.0).filter(lambda v: abs(v) > 1e-3),
        st.integers(-30, 30).map(lambda k: k / 3.0 - 1e-12),
    ),
)


def _binary(case):
    """The helper of ``case`` as a function of (a, b) (unary helpers ignore b)."""
    helper, _, arity = FLOAT64_OPS[case]
    return (lambda a, b: helper(a, b)) if arity == 2 else (lambda a, b: helper(a))


def _run_case(case, a, b, dtype="float64"):
    """The helper of ``case`` on a, b cast to ``dtype``: (result tensor, NumPy float64 ref)."""
    _, reference, arity = FLOAT64_OPS[case]
    x, y = (keras.ops.cast(keras.ops.convert_to_tensor(v), dtype) for v in (a, b))
    return _binary(case)(x, y), reference(*(a, b)[:arity])


@pytest.mark.parametrize("case", sorted(FLOAT64_OPS))
@given(a=float64_values, b=float64_values)
@SETTINGS
def test_float64_ops_compute_in_float64_on_every_backend(case, a, b):
    """float64 in, float64 out, within a few float64 roundings of NumPy (float32: ~1e-7)."""
    out, expected = _run_case(case, a, b)
    assert keras.backend.standardize_dtype(out.dtype) == "float64"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(set(FLOAT64_OPS) - {"mean"}))  # mean: sum / count
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_float64_ops_are_the_keras_ops_for_other_dtypes(case, dtype, monkeypatch):
    """Below float64 nothing changes: the helper calls the Keras op and returns its result."""
    a, b = np.random.default_rng(0).uniform(-3.0, 3.0, size=(2, 8))
    name = case.split(" ")[0]
    keras_op, calls = getattr(keras.ops, name), []
    monkeypatch.setattr(keras.ops, name, lambda *args: calls.append(args) or keras_op(*args))
    out, _ = _run_case(case, a, b, dtype)
    assert len(calls) == 1
    expected = keras_op(*calls[0])
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(out, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")),
    )


#: case -> the NumPy float64 gradients of sum(helper(a, b)) with respect to a and b
FLOAT64_GRADIENTS = {
    "cos": lambda a, b: (-np.sin(a), np.zeros_like(b)),
    "arctan2": lambda a, b: (b / (a * a + b * b), -a / (a * a + b * b)),
    "logaddexp": lambda a, b: (1 / (1 + np.exp(b - a)), 1 / (1 + np.exp(a - b))),
    "maximum": lambda a, b: ((a > b) * 1.0, (a < b) * 1.0),
    "matmul": lambda a, b: (
        np.tile(b.reshape(4, 2).sum(1), 2),
        np.repeat(a.reshape(2, 4).sum(0), 2),
    ),
}


@pytest.mark.parametrize("case", sorted(FLOAT64_GRADIENTS))
@given(a=float64_values, b=float64_values)
@SETTINGS
def test_float64_ops_have_float64_gradients(case, a, b):
    """The backend's autodiff through the helpers is float64-exact too: the kit's float64
    finite differences compare against it."""
    from lossplug.testing import value_and_gradients

    b = np.where(a == b, b + 1.0, b)  # no ties: maximum's derivative is 0 or 1
    _, grads = value_and_gradients(_binary(case), {"a": a, "b": b})
    for got, want in zip((grads["a"], grads["b"]), FLOAT64_GRADIENTS[case](a, b), strict=True):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_every_backend_replacement_is_a_keras_op_with_a_helper():
    for name in backend.current().FLOAT64_OPS:
        assert callable(getattr(keras.ops, name)) and callable(getattr(numerics, name))
        assert name in FLOAT64_OPS, f"numerics.{name} needs a case in FLOAT64_OPS"


def test_canary_keras_still_computes_float64_in_float32_off_tensorflow():
    """Keras 3.15's dtype promotion maps float64 to float32 on JAX and torch (its
    ``BIT64_TO_BIT32_DTYPE``), which is why the float64 helpers exist. When this fails
    Keras keeps float64, and the helpers and ``FLOAT64_OPS`` can go (docs/decisions.md)."""
    narrowed = "float64" if backend.name() == "tensorflow" else "float32"
    assert keras.backend.result_type("float64") == narrowed
    x = keras.ops.convert_to_tensor(np.full((2,), 0.1))
    assert keras.backend.standardize_dtype(keras.ops.floor(x).dtype) == narrowed

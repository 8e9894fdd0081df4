"""lossplug.testing.value_and_gradients and compiled: the same results on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops
from lossplug.testing import compiled, compiler_modes, value_and_gradients


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_gradient_of_the_sum_of_squares_is_twice_the_input(dtype) -> None:
    x = np.array([[1.0, -2.0, 0.0], [3.5, 0.25, -1e3]], dtype)
    value, grads = value_and_gradients(lambda x: ops.square(x), {"x": x})
    assert value.dtype == grads["x"].dtype == np.dtype(dtype)  # float64 on JAX too
    np.testing.assert_array_equal(value, x**2)
    np.testing.assert_array_equal(grads["x"], 2 * x)


def test_several_tensors_and_integer_labels() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    w = np.array([0.5, -1.0], "float32")
    labels = np.array([1, 0], "int32")

    def fn(x, w, labels):
        picked = ops.take_along_axis(x, ops.expand_dims(labels, 1), axis=1)[:, 0]
        return picked * w

    value, grads = value_and_gradients(fn, {"x": x, "w": w, "labels": labels})
    np.testing.assert_array_equal(value, [1.0, -3.0])
    assert set(grads) == {"x", "w"}  # integer tensors are passed, not differentiated
    np.testing.assert_array_equal(grads["x"], [[0.0, 0.5], [-1.0, 0.0]])
    np.testing.assert_array_equal(grads["w"], [2.0, 3.0])
    _, only = value_and_gradients(fn, {"x": x, "w": w, "labels": labels}, wrt=["w"])
    assert set(only) == {"w"}


def test_a_tensor_the_value_does_not_depend_on_gets_zeros_not_none() -> None:
    x = np.array([1.0, 2.0], "float32")
    unused = np.ones((2, 3), "float64")
    _, grads = value_and_gradients(lambda x, unused: 3.0 * x, {"x": x, "unused": unused})
    assert grads["unused"] is not None
    assert grads["unused"].shape == (2, 3) and grads["unused"].dtype == np.float64
    np.testing.assert_array_equal(grads["unused"], 0.0)
    # ... and so does one reached only through stop_gradient
    _, grads = value_and_gradients(lambda x: ops.stop_gradient(x) * 2.0, {"x": x})
    np.testing.assert_array_equal(grads["x"], 0.0)


def test_bad_wrt_is_refused() -> None:
    tensors = {"x": np.ones(2, "float32"), "y": np.array([0, 1])}
    with pytest.raises(ValueError, match="'z', which is not one of"):
        value_and_gradients(lambda x, y: x, tensors, wrt=["z"])
    with pytest.raises(ValueError, match="'y' of dtype int"):
        value_and_gradients(lambda x, y: x, tensors, wrt=["y"])


@pytest.mark.parametrize("mode", list(compiler_modes()))
def test_compiled_equals_eager_for_each_of_the_backends_compilers(mode) -> None:
    def fn(x, labels):
        weights = ops.cast(labels, x.dtype)
        return {"sum": ops.sum(x * weights[:, None], axis=1), "max": ops.max(x)}

    compiled_fn = compiled(fn, mode)
    rng = np.random.default_rng(0)
    for batch in (5, 3, 5):  # a new batch size, then the first one again
        x = rng.normal(size=(batch, 4)).astype("float32")
        labels = rng.integers(0, 3, batch).astype("int32")
        got, want = compiled_fn(x, labels), fn(ops.convert_to_tensor(x), labels)
        for key in ("sum", "max"):
            np.testing.assert_allclose(
                ops.convert_to_numpy(got[key]), ops.convert_to_numpy(want[key]), rtol=1e-6
            )


def test_compiled_takes_dicts_and_keeps_float64() -> None:
    fn = compiled(lambda d: d["a"] * 2.0 + d["b"])
    got = ops.convert_to_numpy(fn({"a": np.arange(3.0), "b": np.ones(3)}))
    assert got.dtype == np.float64  # JAX: 64-bit types are enabled while it runs
    np.testing.assert_array_equal(got, [1.0, 3.0, 5.0])


def test_compiler_modes_and_a_bad_mode() -> None:
    modes = compiler_modes()
    assert modes and all(isinstance(v, str) for v in modes.values())
    with pytest.raises(ValueError, match="mode must be one of"):
        compiled(lambda x: x, "no-such-compiler")

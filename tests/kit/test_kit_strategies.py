"""Hypothesis strategies derived from specs: shapes, kinds, extremes, configs."""

from __future__ import annotations

import attrs
import numpy as np
from hypothesis import find, given, settings
from hypothesis import strategies as st
from lossplug import Kind, PluginSpec, TensorSpec, param
from lossplug.testing import strategies as kst

FAST = settings(max_examples=25, deadline=None, database=None)


@attrs.frozen
class Config:
    num_classes: int = param(3, low=2, high=100)
    margin: float = param(0.5, low=0.0, high=1.0, high_inclusive=False)
    mode: str = param("mean", choices=("mean", "sum"))
    hard: bool = param(False)
    scale: float = param(2.0, low=0.0, low_inclusive=False)


def _spec(*tensors: TensorSpec) -> PluginSpec:
    return PluginSpec(name="kit_strategy_probe", description="probe", config=Config,
                      tensors=tensors)  # fmt: skip


SPEC = _spec(
    TensorSpec("y_true", Kind.SPARSE_LABELS, source="inputs", shape=("B",), classes="num_classes"),
    TensorSpec("y_pred", Kind.PROBABILITIES, shape=("B", "num_classes")),
    TensorSpec("onehot", Kind.ONE_HOT, source="inputs", shape=("B", "C")),
    TensorSpec("features", Kind.EMBEDDINGS, shape=("B", "D")),
    TensorSpec("mask", Kind.MASKS, source="inputs", shape=("B", "H", "W", 1)),
    TensorSpec("image", Kind.IMAGES, shape=("B", "H", "W", 1)),
    TensorSpec("logits", Kind.LOGITS),
    TensorSpec("bits", Kind.BINARY_LABELS, source="inputs", shape=("B",)),
)


@FAST
@given(kst.configs(SPEC))
def test_configs_respect_the_declared_rules(config) -> None:
    assert 2 <= config.num_classes <= 6  # a dimension: kept small
    assert 0.0 <= config.margin < 1.0
    assert config.mode in ("mean", "sum")
    assert isinstance(config.hard, bool)
    assert config.scale > 0.0


def test_configs_reach_non_default_values() -> None:
    find(kst.configs(SPEC), lambda c: c.mode == "sum" and c.hard and c.margin != 0.5)
    fixed = find(kst.configs(SPEC, margin=0.0), lambda c: True)
    assert fixed.margin == 0.0


@FAST
@given(kst.examples(SPEC))
def test_examples_have_consistent_shapes_and_valid_data(ex) -> None:
    n = ex.inputs["y_true"].shape[0]
    k = ex.config.num_classes
    assert 1 <= n <= 5
    assert ex.inputs["y_true"].dtype == np.int32
    assert np.all((ex.inputs["y_true"] >= 0) & (ex.inputs["y_true"] < k))
    p = ex.outputs["y_pred"]
    assert p.shape == (n, k) and p.dtype == np.float32
    assert np.all(p > 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    onehot = ex.inputs["onehot"]
    assert onehot.shape[0] == n and np.all(onehot.sum(axis=1) == 1)
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    features = ex.outputs["features"]
    assert features.shape[0] == n and np.all(np.linalg.norm(features, axis=1) >= 0.1 - 1e-6)
    mask, image = ex.inputs["mask"], ex.outputs["image"]
    assert mask.shape == image.shape and mask.shape[0] == n and mask.shape[-1] == 1
    assert set(np.unique(mask)) <= {0.0, 1.0}  # target masks are binary
    assert np.all((image >= 0) & (image <= 1))
    logits = ex.outputs["logits"]
    assert logits.shape[0] == n and np.all(np.abs(logits) <= 20)
    assert set(np.unique(ex.inputs["bits"])) <= {0.0, 1.0}


def test_batch_of_one_and_larger_batches_occur() -> None:
    find(kst.examples(SPEC), lambda ex: ex.inputs["y_true"].shape[0] == 1)
    find(kst.examples(SPEC), lambda ex: ex.inputs["y_true"].shape[0] == 5)


@FAST
@given(kst.examples(SPEC, extremes=True))
def test_extreme_examples_stay_valid(ex) -> None:
    p = ex.outputs["y_pred"]
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    norms = np.linalg.norm(ex.outputs["features"].astype(np.float64), axis=1)
    assert np.all((norms == 0.0) | np.isclose(norms, 1e-6, rtol=1e-3)
                  | np.isclose(norms, 1.0, rtol=1e-3) | np.isclose(norms, 1e4, rtol=1e-3))  # fmt: skip
    assert np.all(np.abs(ex.outputs["logits"]) <= 1e4)


def test_extremes_reach_the_promised_values() -> None:
    extremes = kst.examples(SPEC, extremes=True)
    find(extremes, lambda ex: np.any(ex.outputs["logits"] == 1e4))
    find(extremes, lambda ex: np.any(ex.outputs["logits"] == -1e4))
    find(extremes, lambda ex: np.any(ex.outputs["y_pred"] == 1.0))
    find(extremes, lambda ex: np.all(ex.outputs["features"][0] == 0.0))  # a zero row
    find(extremes, lambda ex: np.isclose(np.linalg.norm(ex.outputs["features"][0]), 1e-6))
    find(extremes, lambda ex: np.isclose(np.linalg.norm(ex.outputs["features"][0]), 1e4))
    find(extremes, lambda ex: len(ex.inputs["y_true"]) > 1 and len(set(ex.inputs["y_true"])) == 1)
    find(extremes, lambda ex: set(np.unique(ex.outputs["image"])) == {0.0, 1.0})


@FAST
@given(st.data())
def test_label_patterns(data) -> None:
    equal = data.draw(kst.examples(SPEC, batch_sizes=[2, 3, 4], labels="equal"))
    assert len(set(equal.inputs["y_true"].tolist())) == 1
    distinct = data.draw(kst.examples(SPEC, batch_sizes=2, labels="distinct"))
    assert len(set(distinct.inputs["y_true"].tolist())) == 2


@FAST
@given(kst.examples(SPEC, dtype="float16", batch_sizes=3, dims={"D": 2}))
def test_dtype_batch_and_fixed_dims(ex) -> None:
    assert ex.outputs["features"].dtype == np.float16
    assert ex.outputs["features"].shape == (3, 2)
    assert ex.inputs["y_true"].dtype == np.int32


def test_default_shapes_by_kind() -> None:
    spec = _spec(
        TensorSpec("labels", Kind.LABELS, source="inputs"),
        TensorSpec("emb", Kind.EMBEDDINGS),
        TensorSpec("masks", Kind.MASKS),
    )
    one_hot = find(kst.examples(spec), lambda ex: ex.inputs["labels"].ndim == 2)
    assert set(np.unique(one_hot.inputs["labels"])) <= {0.0, 1.0}
    sparse = find(kst.examples(spec), lambda ex: ex.inputs["labels"].ndim == 1)
    assert sparse.inputs["labels"].dtype == np.int32
    assert sparse.outputs["emb"].ndim == 2 and sparse.outputs["masks"].ndim == 4

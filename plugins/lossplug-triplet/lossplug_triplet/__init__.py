"""lossplug plugin ``triplet``: the triplet margin (ranking) loss.

For an anchor a, a positive p (same identity) and a negative n (another
identity), with a distance d:

    h(a, p, n) = max(0, m + d(a, p) - d(a, n))

which is zero once the negative is farther from the anchor than the positive
by at least the margin m. With ``metric="cosine"``, d(x, y) = 1 - cos(x, y), so
h = max(0, m + cos(a, n) - cos(a, p)): the similarity form of the same loss.

Two modes, chosen with ``mode``:

``explicit``
    three tensors ``anchor``, ``positive`` and ``negative`` (model outputs of
    shape (B, dim), e.g. a question encoder and the encoders of a right and a
    wrong answer); per sample h_i = h(anchor_i, positive_i, negative_i),
    reduced to sum_i w_i h_i / B with the sample weights w (exactly the core's
    reduction of per-sample losses, Keras' ``sum_over_batch_size``).

``mining`` (default)
    ``embeddings`` (model output, (B, dim)) and sparse labels ``y_true``;
    triplets are mined inside the batch with ``mining`` = ``batch_all``,
    ``batch_hard`` or ``semi_hard`` (the core's :mod:`lossplug.mining`) in
    O(B^2) memory, and the loss is one scalar for the batch (sample weights
    weight the anchors). A batch without any valid triplet gives exactly 0.

Distances are the core's :mod:`lossplug.pairs` (float32 compute, no float64):
batch-hard ranks the pairs on the fast float32 Gram matrix and recomputes the
2B selected distances from the embeddings' differences; batch-all and
semi-hard use a distance matrix whose nearest entries per row are computed
from differences (see :func:`lossplug.pairs.pairwise_distances`), so close
pairs keep float64-grade accuracy in the loss and its gradient.

The spec declares ``returns="scalar"`` and ``batch_coupled=True``: mining
couples the samples of a batch, and a spec describes one return shape for all
configs, so explicit mode reduces its per-sample hinges itself, the way the
core would (the per-sample values are :func:`explicit_hinge`). Sample weights
and ``tf.distribute`` scaling therefore behave exactly as for a per-sample loss.

Metric ``active_fraction``: the fraction of the scored triplets whose hinge is
positive (explicit mode: of the samples).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginConfigError, PluginSpec, TensorSpec, param
from lossplug.mining import AVERAGES, STRATEGIES
from lossplug.pairs import METRICS
from lossplug.properties import Custom, NonNegative, ZeroAtPerfect

from .claims import check_cosine_scale_invariance, perfect_example

__all__ = [
    "Config",
    "build_loss_graph",
    "explicit_hinge",
    "lossplug_spec",
    "mined_loss",
    "triplet_loss",
]

MODES = ("mining", "explicit")
EXPLICIT_TENSORS = ("anchor", "positive", "negative")
MINING_TENSORS = ("embeddings", "y_true")


@attrs.frozen
class Config:
    """Hyper-parameters of ``triplet``."""

    mode: str = param(
        "mining",
        choices=MODES,
        doc="'mining': embeddings + labels, triplets mined in the batch; "
        "'explicit': anchor/positive/negative tensors, one triplet per sample",
    )
    margin: float = param(
        1.0, low=0.0, doc="m in max(0, m + d(a, p) - d(a, n)); must be < 2 for metric='cosine'"
    )
    metric: str = param(
        "euclidean",
        choices=METRICS,
        doc="distance d: ||x - y||, ||x - y||^2, or 1 - cos(x, y)",
    )
    mining: str = param(
        "batch_all",
        choices=STRATEGIES,
        doc="mode='mining' only: every valid triplet, the hardest per anchor, or "
        "semi-hard negatives per positive pair",
    )
    average: str = param(
        "valid",
        choices=AVERAGES,
        doc="mode='mining' only: average the hinge over all valid triplets, or only over "
        "active ones (positive hinge, like pytorch-metric-learning's AvgNonZeroReducer)",
    )

    def __attrs_post_init__(self) -> None:
        if self.metric == "cosine" and self.margin >= 2.0:
            raise PluginConfigError(
                f"margin={self.margin!r} with metric='cosine': cosine distances lie in [0, 2], "
                "so a margin >= 2 can never be met; use a margin below 2 (typically 0.1 to 0.5)"
            )
        if self.mode == "explicit" and self.average != "valid":
            raise PluginConfigError(
                f"average={self.average!r} applies to mode='mining' only; in mode='explicit' the "
                "loss is per sample and the core averages it (leave average='valid')"
            )


TENSORS = (
    TensorSpec(
        "embeddings",
        Kind.EMBEDDINGS,
        source="outputs",
        shape=("B", "D"),
        optional=True,
        description="mode='mining': the embeddings to mine triplets from",
    ),
    TensorSpec(
        "y_true",
        Kind.SPARSE_LABELS,
        source="inputs",
        shape=("B",),
        classes="C",
        optional=True,
        description="mode='mining': integer identity labels of the embeddings",
    ),
    TensorSpec(
        "anchor",
        Kind.EMBEDDINGS,
        source="outputs",
        shape=("B", "D"),
        optional=True,
        description="mode='explicit': anchor embeddings",
    ),
    TensorSpec(
        "positive",
        Kind.EMBEDDINGS,
        source="outputs",
        shape=("B", "D"),
        optional=True,
        description="mode='explicit': embeddings that should be close to the anchor",
    ),
    TensorSpec(
        "negative",
        Kind.EMBEDDINGS,
        source="outputs",
        shape=("B", "D"),
        optional=True,
        description="mode='explicit': embeddings that should be far from the anchor",
    ),
)

SPEC = PluginSpec(
    name="triplet",
    description="Triplet margin loss: explicit anchor/positive/negative, or in-batch mining.",
    config=Config,
    tensors=TENSORS,
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            perfect=perfect_example,
            atol=1e-5,
            description="embeddings where every negative is farther than every positive by "
            "more than the margin",
        ),
        # Not ScaleInvariant: that multiplies one whole tensor by one factor; this rescales
        # every embedding row by its own factor, in all the embedding tensors of the mode.
        Custom(
            "cosine_scale_invariance",
            check=check_cosine_scale_invariance,
            description="rescaling each embedding by its own positive factor in [0.1, 10] "
            "leaves the loss unchanged",
            at={"metric": "cosine"},
        ),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


def _check_matrix(value: Any, name: str, mode: str) -> None:
    if len(value.shape) != 2:
        raise lossplug.InvalidTensorError(
            f"loss plugin 'triplet' (mode={mode!r}) needs {name} of shape (batch, dim), got "
            f"shape {tuple(value.shape)}; flatten or pool them first, or bind another layer"
        )


def _require(mapping: Any, name: str, source: str, config: Config, needed: tuple[str, ...]) -> Any:
    value = mapping.get(name)
    if value is None:
        raise lossplug.MissingTensorError(
            f"loss plugin 'triplet' (mode={config.mode!r}) needs the tensors "
            f"{', '.join(needed)}; {source}[{name!r}] is missing. Expose a layer with that name "
            f"(LossModel(..., expose=[...])) or bind it, e.g. "
            f"lossplug.use('triplet', bind={{{name!r}: 'your_layer'}})"
            + ("; in mining mode y_true comes from fit(x, y)" if name == "y_true" else "")
        )
    return value


def explicit_hinge(anchor: Any, positive: Any, negative: Any, config: Config) -> Any:
    """Per-sample hinges max(0, m + d(a_i, p_i) - d(a_i, n_i)), shape (B,)."""
    from keras import ops
    from lossplug.numerics import compute_dtype
    from lossplug.pairs import paired_distances

    dtype = compute_dtype(anchor, positive, negative)
    anchor, positive, negative = (ops.cast(t, dtype) for t in (anchor, positive, negative))
    d_ap = paired_distances(anchor, positive, config.metric)
    d_an = paired_distances(anchor, negative, config.metric)
    return ops.relu(config.margin + d_ap - d_an)


def mined_loss(embeddings: Any, labels: Any, config: Config, weights: Any = None) -> Any:
    """The mined triplet loss of (B, D) embeddings with (B,) labels: a MiningResult.

    batch_hard ranks on float32 squared Gram distances (cosine: the cosine
    matrix) and recomputes the 2B selected distances from the embeddings;
    batch_all and semi_hard mine on :func:`lossplug.pairs.pairwise_distances`.
    """
    from lossplug import mining, pairs

    positive, negative = pairs.label_masks(labels)
    if config.mining == "batch_hard":
        ranking_metric = "cosine" if config.metric == "cosine" else "squared_euclidean"
        ranking = pairs.pairwise_distances(embeddings, metric=ranking_metric, exact_neighbours=0)

        def recompute(rows: Any, cols: Any) -> Any:
            return pairs.gathered_distances(embeddings, embeddings, rows, cols, config.metric)

        return mining.batch_hard(
            ranking,
            positive,
            negative,
            margin=config.margin,
            average=config.average,
            weights=weights,
            recompute=recompute,
        )
    distances = pairs.pairwise_distances(embeddings, metric=config.metric)
    return mining.mine(
        distances,
        positive,
        negative,
        margin=config.margin,
        strategy=config.mining,
        average=config.average,
        weights=weights,
    )


def triplet_loss(
    inputs: Any, outputs: Any, config: Config, *, sample_weight: Any = None, gather: Any = None
) -> LossResult:
    """The triplet loss for ``config`` (what :func:`build_loss_graph` computes).

    ``gather`` (optional) concatenates a tensor over replicas; in mining mode it
    is applied to the embeddings, labels and sample weights before mining.
    """
    from keras import ops
    from lossplug.numerics import compute_dtype
    from lossplug.terms import reduce_per_sample

    if config.mode == "explicit":
        anchor, pos, neg = (
            _require(outputs, name, "outputs", config, EXPLICIT_TENSORS)
            for name in EXPLICIT_TENSORS
        )
        for name, value in zip(EXPLICIT_TENSORS, (anchor, pos, neg), strict=True):
            _check_matrix(value, name, "explicit")
        if not (anchor.shape[-1] == pos.shape[-1] == neg.shape[-1]):
            raise lossplug.InvalidTensorError(
                "loss plugin 'triplet' (mode='explicit') needs anchor, positive and negative "
                f"of one dimension, got {anchor.shape[-1]}, {pos.shape[-1]} and {neg.shape[-1]}"
            )
        hinge = explicit_hinge(anchor, pos, neg, config)
        active = ops.mean(ops.cast(hinge > 0, "float32"))
        # Reduced exactly as the core reduces per-sample losses, so that one spec
        # (returns="scalar") describes both modes.
        loss = reduce_per_sample(hinge, sample_weight)
        return LossResult(loss=loss, metrics={"active_fraction": active})

    embeddings = _require(outputs, "embeddings", "outputs", config, MINING_TENSORS)
    labels = _require(inputs, "y_true", "inputs", config, MINING_TENSORS)
    _check_matrix(embeddings, "embeddings", "mining")
    if len(labels.shape) > 2 or (len(labels.shape) == 2 and labels.shape[-1] not in (1, None)):
        raise lossplug.InvalidTensorError(
            "loss plugin 'triplet' (mode='mining') needs integer labels of shape (batch,), got "
            f"shape {tuple(labels.shape)} (one-hot?); pass class ids (e.g. argmax of one-hot)"
        )
    dtype = compute_dtype(embeddings)
    embeddings = ops.cast(embeddings, dtype)
    labels = ops.reshape(labels, (-1,))
    weights = None if sample_weight is None else ops.reshape(ops.cast(sample_weight, dtype), (-1,))
    if gather is not None:
        embeddings = gather(embeddings)
        labels = gather(labels)
        if weights is not None:
            weights = gather(weights)
    result = mined_loss(embeddings, labels, config, weights)
    return LossResult(loss=result.loss, metrics={"active_fraction": result.active_fraction})


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Compute the triplet loss of one batch (see the module docstring for the math)."""
    config = extras.config
    gather = None
    if config.mode == "mining" and extras.global_batch and extras.num_replicas > 1:
        gather = extras.all_gather
    return triplet_loss(inputs, outputs, config, sample_weight=extras.sample_weight, gather=gather)

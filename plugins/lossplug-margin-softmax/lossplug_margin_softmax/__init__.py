"""lossplug plugin ``margin_softmax``: ArcFace, CosFace and SphereFace in one plugin.

The plugin owns trainable class weights W of shape (dim, num_classes * K), K =
``sub_centers`` (created with ``extras.state``, trained by the model's optimizer
and saved with it); column j * K + k is the k-th sub-centre of class j. For a
feature x with class y:

    c_jk = <x / ||x||, W_jk / ||W_jk||>          cosine to every sub-centre
    c_j = max_k c_jk                              cosine to every class j
    z_j = s * c_j                    (j != y)
    z_y = s * phi(c_y)                            margin on the target class only
    loss = logsumexp_j z_j - z_y                  softmax cross-entropy, >= 0

with ``kind`` choosing phi (see :mod:`lossplug_margin_softmax.margins`):
ArcFace cos(theta + m), CosFace cos(theta) - m, SphereFace psi(m theta).
K = 1 (the default) is the plain loss, W of shape (dim, num_classes); K > 1 is
Sub-center ArcFace (Deng et al. 2020, ECCV), for every kind: the margin acts on
the target class's nearest (dominant) sub-centre. At the neutral margin (m = 0;
m = 1 for SphereFace) phi(c) = c and the loss is the normalised-softmax
cross-entropy with scale s (over the nearest sub-centres).

Stability: features and weights are normalised in float32 (also under a
float16 / bfloat16 policy; float64 stays float64). The target angle is never
taken as arccos(c): the target cosine c and sine s = ||u - c w|| are computed
per sample from the unit vectors and theta = atan2(s, c), which is accurate
near 0 and pi and has finite derivatives everywhere (so no clipping of c away
from +-1 is needed, and none can bias the loss); the margin enters only
through the target logit, s * phi in place of s * c_y (a ``where`` on the
target mask), and the cross-entropy is a log-sum-exp. Memory: one
(batch, num_classes * K) cosine matrix, its (batch, num_classes) maximum over
the sub-centres when K > 1, and the logits (no one-hot matrix, no per-class
angles).

Very many classes (``sample_rate = r < 1``, Partial FC, An et al. 2021): in
training, the sum over j runs over a sample S of the classes only, the batch's
positive classes plus random others, max(#positives, ceil(r * C)) in all (see
:mod:`lossplug_margin_softmax.sampling`); the cosines are (batch, w * K) and the
logits (batch, w), w = min(C, max(ceil(r * C), batch)) >= |S|, and only the
sampled columns of W get a (non-zero) gradient. The randomness comes
from a state variable ``sample_seed`` and the step. Evaluation and prediction
(``extras.training`` False) use every class: the validation loss is the full loss.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import keras
import lossplug
import numpy as np
from lossplug import Kind, LossResult, PluginConfigError, PluginSpec, TensorSpec, param
from lossplug.numerics import L2_EPSILON
from lossplug.properties import Custom, Example, NonNegative, ReducesTo

from .loss import margin_softmax_loss, sampled_margin_softmax_loss
from .margins import (
    DEFAULT_MARGINS,
    KINDS,
    MARGIN_RANGES,
    NEUTRAL_MARGINS,
)
from .sampling import sample_size, sampled_classes

__all__ = [
    "Config",
    "build_loss_graph",
    "lossplug_spec",
    "margin_softmax_loss",
    "nearest_class",
    "normalised_softmax_reference",
    "sampled_classes",
    "sampled_margin_softmax_loss",
]

WEIGHTS = "class_weights"
#: the state variable the sampled loss draws its classes from (with the step)
SEED = "sample_seed"
#: the seed is an integer below 2^24, held in a float32 variable (exact in float32)
SEED_BITS = 24


@attrs.frozen
class Config:
    """Hyper-parameters of ``margin_softmax``."""

    num_classes: int = param(10, low=2, kind=int, doc="number of classes (columns of W)")
    kind: str = param(
        "arcface",
        choices=KINDS,
        doc="arcface: cos(theta + m); cosface: cos(theta) - m; sphereface: psi(m theta)",
    )
    scale: float = param(
        30.0, low=0.0, low_inclusive=False, doc="s, the norm the cosines are scaled to"
    )
    margin: float | None = param(
        None,
        kind=(float, int, type(None)),
        doc="m; None takes the paper's value (arcface 0.5 rad, cosface 0.35, sphereface 4). "
        "Ranges: arcface [0, pi/2], cosface [0, 1], sphereface [1, 8]",
        neutral="0 (arcface, cosface) or 1 (sphereface)",
    )
    easy_margin: bool = param(
        False,
        doc="arcface only: apply the margin only where cos(theta) > 0 (else no margin), "
        "instead of the cos(theta) - m sin(m) fallback beyond theta + m > pi",
    )
    sphere_lambda: float = param(
        0.0,
        low=0.0,
        doc="sphereface only: blend (lambda cos + psi) / (1 + lambda); the paper anneals it "
        "from about 1000 to 5 for stable training",
        neutral=0.0,
    )
    sub_centers: int = param(
        1,
        low=1,
        kind=int,
        doc="K sub-centres per class (Sub-center ArcFace, Deng et al. 2020; the paper uses 3): "
        "W has num_classes * K columns and the cosine to a class is the largest of its K; "
        "1 is one centre per class",
        neutral=1,
    )
    sample_rate: float = param(
        1.0,
        low=0.0,
        low_inclusive=False,
        high=1.0,
        doc="r (Partial FC, An et al. 2021): in training, the softmax runs over the batch's "
        "classes plus random others, max(#positives, ceil(r * num_classes)) classes, and only "
        "their columns of W get gradients; evaluation uses every class. 1 is the full loss",
        neutral=1.0,
    )

    def __attrs_post_init__(self) -> None:
        margin = self.resolved_margin
        low, high = MARGIN_RANGES[self.kind]
        if not (low <= margin <= high) or margin != margin:
            raise PluginConfigError(
                f"margin={margin!r} is outside [{low:g}, {high:g}] for kind={self.kind!r} "
                f"(paper value {DEFAULT_MARGINS[self.kind]:g}; neutral value "
                f"{NEUTRAL_MARGINS[self.kind]:g})"
            )
        if self.easy_margin and self.kind != "arcface":
            raise PluginConfigError(
                f"easy_margin=True applies to kind='arcface' only, not kind={self.kind!r}"
            )
        if self.sphere_lambda != 0.0 and self.kind != "sphereface":
            raise PluginConfigError(
                f"sphere_lambda={self.sphere_lambda!r} applies to kind='sphereface' only, "
                f"not kind={self.kind!r}; leave it at 0"
            )

    @property
    def resolved_margin(self) -> float:
        """The margin in use: ``margin``, or the paper's value for ``kind`` when None."""
        return float(DEFAULT_MARGINS[self.kind] if self.margin is None else self.margin)


# --------------------------------------------------------------------- claims (NumPy)
def nearest_class(
    features: Any, class_weights: Any, sub_centers: int = 1, *, return_sub_center: bool = False
) -> Any:
    """Predicted class ids (B,): the class whose nearest sub-centre is closest in angle.

    NumPy. ``features`` (B, D), ``class_weights`` the plugin's W (D, num_classes * K)
    (e.g. ``model.term_state("margin_softmax")["class_weights"]``), K = ``sub_centers``.
    The class of x is argmax_j max_k cos(x, W_jk); with ``return_sub_center=True`` also
    the index k of that class's nearest sub-centre (the dominant one for x).
    """
    cosines = _sub_center_cosines(np.asarray(features), np.asarray(class_weights), sub_centers)
    best = cosines.max(axis=2)
    classes = best.argmax(axis=1)
    if not return_sub_center:
        return classes
    return classes, cosines[np.arange(len(classes)), classes].argmax(axis=1)


def _sub_center_cosines(features: np.ndarray, weights: np.ndarray, sub_centers: int) -> np.ndarray:
    """cos(x_i, W_jk) as (B, num_classes, K), float64, normalised as the plugin does."""
    features = np.asarray(features, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    # the plugin's normalisation: lossplug.numerics.l2_normalize, x / max(||x||, eps)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), L2_EPSILON)
    weights = weights / np.maximum(np.linalg.norm(weights, axis=0, keepdims=True), L2_EPSILON)
    cosines = features @ weights
    return cosines.reshape(len(cosines), -1, sub_centers)


def _normalised_cosines(example: Example) -> np.ndarray:
    """cos(x, class j) = max over its sub-centres, (B, num_classes)."""
    cosines = _sub_center_cosines(
        example.outputs["features"], example.state[WEIGHTS], example.config.sub_centers
    )
    return cosines.max(axis=2)


def normalised_softmax_reference(example: Example) -> np.ndarray:
    """Per-sample cross-entropy of the logits s * cos(x, W_j) (NumPy, float64).

    Over every class, or, when ``sample_rate < 1`` and the example's state holds the
    term's ``sample_seed``, over the classes a training call at step 0 (the
    conformance kit's calls) uses (:func:`lossplug_margin_softmax.sampled_classes`).
    """
    logits = example.config.scale * _normalised_cosines(example)
    labels = np.asarray(example.inputs["y_true"]).reshape(-1).astype(np.int64)
    classes = kit_training_classes(example)
    if classes is not None:
        logits, labels = logits[:, classes], _positions(classes, labels)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return lse - logits[np.arange(len(labels)), labels]


#: the step the conformance kit calls plugins at
KIT_STEP = 0


def kit_training_classes(example: Example) -> np.ndarray | None:
    """The classes (in column order) of a training call at step 0; None: every class.

    None also when ``sample_rate`` is 1, when ceil(r * C) = C (the plugin then computes
    the full loss) or when the example's state has no ``sample_seed``.
    """
    config = example.config
    if config.sample_rate >= 1.0 or SEED not in example.state:
        return None
    if sample_size(config.sample_rate, config.num_classes) >= config.num_classes:
        return None
    labels = np.asarray(example.inputs["y_true"]).reshape(-1)
    seed = int(np.asarray(example.state[SEED]))
    return sampled_classes(labels, config.num_classes, config.sample_rate, seed, KIT_STEP)


def _positions(classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each label's position in ``classes`` (every label is one of them)."""
    where = np.full(int(max(classes.max(), labels.max())) + 1, -1, dtype=np.int64)
    where[classes] = np.arange(len(classes))
    return where[labels.astype(np.int64)]


def _check_sampled_loss_is_the_loss_over_its_classes(example: Example, loss_fn: Any) -> None:
    """With sample_rate < 1, each sample's loss (training, step 0) is the full loss of a
    problem whose classes are the sampled ones: W restricted to their columns, labels
    remapped to their positions (every label is in the sample)."""
    classes = kit_training_classes(example)
    if classes is None:
        return  # every class is used
    config = example.config
    labels = np.asarray(example.inputs["y_true"])
    flat = labels.reshape(-1)
    assert np.all(np.isin(flat, classes)), (
        f"the sample {classes.tolist()} misses labels {sorted(set(flat) - set(classes))}"
    )
    got = np.asarray(loss_fn(example), dtype=np.float64)
    if len(classes) == 1:  # one class: logsumexp of the target logit minus itself
        np.testing.assert_allclose(got, 0.0, atol=1e-5)
        return
    k = config.sub_centers
    columns = (classes[:, None] * k + np.arange(k)[None, :]).reshape(-1)
    restricted = example.replace(
        inputs={**example.inputs, "y_true": _positions(classes, flat).astype(labels.dtype)},
        config=attrs.evolve(config, num_classes=len(classes), sample_rate=1.0),
        state={WEIGHTS: np.asarray(example.state[WEIGHTS])[:, columns]},
    )
    expected = np.asarray(loss_fn(restricted), dtype=np.float64)
    bad = np.abs(got - expected) > 1e-4 * (1.0 + np.abs(expected))
    assert not np.any(bad), (
        f"sample_rate={config.sample_rate}: the sampled losses {got[bad].tolist()} differ from "
        f"the full loss over the sampled classes {classes.tolist()}: {expected[bad].tolist()}"
    )


def _check_monotone_in_margin(example: Example, loss_fn: Any) -> None:
    """The loss does not decrease when the margin grows (phi(c) decreases in m)."""
    config = example.config
    low, high = MARGIN_RANGES[config.kind]
    previous = None
    for margin in np.linspace(low, high, 5):
        value = np.asarray(
            loss_fn(example.replace(config=attrs.evolve(config, margin=float(margin)))),
            dtype=np.float64,
        )
        if previous is not None:
            slack = 1e-4 * (1.0 + np.abs(previous))
            assert np.all(value >= previous - slack), (
                f"margin_softmax ({config.kind}) decreased when the margin grew to {margin:.3f}: "
                f"{previous} -> {value}"
            )
        previous = value


def _check_sub_centers_are_the_nearest_ones(example: Example, loss_fn: Any) -> None:
    """With K sub-centres, each sample's loss is the one-centre (K = 1) loss with, for each
    class, the sub-centre nearest to that sample as the class weight."""
    config = example.config
    sub_centers = config.sub_centers
    features = np.asarray(example.outputs["features"])
    weights = np.asarray(example.state[WEIGHTS])
    labels = np.asarray(example.inputs["y_true"])
    got = np.asarray(loss_fn(example), dtype=np.float64)
    nearest = _sub_center_cosines(features, weights, sub_centers).argmax(axis=2)  # (B, C)
    single = attrs.evolve(config, sub_centers=1)
    classes = np.arange(config.num_classes)
    for i in range(len(features)):
        columns = classes * sub_centers + nearest[i]
        one = example.replace(
            inputs={**example.inputs, "y_true": labels[i : i + 1]},
            outputs={**example.outputs, "features": features[i : i + 1]},
            config=single,
            state={**example.state, WEIGHTS: weights[:, columns]},
        )
        expected = float(np.asarray(loss_fn(one), dtype=np.float64)[0])
        assert abs(got[i] - expected) <= 1e-4 * (1.0 + abs(expected)), (
            f"margin_softmax with sub_centers={sub_centers}: sample {i} has loss {got[i]!r}, "
            f"but the sub_centers=1 loss with its nearest sub-centres is {expected!r}"
        )


def _at_neutral(kind: str) -> dict[str, Any]:
    at: dict[str, Any] = {"kind": kind, "margin": NEUTRAL_MARGINS[kind]}
    if kind != "arcface":
        at["easy_margin"] = False
    if kind != "sphereface":
        at["sphere_lambda"] = 0.0
    return at


SPEC = PluginSpec(
    name="margin_softmax",
    description="Angular-margin softmax (ArcFace, CosFace, SphereFace), trainable class weights.",
    config=Config,
    tensors=(
        TensorSpec(
            "features",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="embeddings compared with the class weights",
        ),
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            classes="num_classes",
            description="integer class ids in [0, num_classes)",
        ),
    ),
    properties=(
        NonNegative(),
        *(
            ReducesTo(
                f"normalised-softmax cross-entropy at scale s ({kind}, neutral margin)",
                reference=normalised_softmax_reference,
                at=_at_neutral(kind),
                rtol=1e-4,
                atol=1e-4,
            )
            for kind in KINDS
        ),
        Custom(
            "monotone_in_margin",
            check=_check_monotone_in_margin,
            description="the loss is non-decreasing in the margin, for every kind",
        ),
        Custom(
            "sub_centers_are_the_nearest_ones",
            check=_check_sub_centers_are_the_nearest_ones,
            description="with K sub-centres each sample's loss is the K = 1 loss with, per "
            "class, its nearest sub-centre",
            # one sample alone has other positives, hence another sample of classes
            at={"sample_rate": 1.0},
        ),
        Custom(
            "sampled_loss_is_the_loss_over_its_classes",
            check=_check_sampled_loss_is_the_loss_over_its_classes,
            description="with sample_rate < 1 the training loss is the full loss over the "
            "sampled classes (the batch's labels among them, remapped)",
        ),
    ),
    # with sample_rate < 1 a training step's classes are the batch's labels plus random
    # others: one sample's loss depends on the others' labels (1 and evaluation: it does not)
    batch_coupled=True,
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Create (first call) or fetch W and compute the per-sample loss."""
    from keras import ops

    config: Config = extras.config
    features = outputs["features"]
    labels = inputs["y_true"]
    if len(features.shape) != 2 or features.shape[-1] is None:
        raise lossplug.InvalidTensorError(
            f"loss plugin 'margin_softmax' needs features of shape (batch, dim) with a known dim, "
            f"got shape {tuple(features.shape)}; flatten or pool them, or bind another layer"
        )
    if len(labels.shape) == 2 and labels.shape[-1] not in (1, None):
        raise lossplug.InvalidTensorError(
            f"loss plugin 'margin_softmax' needs sparse integer labels of shape (batch,), got "
            f"shape {tuple(labels.shape)} (one-hot?); pass class ids (e.g. argmax of one-hot)"
        )
    columns = config.num_classes * config.sub_centers
    weights = extras.state.variable(
        WEIGHTS, (int(features.shape[-1]), columns), initializer="glorot_uniform"
    )
    seed = _sample_seed(extras.state) if config.sample_rate < 1.0 else None
    flat = lossplug.numerics.class_ids(
        ops.reshape(labels, (-1,)), config.num_classes, plugin="margin_softmax", field="num_classes"
    )
    samples = sample_size(config.sample_rate, config.num_classes) < config.num_classes
    if seed is not None and extras.training and samples:
        loss = sampled_margin_softmax_loss(features, flat, weights, config, seed, extras.step)
    else:  # sample_rate 1, ceil(r * C) = C, evaluation, prediction and the probe
        loss = margin_softmax_loss(features, flat, weights, config)
    return LossResult(loss=loss)


def _sample_seed(state: Any) -> Any:
    """The term's seed of the sampled classes, an integer in [0, 2^24): drawn once from
    Python's ``random`` (which ``keras.utils.set_random_seed`` seeds), then saved and
    restored with the model; never updated.

    float32, not int32: the state store gives non-trainable variables the aggregation
    "mean", which ``tf.distribute`` refuses for integer variables.
    """
    initial = 0 if SEED in state else random.getrandbits(SEED_BITS)
    return state.variable(
        SEED, (), initializer=keras.initializers.Constant(initial), trainable=False
    )

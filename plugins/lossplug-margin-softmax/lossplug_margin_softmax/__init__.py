"""lossplug plugin ``margin_softmax``: ArcFace, CosFace and SphereFace in one plugin.

The plugin owns trainable class weights W of shape (dim, num_classes)
(created with ``extras.state``, trained by the model's optimizer and saved
with it). For a feature x with class y:

    c_j = <x / ||x||, W_j / ||W_j||>             cosine to every class j
    z_j = s * c_j                    (j != y)
    z_y = s * phi(c_y)                            margin on the target class only
    loss = logsumexp_j z_j - z_y                  softmax cross-entropy, >= 0

with ``kind`` choosing phi (see :mod:`lossplug_margin_softmax.margins`):
ArcFace cos(theta + m), CosFace cos(theta) - m, SphereFace psi(m theta).
At the neutral margin (m = 0; m = 1 for SphereFace) phi(c) = c and the loss
is the normalised-softmax cross-entropy with scale s.

Stability: features and weights are normalised in float32 (also under a
float16 / bfloat16 policy; float64 stays float64). The target angle is never
taken as arccos(c): the target cosine c and sine s = ||u - c w|| are computed
per sample from the unit vectors and theta = atan2(s, c), which is accurate
near 0 and pi and has finite derivatives everywhere (so no clipping of c away
from +-1 is needed, and none can bias the loss); the margin enters only as the
difference s * (phi - c_y) added to the target logit, and the cross-entropy
is a log-sum-exp. Memory: one (batch, num_classes) cosine matrix and the
logits (no one-hot matrix, no per-class angles).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
import numpy as np
from lossplug import Kind, LossResult, PluginConfigError, PluginSpec, TensorSpec, param
from lossplug.properties import Custom, Example, NonNegative, ReducesTo

from .margins import (
    DEFAULT_MARGINS,
    KINDS,
    MARGIN_RANGES,
    NEUTRAL_MARGINS,
)

__all__ = [
    "Config",
    "build_loss_graph",
    "lossplug_spec",
    "margin_softmax_loss",
    "normalised_softmax_reference",
]

WEIGHTS = "class_weights"


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
def _normalised_cosines(example: Example) -> np.ndarray:
    features = np.asarray(example.outputs["features"], dtype=np.float64)
    weights = np.asarray(example.state[WEIGHTS], dtype=np.float64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-6)
    weights = weights / np.maximum(np.linalg.norm(weights, axis=0, keepdims=True), 1e-6)
    return features @ weights


def normalised_softmax_reference(example: Example) -> np.ndarray:
    """Per-sample cross-entropy of the logits s * cos(x, W_j) (NumPy, float64)."""
    logits = example.config.scale * _normalised_cosines(example)
    labels = np.asarray(example.inputs["y_true"]).reshape(-1).astype(np.int64)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return lse - logits[np.arange(len(labels)), labels]


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
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


def margin_softmax_loss(features: Any, labels: Any, weights: Any, config: Config) -> Any:
    """Per-sample angular-margin softmax loss (B,) for features (B, D), labels (B,), W (D, C)."""
    import keras
    import tensorflow as tf
    from keras import ops

    from .margins import TINY, cosine_and_sine, target_logit

    dtype = "float64" if keras.backend.standardize_dtype(features.dtype) == "float64" else "float32"
    x = ops.cast(features, dtype)
    w = ops.cast(weights, dtype)
    x = x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=1, keepdims=True), TINY))
    w = w * ops.rsqrt(ops.maximum(ops.sum(ops.square(w), axis=0, keepdims=True), TINY))
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    cosine = ops.matmul(x, w)  # (B, C): the only (batch, classes) matrix besides the logits
    # The target class, per sample and accurately: its unit weight, cosine and sine.
    target_weights = ops.transpose(ops.take(w, labels, axis=1))  # (B, D)
    cos_y, sin_y = cosine_and_sine(x, target_weights)
    phi = target_logit(
        cos_y,
        sin_y,
        config.kind,
        config.resolved_margin,
        easy_margin=config.easy_margin,
        sphere_lambda=config.sphere_lambda,
    )
    scale = config.scale
    rows = ops.arange(ops.shape(labels)[0], dtype="int32")
    logits = tf.tensor_scatter_nd_add(
        scale * cosine, ops.stack([rows, labels], axis=1), scale * (phi - cos_y)
    )
    target = ops.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return ops.logsumexp(logits, axis=1) - target


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Create (first call) or fetch W and compute the per-sample loss."""
    import tensorflow as tf

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
    weights = extras.state.variable(
        WEIGHTS, (int(features.shape[-1]), config.num_classes), initializer="glorot_uniform"
    )
    flat = tf.reshape(labels, (-1,))
    checks = [
        tf.debugging.assert_greater_equal(
            tf.cast(flat, tf.int64),
            tf.constant(0, tf.int64),
            message="margin_softmax: y_true holds a negative class id",
        ),
        tf.debugging.assert_less(
            tf.cast(flat, tf.int64),
            tf.constant(config.num_classes, tf.int64),
            message=f"margin_softmax: y_true holds a class id >= num_classes={config.num_classes}; "
            "set num_classes to the number of classes",
        ),
    ]
    with tf.control_dependencies(checks):
        flat = tf.identity(flat)
    return LossResult(loss=margin_softmax_loss(features, flat, weights, config))

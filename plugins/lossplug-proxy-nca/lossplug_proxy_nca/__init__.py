"""lossplug plugin ``proxy_nca``: Proxy-NCA with one trainable proxy per class.

Movshovitz-Attias et al. (2017), "No Fuss Distance Metric Learning using
Proxies" (ICCV). The plugin owns the proxies P, a (num_classes, D) variable
created with ``extras.state`` (trained by the model's optimizer, saved with the
model). With x^ and p^ the L2-normalised embedding and proxies and
d(x, p) = ||x^ - p^||^2, per sample:

    loss_i = -log( exp(-s d(x_i, p_{y_i})) / sum_{c in Z} exp(-s d(x_i, p_c)) )

where Z is every proxy (``denominator="all"``: a softmax cross-entropy over the
proxies, as in pytorch-metric-learning and ProxyNCA++) or every proxy but the
sample's own (``"negatives"``: the paper's eq. 6). s is the softmax scale
(1 / temperature). The loss depends only on the directions of the embeddings
(scale invariant) and is per sample (not batch-coupled: each sample meets
every proxy, not the other samples).

Metric ``proxy_accuracy``: the fraction of the batch whose nearest proxy (by
cosine) is their own class's.
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import Kind, LossResult, PluginSpec, TensorSpec
from lossplug.properties import Custom, NonNegative, ReducesTo, ScaleInvariant

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "proxy_nca"
STATE = claims.STATE
DENOMINATORS = ("all", "negatives")
#: proxies start as standard-normal vectors (pytorch-metric-learning's torch.randn)
PROXY_INIT_STDDEV = 1.0


@attrs.frozen
class Config:
    """Hyper-parameters of ``proxy_nca``."""

    num_classes: int = lossplug.param(
        10, low=2, kind=int, doc="number of classes, i.e. of proxies; labels lie in [0, C)"
    )
    scale: float = lossplug.param(
        9.0,
        low=0.0,
        low_inclusive=False,
        doc="softmax scale s on the negative squared distances (1 / temperature; "
        "ProxyNCA++'s temperature 1/9 is s = 9)",
    )
    denominator: str = lossplug.param(
        "all",
        choices=DENOMINATORS,
        doc="'all': softmax over every proxy (>= 0); 'negatives': the paper's eq. 6, "
        "the positive proxy left out of the denominator",
    )


SPEC = PluginSpec(
    name=NAME,
    description="Proxy-NCA: NCA over one trainable proxy per class, normalised embeddings.",
    config=Config,
    tensors=(
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            classes="num_classes",
            description="class ids in [0, num_classes)",
        ),
        TensorSpec(
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="embeddings (B, D), e.g. the model's output layer named 'embeddings'",
        ),
    ),
    properties=(
        NonNegative(at={"denominator": "all"}),
        ReducesTo(
            "the paper's Proxy-NCA, eq. 6 (NumPy reference, explicit squared distances of the "
            "normalised vectors)",
            reference=claims.proxy_nca_reference,
            at={"denominator": "negatives"},
            atol=1e-4,
        ),
        ReducesTo(
            "softmax cross-entropy over -s ||x^ - p^_c||^2 (pytorch-metric-learning's "
            "ProxyNCALoss, ProxyNCA++; NumPy reference)",
            reference=claims.proxy_nca_reference,
            at={"denominator": "all"},
            atol=1e-4,
        ),
        ScaleInvariant("embeddings", low=0.1, high=10.0),
        Custom(
            "bounded",
            check=claims.check_bounded,
            description="log(1 + (C-1) e^(-4s)) <= loss <= log(1 + (C-1) e^(4s)) ('all'; "
            "'negatives': log(C-1) -+ 4s), the lower end reached with the own proxy at v, "
            "the others at -v",
        ),
    ),
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """Per-sample Proxy-NCA loss; creates the proxies on every call (the first creates them)."""
    import keras
    from lossplug.numerics import class_ids
    from lossplug.pairs import embeddings_and_labels, safe_divide

    from .loss import proxy_nca_loss

    config: Config = extras.config
    embeddings, labels, _ = embeddings_and_labels(
        outputs["embeddings"], inputs["y_true"], plugin=NAME
    )
    if embeddings.shape[-1] is None:
        raise lossplug.InvalidTensorError(
            f"loss plugin {NAME!r} needs embeddings with a known dimension, got shape "
            f"{tuple(embeddings.shape)}"
        )
    proxies = extras.state.variable(
        STATE,
        (config.num_classes, int(embeddings.shape[-1])),
        initializer=keras.initializers.RandomNormal(stddev=PROXY_INIT_STDDEV),
    )
    labels = class_ids(labels, config.num_classes, plugin=NAME, field="num_classes")
    loss, nearest = proxy_nca_loss(
        embeddings, labels, proxies, scale=float(config.scale), denominator=config.denominator
    )
    accuracy = safe_divide(keras.ops.sum(nearest), keras.ops.shape(nearest)[0])
    return LossResult(loss=loss, metrics={"proxy_accuracy": accuracy})

"""lossplug plugin ``cross_batch_memory``: pair losses against a memory of earlier batches.

Wang, Zhang, Huang & Scott (2020), "Cross-Batch Memory for Embedding Learning"
(XBM, CVPR). Embeddings drift slowly during training, so the embeddings of the
last few batches are good stand-ins for what the model would compute for those
samples now. The plugin keeps the last M = ``memory_size`` embeddings and labels
in a ring buffer (non-trainable plugin state, saved with the model) and scores
each anchor x_a of the current batch (with gradient) against the references

    R = the current batch  u  the filled memory slots (without gradient)

with a pair loss (:mod:`lossplug_cross_batch_memory.loss`):

``form="contrastive"`` (default)
    Hadsell et al.'s contrastive loss with margins, as the ``contrastive`` plugin:
    l_aj = h(d_aj - m_pos) for positives, h(m_neg - d_aj) for negatives,
    h(t) = 1/2 max(0, t)^2 (``squared``) or max(0, t), averaged over the pairs
    (``average="valid"``) or over those with a loss (``"active"``).
``form="triplet"``
    the hinge max(0, m + d_ap - d_an) over triplets mined from the anchors
    against R (``mining``: batch-all, batch-hard or semi-hard, the core's
    :mod:`lossplug.mining`), averaged over valid or active triplets.

A batch sample is never its own positive; the memory holds earlier steps only
(the batch is written after its own step), so no anchor meets its copy from the
same step (a memory larger than an epoch holds older embeddings of the same
samples, which count as positives, as in the paper).

Each training step enqueues the (global) batch's embeddings and labels through
``extras.state.update`` (the core applies it after the optimizer, only for an
applied step, never in ``evaluate``/``predict``); see
:mod:`lossplug_cross_batch_memory.memory` for the ring buffer. The memory is filled
from the first step, and used in the loss once ``warmup_steps`` steps have been
enqueued: before that the loss is the in-batch loss.

The spec declares ``batch_coupled=True`` and ``returns="scalar"``. Metrics:
``active_fraction`` (pairs or triplets with a positive loss among those scored)
and ``memory_rows`` (memory slots used as references in the step, 0 during the
warm-up).
"""

from __future__ import annotations

from typing import Any

import attrs
import lossplug
from lossplug import (
    InvalidTensorError,
    Kind,
    LossResult,
    PluginConfigError,
    PluginSpec,
    TensorSpec,
    param,
)
from lossplug.mining import AVERAGES, STRATEGIES
from lossplug.pairs import METRICS
from lossplug.properties import Custom, NonNegative, ZeroAtPerfect

from . import claims

__all__ = ["Config", "build_loss_graph", "lossplug_spec"]

NAME = "cross_batch_memory"
FORMS = ("contrastive", "triplet")
#: slots are counted in float32, exact below 2**24
MAX_MEMORY_SIZE = 2**24


@attrs.frozen
class Config:
    """Hyper-parameters of ``cross_batch_memory``."""

    form: str = param(
        "contrastive",
        choices=FORMS,
        doc="the pair loss: contrastive pairs (pos_margin, neg_margin, squared) or mined "
        "triplets (margin, mining)",
    )
    memory_size: int = param(
        1024, low=1, kind=int, doc="M: how many embeddings of earlier steps the memory keeps"
    )
    warmup_steps: int = param(
        0,
        low=0,
        kind=int,
        doc="N: the memory is filled from the first step but used in the loss only once N "
        "training steps have been enqueued (the paper warms up for about 1k iterations)",
    )
    metric: str = param(
        "euclidean",
        choices=METRICS,
        doc="distance d: ||x - y||, ||x - y||^2, or 1 - cos(x, y)",
    )
    pos_margin: float = param(
        0.0, low=0.0, doc="form='contrastive': m_pos, positives cost h(d - m_pos)"
    )
    neg_margin: float = param(
        1.0, low=0.0, doc="form='contrastive': m_neg, negatives cost h(m_neg - d)"
    )
    squared: bool = param(
        True, doc="form='contrastive': h(t) = 1/2 max(0, t)^2 (Hadsell et al.); False: max(0, t)"
    )
    margin: float = param(1.0, low=0.0, doc="form='triplet': m in max(0, m + d(a, p) - d(a, n))")
    mining: str = param(
        "batch_all",
        choices=STRATEGIES,
        doc="form='triplet': every valid triplet, the hardest per anchor, or semi-hard "
        "negatives per positive pair, over batch + memory",
    )
    average: str = param(
        "valid",
        choices=AVERAGES,
        doc="the mean over all scored pairs / triplets ('valid') or over those with a "
        "positive loss ('active')",
    )

    def __attrs_post_init__(self) -> None:
        if self.memory_size >= MAX_MEMORY_SIZE:
            raise PluginConfigError(
                f"memory_size={self.memory_size!r}: the write position is kept in a float32 "
                f"variable, exact below 2**24; use a memory_size below {MAX_MEMORY_SIZE}"
            )
        if self.metric != "cosine":
            return
        if self.form == "contrastive":
            for field in ("pos_margin", "neg_margin"):
                value = getattr(self, field)
                if value > 2.0:
                    raise PluginConfigError(
                        f"{field}={value!r} with metric='cosine': cosine distances lie in "
                        "[0, 2], so a margin above 2 means nothing (or can never be met); use "
                        "a margin in [0, 2]"
                    )
        elif self.margin >= 2.0:
            raise PluginConfigError(
                f"margin={self.margin!r} with form='triplet' and metric='cosine': cosine "
                "distances lie in [0, 2], so a margin >= 2 can never be met; use a margin "
                "below 2 (typically 0.1 to 0.5)"
            )


SPEC = PluginSpec(
    name=NAME,
    description="Cross-batch memory (XBM, Wang et al. 2020): contrastive or triplet loss "
    "against the batch and the last M embeddings.",
    config=Config,
    tensors=(
        TensorSpec(
            "embeddings",
            Kind.EMBEDDINGS,
            source="outputs",
            shape=("B", "D"),
            description="the embeddings (model output, or an exposed layer bound here)",
        ),
        TensorSpec(
            "y_true",
            Kind.SPARSE_LABELS,
            source="inputs",
            shape=("B",),
            classes="C",
            description="integer identity labels of the embeddings (stored as float32 in "
            "the memory: exact for |id| < 2**24)",
        ),
    ),
    properties=(
        NonNegative(),
        ZeroAtPerfect(
            perfect=claims.perfect,
            description="every class at its own point, the points farther apart than any "
            "margin (empty memory)",
            at={"metric": "euclidean"},
        ),
        Custom(
            "warmup_ignores_memory",
            check=claims.check_warmup_ignores_memory,
            description="before warmup_steps steps a full memory does not change the loss",
            at={"warmup_steps": 3},
        ),
        Custom(
            "unfilled_slots_ignored",
            check=claims.check_unfilled_slots_ignored,
            description="the contents of the memory slots not filled yet do not change the loss",
        ),
        Custom(
            "memory_order_invariance",
            check=claims.check_memory_order_invariance,
            description="permuting the filled memory slots (with their labels) leaves the "
            "loss unchanged",
        ),
    ),
    batch_coupled=True,
    returns="scalar",
)


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return SPEC


@lossplug.hookimpl
def build_loss_graph(inputs: Any, outputs: Any, extras: Any) -> LossResult:
    """The loss of the batch against batch + memory; in training also enqueue the batch."""
    from keras import ops
    from lossplug.pairs import embeddings_and_labels

    from . import memory
    from .loss import cross_batch_loss

    config: Config = extras.config
    embeddings, labels, weights = embeddings_and_labels(
        outputs["embeddings"], inputs["y_true"], plugin=NAME, weights=extras.sample_weight
    )
    dim = embeddings.shape[-1]
    if dim is None:
        raise InvalidTensorError(
            f"loss plugin {NAME!r} needs embeddings with a known size (batch, dim), got shape "
            f"{tuple(embeddings.shape)}; the memory is a (memory_size, dim) variable"
        )
    state = memory.read(memory.variables(extras.state, config.memory_size, int(dim)))
    replicated = extras.num_replicas > 1
    if extras.training:
        # Every replica writes the same rows: the global batch, in replica order.
        gather = extras.all_gather if replicated else _identity
        new = memory.enqueue(state, gather(embeddings), gather(labels), config.warmup_steps)
        memory.request_update(extras.state, new)
    if replicated and extras.global_batch:
        embeddings, labels = extras.all_gather(embeddings), extras.all_gather(labels)
        weights = None if weights is None else extras.all_gather(weights)
    valid = memory.in_use(state, config.warmup_steps)
    loss, active_fraction = cross_batch_loss(
        embeddings, labels, state.memory, state.labels, valid, config, weights
    )
    rows = ops.sum(ops.cast(valid, "float32"))
    return LossResult(loss=loss, metrics={"active_fraction": active_fraction, "memory_rows": rows})


def _identity(value: Any) -> Any:
    return value

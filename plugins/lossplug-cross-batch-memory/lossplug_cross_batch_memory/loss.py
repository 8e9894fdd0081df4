"""The pair losses of the current batch against the batch and the memory, in ``keras.ops``.

Anchors are the B embeddings x_a of the batch (with gradient); references are
the batch itself and the filled memory slots in use, r_j (memory rows carry no
gradient: ``stop_gradient``). With labels y, the distance d_aj = d(x_a, r_j)
(:func:`lossplug.pairs.pairwise_distances`) and the anchors' sample weights w_a:

    P(a) = {j : y_j = y_a, j != a}     positives (a batch sample is not its own)
    N(a) = {j : y_j != y_a}            negatives

``form="contrastive"`` (Hadsell et al. 2006, as the ``contrastive`` plugin):

    l_aj = h(d_aj - m_pos) for j in P(a),   h(m_neg - d_aj) for j in N(a)
    h(t) = 1/2 max(0, t)^2 (squared=True) or max(0, t)
    L = sum_a sum_{j in P(a) u N(a)} w_a l_aj / sum_a sum_{j counted} w_a

counted: every pair (``average="valid"``) or those with l_aj > 0 (``"active"``).

``form="triplet"``: the hinge h(a, p, n) = max(0, m + d_ap - d_an) over the
triplets with p in P(a), n in N(a), mined from the (B, B + M) distance matrix by
:func:`lossplug.mining.mine` (``batch_all``, ``batch_hard``, ``semi_hard``; see
that module for the averages).

Without a memory in use (warm-up, or an empty memory) the references are the
batch alone and both forms equal the in-batch ``contrastive`` and ``triplet``
losses. The batch block of the distances is computed exactly as those plugins
do (zero diagonal); the memory block with ``valid=`` so that unfilled slots
enter neither the distances' centring nor the refined nearest entries, and the
label masks drop them (``lossplug.pairs.label_masks(..., valid=...)``).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import mining, pairs


def hinge(t: Any, squared: bool) -> Any:
    """h(t): 1/2 max(0, t)^2 or max(0, t)."""
    positive = ops.relu(t)
    return 0.5 * ops.square(positive) if squared else positive


def reference_masks(labels: Any, memory_labels: Any, valid: Any) -> tuple[Any, Any]:
    """Positive and negative masks (B, B + M) of the anchors against batch and memory."""
    pos_batch, neg_batch = pairs.label_masks(labels)
    pos_memory, neg_memory = pairs.label_masks(labels, memory_labels, valid=valid)
    return (
        ops.concatenate([pos_batch, pos_memory], axis=1),
        ops.concatenate([neg_batch, neg_memory], axis=1),
    )


def reference_distances(
    embeddings: Any, memory: Any, valid: Any, metric: str, *, exact_neighbours: int | None = None
) -> Any:
    """d(x_a, r_j), shape (B, B + M): the batch block (zero diagonal), then the memory block."""
    kwargs = {} if exact_neighbours is None else {"exact_neighbours": exact_neighbours}
    batch = pairs.pairwise_distances(embeddings, metric=metric, **kwargs)
    stored = pairs.pairwise_distances(embeddings, memory, metric=metric, valid=valid, **kwargs)
    return ops.concatenate([batch, stored], axis=1)


def contrastive(
    embeddings: Any, labels: Any, memory: Any, memory_labels: Any, valid: Any, config: Any,
    weights: Any = None,
) -> tuple[Any, Any]:  # fmt: skip
    """(L, active fraction) of the contrastive form (module docstring)."""
    distances = reference_distances(embeddings, memory, valid, config.metric)
    positive, negative = reference_masks(labels, memory_labels, valid)
    losses = ops.where(
        positive,
        hinge(distances - config.pos_margin, config.squared),
        ops.where(negative, hinge(config.neg_margin - distances, config.squared), 0.0),
    )
    counted = ops.logical_or(positive, negative)
    active = ops.logical_and(counted, losses > 0.0)
    if weights is None:
        weights = ops.ones_like(distances[:, 0])
    w = ops.broadcast_to(weights[:, None], ops.shape(distances))
    denominator = pairs.masked_sum(w, active if config.average == "active" else counted, axis=None)
    loss = pairs.safe_divide(ops.sum(w * losses), denominator)
    dtype = distances.dtype
    fraction = pairs.safe_divide(
        ops.sum(ops.cast(active, dtype)), ops.sum(ops.cast(counted, dtype))
    )
    return loss, fraction


def triplet(
    embeddings: Any, labels: Any, memory: Any, memory_labels: Any, valid: Any, config: Any,
    weights: Any = None,
) -> tuple[Any, Any]:  # fmt: skip
    """(L, active fraction) of the triplet form (module docstring).

    ``batch_hard`` ranks on the fast float32 matrix (squared Gram distances, or
    cosine) and recomputes the 2B selected distances from the rows
    (:func:`lossplug.pairs.gathered_distances`), as the ``triplet`` plugin does.
    """
    positive, negative = reference_masks(labels, memory_labels, valid)
    if config.mining == "batch_hard":
        ranking_metric = "cosine" if config.metric == "cosine" else "squared_euclidean"
        ranking = reference_distances(embeddings, memory, valid, ranking_metric, exact_neighbours=0)
        references = ops.concatenate([embeddings, memory], axis=0)

        def recompute(rows: Any, cols: Any) -> Any:
            return pairs.gathered_distances(embeddings, references, rows, cols, config.metric)

        result = mining.batch_hard(
            ranking,
            positive,
            negative,
            margin=config.margin,
            average=config.average,
            weights=weights,
            recompute=recompute,
        )
    else:
        distances = reference_distances(embeddings, memory, valid, config.metric)
        result = mining.mine(
            distances,
            positive,
            negative,
            margin=config.margin,
            strategy=config.mining,
            average=config.average,
            weights=weights,
        )
    return result.loss, result.active_fraction


def cross_batch_loss(
    embeddings: Any,
    labels: Any,
    memory: Any,
    memory_labels: Any,
    valid: Any,
    config: Any,
    weights: Any = None,
) -> tuple[Any, Any]:
    """(L, active fraction) of ``config.form`` for anchors ``embeddings`` (B, D), labels (B,).

    ``memory`` (M, D) and ``memory_labels`` (M,) are the stored references and
    ``valid`` (M,) says which of them are in use. The memory is read without
    gradient here, whatever the caller passes; embeddings are computed in their
    compute dtype (float32, float64 for float64 inputs) and the memory with them.
    """
    memory = ops.stop_gradient(ops.cast(memory, embeddings.dtype))
    memory_labels = ops.stop_gradient(memory_labels)
    valid = ops.cast(valid, "bool")
    form = contrastive if config.form == "contrastive" else triplet
    return form(embeddings, labels, memory, memory_labels, valid, config, weights)

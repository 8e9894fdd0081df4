"""Supervised contrastive loss (Khosla et al. 2020), L_out form, in ``keras.ops`` (lazy).

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu & Krishnan 2020, "Supervised
contrastive learning", eq. 2. For B embeddings z_i with labels y_i, cosine similarities
s_ij, A(i) = {a != i} and P(i) = {p in A(i) : y_p = y_i}:

    l_i = -(tau / tau_b) mean_{p in P(i)} log( exp(s_ip / tau) / sum_{a in A(i)} exp(s_ia / tau) )
        = (tau / tau_b) ( logsumexp_{a in A(i)}(s_ia / tau) - mean_{p in P(i)} s_ip / tau )

(the sum over positives outside the log), with tau_b the base temperature of the
paper's code. An anchor without positives (|P(i)| = 0, a label seen once in the batch)
has l_i = 0 and still counts in the mean, as in the paper's code. The loss is the mean
of l_i over the anchors, or sum_i w_i l_i / sum_i w_i with sample weights. Multi-view
batches are rows of the same batch: both views of a sample carry its label.
Memory O(B^2).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug.numerics import compute_dtype
from lossplug.pairs import (
    embeddings_and_labels,
    label_masks,
    masked_logsumexp,
    masked_max,
    masked_mean,
    pairwise_similarities,
    safe_divide,
)

PLUGIN = "supcon"


def supcon_terms(
    embeddings: Any, labels: Any, *, temperature: float, base_temperature: float
) -> tuple[Any, Any]:
    """Per-anchor losses l_i (B,) and the number of positives of each anchor (B,)."""
    embeddings = ops.cast(embeddings, compute_dtype(embeddings))
    logits = pairwise_similarities(embeddings, kind="cosine") / temperature
    positives, _ = label_masks(labels)
    others = ops.logical_not(ops.eye(ops.shape(logits)[0], dtype="bool"))
    # Shift each row by its largest other logit (a constant for the gradient: the loss is
    # shift invariant), so that log-sum-exp and mean are both taken of values <= 0 and
    # their difference does not cancel at the scale 1 / tau of the logits.
    shifted = logits - ops.stop_gradient(masked_max(logits, others))[:, None]
    normaliser, _ = masked_logsumexp(shifted, others)
    mean_positive, count = masked_mean(shifted, positives)
    scale = temperature / base_temperature
    losses = ops.where(count > 0, scale * (normaliser - mean_positive), 0.0)
    return losses, count


def supcon_loss(
    embeddings: Any,
    labels: Any,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    sample_weight: Any = None,
) -> tuple[Any, Any]:
    """The supervised contrastive loss of a batch (scalar) and the fraction of anchors
    that have at least one positive (scalar)."""
    embeddings, labels, weights = embeddings_and_labels(
        embeddings, labels, plugin=PLUGIN, weights=sample_weight
    )
    losses, count = supcon_terms(
        embeddings, labels, temperature=temperature, base_temperature=base_temperature
    )
    weights = ops.ones_like(losses) if weights is None else weights
    with_positives = ops.mean(ops.cast(count > 0, "float32"))
    return safe_divide(ops.sum(weights * losses), ops.sum(weights)), with_positives

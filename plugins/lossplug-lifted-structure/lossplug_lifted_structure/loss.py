"""The smooth lifted structured loss in ``keras.ops`` (imported lazily by the plugin).

Oh Song, Xiang, Jegelka & Savarese (2016), "Deep Metric Learning via Lifted
Structured Feature Embedding" (CVPR), eq. 4. With D_ij the distance between
embeddings i and j, alpha the margin, P the positive pairs and N_i the
negatives of sample i:

    J_ij = log( sum_{k in N_i} exp(alpha - D_ik) + sum_{l in N_j} exp(alpha - D_jl) ) + D_ij
    L    = 1 / (2 |P|) sum_{(i, j) in P} max(0, J_ij)^2

computed as N_i's log-sum-exp L_i = log sum_{k in N_i} exp(alpha - D_ik) per
sample (:func:`lossplug.pairs.masked_logsumexp`: exact and stable) and, per
positive pair, J_ij = logaddexp(L_i, L_j) + D_ij: O(B^2) memory, nothing of
size B^3. Over ordered pairs (each unordered pair twice), with the anchors'
sample weights w_i:

    L = 1/2 sum_{i != j, y_i = y_j} w_i max(0, J_ij)^2 / sum_{i != j, y_i = y_j} w_i

which is the paper's L for equal weights. Without positive pairs, or without
negatives (a single class), L is exactly 0 with zero gradients.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import pairs
from lossplug.numerics import logaddexp

PLUGIN = "lifted_structure"


def pair_objectives(distances: Any, positive: Any, negative: Any, margin: float) -> tuple[Any, Any]:
    """(J_ij for every pair, the scored pairs: positive pairs whose samples have negatives)."""
    lse, has_negatives = pairs.masked_logsumexp(margin - distances, negative)
    joint = logaddexp(lse[:, None], lse[None, :]) + distances
    scored = ops.logical_and(
        positive, ops.logical_and(has_negatives[:, None], has_negatives[None, :])
    )
    return ops.where(scored, joint, 0.0), scored


def lifted_structure_loss(
    embeddings: Any, labels: Any, config: Any, weights: Any = None
) -> tuple[Any, dict[str, Any]]:
    """(L, {"active_fraction": ...}) for (B, D) embeddings and (B,) labels (module docstring)."""
    embeddings, labels, weights = pairs.embeddings_and_labels(
        embeddings, labels, plugin=PLUGIN, weights=weights
    )
    distances = pairs.pairwise_distances(embeddings, metric=config.metric)
    positive, negative = pairs.label_masks(labels)
    joint, scored = pair_objectives(distances, positive, negative, config.margin)
    hinge = ops.where(scored, ops.relu(joint), 0.0)
    if weights is None:
        weights = ops.ones_like(distances[:, 0])
    w = ops.broadcast_to(weights[:, None], ops.shape(distances))
    loss = 0.5 * pairs.safe_divide(
        ops.sum(w * ops.square(hinge)), pairs.masked_sum(w, scored, None)
    )
    dtype = distances.dtype
    fraction = pairs.safe_divide(
        ops.sum(ops.cast(hinge > 0.0, dtype)), ops.sum(ops.cast(scored, dtype))
    )
    return loss, {"active_fraction": fraction}

"""NT-Xent (normalised temperature-scaled cross-entropy) in ``keras.ops``, imported lazily.

Chen, Kornblith, Norouzi & Hinton 2020, "A simple framework for contrastive learning of
visual representations" (SimCLR), eq. 1. The two views u_i, v_i of N samples are the
2N rows z = [u; v]; with cosine similarities s_ij = <z_i, z_j> / (||z_i|| ||z_j||), the
positive of row i is the other view of its sample, p(i) = i + N (mod 2N), and

    l_i = -log( exp(s_{i,p(i)} / tau) / sum_{k != i} exp(s_ik / tau) )
        = logsumexp_{k != i}(s_ik / tau) - s_{i,p(i)} / tau

over the 2N - 1 other rows (the positive and 2N - 2 negatives). The loss is the mean
of l_i over the 2N rows, or with sample weights w, sum_i w_i l_i / sum_i w_i (both
views of a sample carry its weight). Similarities come from :mod:`lossplug.pairs`
(zero rows have similarity 0 to everything), the log-sum-exp from
:func:`lossplug.pairs.masked_logsumexp` (stable for any temperature). Memory O(N^2).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug import InvalidTensorError
from lossplug.numerics import compute_dtype
from lossplug.pairs import masked_logsumexp, masked_max, pairwise_similarities, safe_divide

PLUGIN = "ntxent"


def _check_views(view_a: Any, view_b: Any) -> None:
    for name, value in (("view_a", view_a), ("view_b", view_b)):
        if len(value.shape) != 2:
            raise InvalidTensorError(
                f"loss plugin {PLUGIN!r} needs {name} of shape (batch, dim), got shape "
                f"{tuple(value.shape)}; flatten or pool the embeddings first"
            )
    if view_a.shape[-1] is not None and view_b.shape[-1] not in (None, view_a.shape[-1]):
        raise InvalidTensorError(
            f"loss plugin {PLUGIN!r} needs view_a and view_b of one dimension, got "
            f"{view_a.shape[-1]} and {view_b.shape[-1]}"
        )


def ntxent_terms(view_a: Any, view_b: Any, *, temperature: float) -> tuple[Any, Any, Any]:
    """Per-row losses l_i (2N,), the (2N, 2N) scaled similarities and the positive index.

    Rows 0..N-1 are the first views, N..2N-1 the second views.
    """
    dtype = compute_dtype(view_a, view_b)
    rows = ops.concatenate([ops.cast(view_a, dtype), ops.cast(view_b, dtype)], axis=0)
    logits = pairwise_similarities(rows, kind="cosine") / temperature
    n = ops.shape(view_a)[0]
    index = ops.arange(2 * n, dtype="int32")
    partner = ops.where(index < n, index + n, index - n)
    others = ops.logical_not(ops.eye(2 * n, dtype="bool"))
    # Shift each row by its largest other logit (a constant for the gradient: l_i is shift
    # invariant), so that the log-sum-exp and the positive are both <= 0 and their
    # difference does not cancel at the scale 1 / tau of the logits.
    shifted = logits - ops.stop_gradient(masked_max(logits, others))[:, None]
    positive = ops.take_along_axis(shifted, partner[:, None], axis=1)[:, 0]
    normaliser, _ = masked_logsumexp(shifted, others)
    return normaliser - positive, logits, partner


def ntxent_loss(
    view_a: Any, view_b: Any, *, temperature: float = 0.5, sample_weight: Any = None
) -> tuple[Any, Any]:
    """The NT-Xent loss of a batch (scalar) and its top-1 accuracy (scalar).

    The accuracy is the fraction of rows whose positive has the largest similarity
    among the 2N - 1 other rows (SimCLR's "contrastive accuracy"); ties count as hits.
    """
    _check_views(view_a, view_b)
    losses, logits, partner = ntxent_terms(view_a, view_b, temperature=temperature)
    n2 = ops.shape(logits)[0]
    others = ops.logical_not(ops.eye(n2, dtype="bool"))
    best = ops.max(ops.where(others, logits, -3.0e38), axis=1)
    positive = ops.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
    accuracy = ops.mean(ops.cast(positive >= best, "float32"))
    if sample_weight is None:
        weights = ops.ones_like(losses)
    else:
        weights = ops.reshape(ops.cast(sample_weight, losses.dtype), (-1,))
        weights = ops.concatenate([weights, weights], axis=0)
    return safe_divide(ops.sum(weights * losses), ops.sum(weights)), accuracy

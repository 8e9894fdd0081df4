"""Proxy-NCA in ``keras.ops`` (imported lazily by the plugin).

Movshovitz-Attias et al. (2017), "No Fuss Distance Metric Learning using
Proxies" (ICCV). One proxy p_c per class (a trainable (num_classes, D) variable
the plugin owns); embeddings x_i and proxies are L2-normalised
(:func:`lossplug.numerics.l2_normalize`), and with the squared distance of the
unit vectors, d(x, p) = ||x^ - p^||^2 = 2 - 2 cos(x, p), per sample:

    denominator="all"        loss_i = -log( exp(-s d(x_i, p_y)) / sum_c exp(-s d(x_i, p_c)) )
    denominator="negatives"  loss_i = -log( exp(-s d(x_i, p_y)) / sum_{c != y} exp(-s d(x_i, p_c)) )

with the softmax scale s (1 / temperature). "negatives" is the paper's eq. (6)
(the positive proxy is not in the denominator; the loss can be negative, down
to log(C - 1) - 4 s); "all" is a softmax cross-entropy over the proxies, as
pytorch-metric-learning and ProxyNCA++ (Teh et al. 2020) compute it, >= 0.
Since d = 2 - 2 cos, both are computed from the (B, C) cosine matrix with
logits z_c = 2 s cos(x_i, p_c) (the constant -2 s cancels in the ratio): the
paper's form is log sum_{c != y} exp(z_c) - z_y (a masked log-sum-exp), and the
softmax form is softplus of it, log(1 + sum_{c != y} exp(z_c - z_y)), which
stays accurate when the loss is tiny.

Memory: one (B, num_classes) matrix. The proxies enter through a normalisation
and a matrix product (never a gather from the variable), so their gradient is
a dense tensor (see the authoring guide's note on Adam and IndexedSlices).
"""

from __future__ import annotations

from typing import Any

from keras import ops
from lossplug.pairs import masked_logsumexp, pairwise_similarities

PLUGIN = "proxy_nca"
DENOMINATORS = ("all", "negatives")


def proxy_cosines(embeddings: Any, proxies: Any) -> Any:
    """cos(x_i, p_c) of the normalised embeddings and proxies, shape (B, num_classes)."""
    return pairwise_similarities(embeddings, ops.cast(proxies, embeddings.dtype), "cosine")


def proxy_nca_loss(
    embeddings: Any,
    labels: Any,
    proxies: Any,
    *,
    scale: float = 9.0,
    denominator: str = "all",
) -> tuple[Any, Any]:
    """Per-sample Proxy-NCA loss (B,) and the nearest-proxy hits (B,) as float 0/1.

    Args:
        embeddings: (B, D) float tensor, in the compute dtype.
        labels: (B,) int32 class ids in [0, num_classes).
        proxies: the (num_classes, D) proxy variable.
        scale: s, the softmax scale on the negative squared distances.
        denominator: "all" (softmax over every proxy) or "negatives" (the paper).
    """
    cosines = proxy_cosines(embeddings, proxies)
    num_classes = cosines.shape[-1]
    logits = (2.0 * scale) * cosines
    target = ops.one_hot(labels, num_classes, dtype="bool")
    positive = ops.sum(ops.where(target, logits, 0.0), axis=-1)
    # the paper's form: log sum_{c != y} exp(z_c) - z_y
    others, _ = masked_logsumexp(logits, ops.logical_not(target), axis=-1)
    loss = others - positive
    if denominator == "all":
        # -log softmax_y = log(1 + exp(that)): softplus keeps small losses accurate
        loss = ops.softplus(loss)
    closest = ops.cast(ops.argmax(cosines, axis=-1), "int32")
    nearest = ops.cast(ops.equal(closest, ops.cast(labels, "int32")), embeddings.dtype)
    return loss, nearest

"""KL-divergence regularisers for lossplug: the Gaussian VAE term and sparse variational dropout.

Two kinds, chosen with the ``kind`` parameter:

``kind="gaussian"`` (the default), the VAE term. With ``mean`` = mu and
``log_var`` = log sigma^2 (both shape (B, D)), per sample::

    KL(N(mu, sigma^2) || N(0, 1)) = sum_d 0.5 * (mu_d^2 + exp(lv_d) - 1 - lv_d)
                                  = -0.5 * sum_d (1 + lv_d - mu_d^2 - exp(lv_d))

``exp(lv) - 1 - lv`` is computed as ``expm1(lv) - lv`` (no cancellation near
lv = 0) and clamped at 0, which it is mathematically bounded by
(e^x >= 1 + x); ``lv`` is clipped to [LOG_VAR_MIN, LOG_VAR_MAX] = [-30, 20] so
that ``exp`` cannot overflow. The result has shape (B,): the core applies
sample weights and averages over the batch.

``kind="variational_dropout"``, the sparse variational dropout regulariser of
Molchanov, Ashukha and Vetrov (2017), "Variational Dropout Sparsifies Deep
Neural Networks", eq. 14. For each weight with log alpha = ``log_alpha``::

    -KL ~= k1 * sigmoid(k2 + k3 * log_alpha) - 0.5 * softplus(-log_alpha) - k1
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695

so the regulariser is ``KL = k1 * (1 - sigmoid(k2 + k3 * log_alpha)) +
0.5 * softplus(-log_alpha)`` (the negated approximation, > 0 everywhere and
-> 0 as log_alpha -> +inf), summed (or averaged, ``reduction="mean"``) over
all entries of ``log_alpha``.

Return convention: ``per_sample`` for both kinds. ``log_alpha`` has the shape
of a layer's weights, not of the batch, so its KL is one number for the whole
model; the plugin gives that number to *every sample* of the batch (shape (B,),
the batch size read from ``y_pred``). The core's mean over the batch then adds
exactly ``KL`` to the loss (``KL * mean(sample_weight)`` with sample weights, so
a sample of weight 0 carries no share of it), the same under ``tf.distribute``;
and each sample's value is independent of the others. This is the per-sample
form of the paper's objective ``N * E[NLL] + sum KL``: divided by the training
set size N it is ``mean_i (NLL_i + KL / N)``, so use ``reduction="sum"`` with
the term weight 1 / N (times a warm-up schedule if wanted).

In both kinds the weight of the term is the term weight, which may follow the
epoch: ``lossplug.use("kl", weight=lossplug.schedules.LinearRamp(0, 1, begin=0, stop=5))``
is the usual KL warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import lossplug
import numpy as np
from keras import ops
from lossplug import Kind, PluginSpec, TensorSpec, numerics
from lossplug.numerics import reduce_trailing, to_compute_dtype
from lossplug.properties import Example, NonNegative, ZeroAtPerfect

#: Clipping range of ``log_var`` (exp(20) ~ 4.9e8 stays finite in float32).
LOG_VAR_MIN = -30.0
LOG_VAR_MAX = 20.0

#: Constants of the Molchanov et al. (2017) approximation.
K1 = 0.63576
K2 = 1.87320
K3 = 1.48695

KINDS = ("gaussian", "variational_dropout")
#: The tensors each kind reads.
KIND_TENSORS = {"gaussian": ("mean", "log_var"), "variational_dropout": ("log_alpha", "y_pred")}


@attrs.frozen
class Config:
    """Hyper-parameters of ``kl``."""

    kind: str = lossplug.param(
        "gaussian",
        choices=KINDS,
        doc="'gaussian': VAE term from mean and log_var (per sample); "
        "'variational_dropout': Molchanov et al. 2017 over log_alpha (the same value for "
        "every sample)",
    )
    reduction: str = lossplug.param(
        "sum",
        choices=("sum", "mean"),
        doc="combine the KL over latent dimensions (gaussian) or over parameters "
        "(variational_dropout) by sum (the ELBO) or mean",
    )


def gaussian_kl(mean: Any, log_var: Any, reduction: str = "sum") -> Any:
    """KL(N(mean, exp(log_var)) || N(0, 1)) per sample, shape (B,).

    Computed in float32, or in float64 for float64 inputs.

    per element: 0.5 * (mean^2 + (expm1(lv) - lv)), lv = clip(log_var, -30, 20),
    summed (or averaged) over every axis but the batch axis.
    """
    mean = to_compute_dtype(mean)
    log_var = ops.clip(ops.cast(log_var, mean.dtype), LOG_VAR_MIN, LOG_VAR_MAX)
    # exp(lv) - 1 - lv >= 0; expm1 avoids the cancellation near lv = 0 and the clamp
    # removes a last-ulp negative rounding error.
    variance_term = numerics.maximum(ops.expm1(log_var) - log_var, 0.0)
    per_element = 0.5 * (ops.square(mean) + variance_term)
    return reduce_trailing(per_element, reduction)


def variational_dropout_kl(log_alpha: Any, reduction: str = "sum") -> Any:
    """Molchanov et al. (2017) approximation of KL(q(w) || p(w)), a scalar (float32 or float64).

    per entry: k1 * (1 - sigmoid(k2 + k3 * log_alpha)) + 0.5 * softplus(-log_alpha),
    summed (or averaged) over every entry of ``log_alpha``.
    """
    log_alpha = to_compute_dtype(log_alpha)
    # k1 * (1 - sigmoid(z)) == k1 * sigmoid(-z), which keeps full precision for large z.
    per_entry = K1 * ops.sigmoid(-(K2 + K3 * log_alpha)) + 0.5 * ops.softplus(-log_alpha)
    return ops.sum(per_entry) if reduction == "sum" else numerics.mean(per_entry)


def _at_prior(example: Example) -> Example:
    """The prior itself: mean = 0 and log_var = 0 (log_alpha -> +inf for dropout)."""
    for name, value in (("mean", 0.0), ("log_var", 0.0), ("log_alpha", 40.0)):
        try:
            current = example.tensor(name)
        except KeyError:
            continue
        example = example.with_tensor(name, np.full_like(current, value))
    return example


@lossplug.hookimpl
def lossplug_spec() -> PluginSpec:
    return PluginSpec(
        name="kl",
        description="KL regularisers: Gaussian VAE term or sparse variational dropout",
        config=Config,
        tensors=(
            TensorSpec(
                "mean",
                Kind.EMBEDDINGS,
                shape=("B", "D"),
                optional=True,
                description="posterior mean mu (kind='gaussian')",
            ),
            TensorSpec(
                "log_var",
                Kind.EMBEDDINGS,
                shape=("B", "D"),
                optional=True,
                description="posterior log-variance log sigma^2 (kind='gaussian')",
            ),
            TensorSpec(
                "log_alpha",
                Kind.REAL,
                shape=("P", "Q"),
                optional=True,
                description="log alpha of the dropout posterior, weight-shaped, any rank "
                "(kind='variational_dropout')",
            ),
            TensorSpec(
                "y_pred",
                Kind.ANY,
                optional=True,
                description="the prediction; only its batch size is read "
                "(kind='variational_dropout')",
            ),
        ),
        properties=(
            NonNegative(),
            ZeroAtPerfect(
                _at_prior,
                atol=1e-5,
                description="the prior (mu = 0, log_var = 0; log_alpha -> +inf)",
            ),
        ),
        returns="per_sample",
    )


def _require(kind: str, outputs: Mapping[str, Any]) -> list[Any]:
    names = KIND_TENSORS[kind]
    missing = [name for name in names if outputs.get(name) is None]
    if "y_pred" in missing:
        raise lossplug.MissingTensorError(
            f"loss plugin 'kl' (kind={kind!r}) reads the batch size from 'y_pred', the "
            "prediction of the term's output, which is not available: on a model with several "
            "outputs attach the term to one of them with compile(loss={output_name: ...})"
        )
    if missing:
        example = ", ".join(f"{n!r}: '<your layer>'" for n in missing)
        raise lossplug.MissingTensorError(
            f"loss plugin 'kl' (kind={kind!r}) needs the output tensor(s) "
            f"{', '.join(repr(n) for n in missing)}, which the model does not provide. "
            f"Expose the layers that compute them (LossModel(..., expose=[...])) and bind "
            f"them: lossplug.use('kl', kind={kind!r}, bind={{{example}}})"
        )
    return [outputs[name] for name in names]


def _same_shape(first: Any, second: Any) -> bool:
    """False only when the static shapes certainly differ (unknown dims match anything)."""
    if len(first) != len(second):
        return False
    return all(a is None or b is None or a == b for a, b in zip(first, second, strict=True))


@lossplug.hookimpl
def build_loss_graph(
    inputs: Mapping[str, Any], outputs: Mapping[str, Any], extras: lossplug.Extras
) -> Any:
    config: Config = extras.config
    if config.kind == "gaussian":
        mean, log_var = _require("gaussian", outputs)
        if not _same_shape(mean.shape, log_var.shape):
            raise lossplug.PluginConfigError(
                f"loss plugin 'kl': 'mean' has shape {tuple(mean.shape)} but 'log_var' has "
                f"shape {tuple(log_var.shape)}; bind both to tensors of the same shape"
            )
        return gaussian_kl(mean, log_var, config.reduction)
    log_alpha, y_pred = _require("variational_dropout", outputs)
    kl = variational_dropout_kl(log_alpha, config.reduction)
    return ops.broadcast_to(kl, (ops.shape(y_pred)[0],))


__all__ = [
    "K1",
    "K2",
    "K3",
    "LOG_VAR_MAX",
    "LOG_VAR_MIN",
    "Config",
    "build_loss_graph",
    "gaussian_kl",
    "lossplug_spec",
    "variational_dropout_kl",
]

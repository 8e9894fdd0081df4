"""The target-class margin of each kind, as a function of the target cosine.

c = cos(theta) is the cosine between a feature and its class weight, clipped
to [-1 + CLIP, 1 - CLIP] before any angle is taken (arccos and
sqrt(1 - c^2) have infinite derivatives at +-1). Each kind replaces the
target logit s * c by s * phi(c):

arcface (additive angular, Deng et al. 2019)
    phi(c) = cos(theta + m)                 when theta + m <= pi
           = cos(theta) - m sin(m)          otherwise (the standard fallback that
                                             keeps phi decreasing in theta)
    easy_margin: phi(c) = cos(theta + m) when cos(theta) > 0, else cos(theta).
cosface (additive cosine, Wang et al. 2018)
    phi(c) = cos(theta) - m
sphereface (multiplicative angular, Liu et al. 2017), normalised form
    psi(theta) = (-1)^k cos(m theta) - 2k,  k = floor(m theta / pi)
    (continuous and decreasing on [0, pi] for any real m >= 1), blended as in
    the paper's training recipe:
    phi(c) = (lambda c + psi(theta)) / (1 + lambda).

The neutral margins (m = 0 for arcface and cosface, m = 1 for sphereface)
give phi(c) = c: normalised-softmax cross-entropy at scale s.
"""

from __future__ import annotations

import math
from typing import Any

from keras import ops

KINDS = ("arcface", "cosface", "sphereface")

#: paper defaults of the margin, per kind
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35, "sphereface": 4.0}
#: (low, high) allowed margins per kind, both inclusive
MARGIN_RANGES = {"arcface": (0.0, math.pi / 2), "cosface": (0.0, 1.0), "sphereface": (1.0, 8.0)}
#: the margin at which each kind reduces to normalised softmax
NEUTRAL_MARGINS = {"arcface": 0.0, "cosface": 0.0, "sphereface": 1.0}

#: cosines are kept this far from +-1 before taking angles (float32-safe)
CLIP = 1e-6


def target_logit(
    cosine: Any, kind: str, margin: float, *, easy_margin: bool = False, sphere_lambda: float = 0.0
) -> Any:
    """phi(c) for the (already clipped) target cosines ``cosine`` (float32 or float64)."""
    if kind == "cosface":
        return cosine - margin
    if kind == "arcface":
        sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), 0.0))
        shifted = cosine * math.cos(margin) - sine * math.sin(margin)  # cos(theta + m)
        if easy_margin:
            return ops.where(cosine > 0.0, shifted, cosine)
        # theta + m <= pi  <=>  cos(theta) >= cos(pi - m)
        return ops.where(
            cosine >= math.cos(math.pi - margin), shifted, cosine - margin * math.sin(margin)
        )
    if kind == "sphereface":
        theta = ops.arccos(cosine)
        k = ops.floor(ops.stop_gradient(theta) * (margin / math.pi))
        sign = 1.0 - 2.0 * (k - 2.0 * ops.floor(k / 2.0))  # (-1)^k
        psi = sign * ops.cos(margin * theta) - 2.0 * k
        return (sphere_lambda * cosine + psi) / (1.0 + sphere_lambda)
    raise ValueError(f"unknown margin_softmax kind {kind!r}; expected one of {KINDS}")

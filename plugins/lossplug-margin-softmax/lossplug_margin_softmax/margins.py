"""The target-class margin of each kind, from the target cosine and sine.

For a unit feature u and the unit weight w of its class, c = <u, w> = cos(theta)
and s = ||u - c w|| = sin(theta), theta in [0, pi]. Each kind replaces the
target logit scale * c by scale * phi:

arcface (additive angular, Deng et al. 2019)
    phi = cos(theta + m) = c cos(m) - s sin(m)    when theta + m <= pi
        = c - m sin(m)                            otherwise (the standard fallback
                                                  that keeps phi decreasing in theta)
    easy_margin: phi = cos(theta + m) when c > 0, else c.
cosface (additive cosine, Wang et al. 2018)
    phi = c - m
sphereface (multiplicative angular, Liu et al. 2017), normalised form
    psi(theta) = (-1)^k cos(m theta) - 2k,  k = floor(m theta / pi)
    (continuous and decreasing on [0, pi] for every real m >= 1), blended as
    in the paper's training recipe: phi = (lambda c + psi(theta)) / (1 + lambda).

Why sine and atan2 instead of arccos(c) and sqrt(1 - c^2): both of the latter
have infinite derivatives at c = +-1 (hence the usual clipping of c away from
+-1, and NaNs when it is forgotten), and both lose half the digits near
theta = 0 and pi (sqrt(1 - c^2) of a rounded c). s = ||u - c w|| is accurate
to machine precision for small angles, theta = atan2(s, c) is exact everywhere
and has finite derivatives wherever u and w are non-zero; where either is
zero (or u is exactly parallel to w) the derivative through s is defined as 0.

The neutral margins (m = 0 for arcface and cosface, m = 1 for sphereface)
give phi = c: the normalised-softmax cross-entropy at scale s.
"""

from __future__ import annotations

import math
from typing import Any

from keras import ops
from lossplug.numerics import arctan2, cos, floor

KINDS = ("arcface", "cosface", "sphereface")

#: paper defaults of the margin, per kind
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35, "sphereface": 4.0}
#: (low, high) allowed margins per kind, both inclusive
MARGIN_RANGES = {"arcface": (0.0, math.pi / 2), "cosface": (0.0, 1.0), "sphereface": (1.0, 8.0)}
#: the margin at which each kind reduces to normalised softmax
NEUTRAL_MARGINS = {"arcface": 0.0, "cosface": 0.0, "sphereface": 1.0}

#: squared norms below this count as zero (no direction)
TINY = 1e-12


def safe_sqrt(x: Any) -> Any:
    """sqrt(x) for x >= 0, with a zero (not NaN) derivative at x = 0.

    Any positive x keeps its square root: sin(theta) of angles down to ~1e-19
    survives, and the derivative of sqrt(sum r^2) with respect to r stays
    bounded by 1 (0.5 / sqrt(q) times 2 r).
    """
    positive = x > 0.0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), 0.0)


def cosine_and_sine(unit_features: Any, unit_weights: Any) -> tuple[Any, Any]:
    """c = <u, w> and s = ||u - c w|| row by row, for (B, D) unit rows u and w."""
    cosine = ops.sum(unit_features * unit_weights, axis=1)
    residual = unit_features - cosine[:, None] * unit_weights
    sine = safe_sqrt(ops.sum(ops.square(residual), axis=1))
    return ops.clip(cosine, -1.0, 1.0), sine


#: (cos^2 + sin^2) below this: the feature is shorter than half of l2_normalize's floor
#: (see lossplug.numerics.l2_normalize), so its angle is not trained (see :func:`angle`)
DIRECTED = 0.25


def angle(cosine: Any, sine: Any) -> Any:
    """theta = atan2(sine, cosine) in [0, pi]; 0 (zero derivative) where both vanish.

    The derivative of atan2 is (-s, c) / (c^2 + s^2). For a unit feature c^2 + s^2 = 1;
    a feature shorter than ``lossplug.numerics.l2_normalize``'s floor is scaled, not
    normalised, so c^2 + s^2 = |u|^2 < 1 and the derivative grows like 1 / |u| (2e7 for
    a row of norm 1e-6). Such a row has no direction worth training: below
    c^2 + s^2 = DIRECTED the angle keeps its value but passes no gradient (the cosine
    still does), so gradients stay bounded at and near the zero vector.
    """
    radius2 = ops.square(cosine) + ops.square(sine)
    defined = radius2 > TINY
    theta = ops.where(
        defined,
        arctan2(ops.where(defined, sine, 0.0), ops.where(defined, cosine, 1.0)),
        0.0,
    )
    return ops.where(radius2 >= DIRECTED, theta, ops.stop_gradient(theta))


def target_logit(
    cosine: Any,
    sine: Any,
    kind: str,
    margin: float,
    *,
    easy_margin: bool = False,
    sphere_lambda: float = 0.0,
) -> Any:
    """phi for the target cosines and sines (unscaled), same dtype as ``cosine``."""
    if kind == "cosface":
        return cosine - margin
    if kind == "arcface":
        shifted = cosine * math.cos(margin) - sine * math.sin(margin)  # cos(theta + m)
        if easy_margin:
            return ops.where(cosine > 0.0, shifted, cosine)
        theta = angle(cosine, sine)
        return ops.where(theta <= math.pi - margin, shifted, cosine - margin * math.sin(margin))
    if kind == "sphereface":
        theta = angle(cosine, sine)
        k = floor(ops.stop_gradient(theta) * (margin / math.pi))
        sign = 1.0 - 2.0 * (k - 2.0 * floor(k / 2.0))  # (-1)^k
        psi = sign * cos(margin * theta) - 2.0 * k
        return (sphere_lambda * cosine + psi) / (1.0 + sphere_lambda)
    raise ValueError(f"unknown margin_softmax kind {kind!r}; expected one of {KINDS}")

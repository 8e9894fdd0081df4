"""Statistics of the plugins' training tests: claims that hold whatever the seed.

A training test compares two outcomes of one run (samples that fit a label, held-out
hits); stating the claim as a significance test, not as a fixed gap, keeps it true for
every backend's random streams while a wrong loss still fails it. ``plugins/conftest.py``
puts this folder on ``sys.path``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["two_proportion_z"]


def two_proportion_z(first: np.ndarray, second: np.ndarray) -> float:
    """z statistic of mean(first) - mean(second) for two samples of booleans.

    With p1, p2 the two proportions of sizes n1, n2 and p the pooled proportion,
    z = (p1 - p2) / sqrt(p (1 - p) (1 / n1 + 1 / n2)); 0 when both samples are constant
    and equal. z > 3.1 means p1 > p2 at one-sided p < 0.001.
    """
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    pooled = (first.sum() + second.sum()) / (len(first) + len(second))
    se = np.sqrt(pooled * (1 - pooled) * (1 / len(first) + 1 / len(second)))
    return float((first.mean() - second.mean()) / se) if se > 0 else 0.0

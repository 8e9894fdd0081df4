"""NumPy helpers behind the properties ``ntxent`` claims (no Keras import at import).

The minimum. With unit (or zero) rows, Jensen's inequality twice and
||sum_i z_i||^2 >= 0 give, for N >= 2 samples (2N rows) and temperature tau,

    loss >= log(1 + (2N - 2) exp(-N / ((N - 1) tau)))

with equality when both views of every sample coincide and the N samples form a
regular simplex (pairwise cosine -1/(N - 1)); a batch of one sample has loss 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.properties import Example
from lossplug.reference import regular_simplex


def minimum(samples: int, temperature: float) -> float:
    """The smallest NT-Xent loss of a batch of ``samples`` samples (two views each)."""
    if samples < 2:
        return 0.0
    exponent = -samples / ((samples - 1) * temperature)
    return math.log1p((2 * samples - 2) * math.exp(exponent))


def perfect(example: Example) -> Example:
    """Both views equal to the vertices of a regular simplex: the loss is minimal."""
    view_a = np.asarray(example.outputs["view_a"])
    samples, dim = view_a.shape
    # N vertices need N - 1 dimensions: more columns than view_a has when N > D + 1
    rows = regular_simplex(samples, max(dim, samples - 1)).astype(view_a.dtype)
    return example.with_tensor("view_a", rows).with_tensor("view_b", rows.copy())


def check_minimum(example: Example, loss_fn: Callable[[Example], Any]) -> None:
    """loss >= minimum(N, tau) on the example, and == minimum(N, tau) at the simplex."""
    samples = np.asarray(example.outputs["view_a"]).shape[0]
    bound = minimum(samples, float(example.config.temperature))
    value = float(np.asarray(loss_fn(example)))
    assert value >= bound * (1 - 1e-5) - 1e-6, (
        f"loss {value!r} is below the minimum {bound!r} for {samples} samples"
    )
    best = float(np.asarray(loss_fn(perfect(example))))
    assert abs(best - bound) <= 1e-5 * bound + 1e-6, (
        f"at a regular simplex the loss is {best!r}, not the minimum {bound!r}"
    )

"""Which classes a sampled training step uses (Partial FC, An et al. 2021).

With ``sample_rate = r`` and C classes, a training step uses

    n    = ceil(r * C)                  (r * C rounded to 6 decimals first, so that
                                         0.3 * 10 gives 3; at least 1, at most C)
    P    = the batch's positive classes (every class id in y_true), |P| <= B
    used = max(|P|, n) classes: all of P, then n - |P| other classes (if n > |P|)
                                chosen uniformly at random without replacement

Choosing without replacement is one ``top_k`` over a score per class:

    score_j = j                    if j is in P  (>= 0: every positive comes first,
                                                  in decreasing class id)
    score_j = -1 - h(j, seed, t)   otherwise     (< 0, all distinct)

where h is a hash in [0, 2^31) of the class id, the seed (a state variable of the
term) and the training step t. h is a bijection of j for fixed (seed, t), so the
scores are all distinct: the order is the same on every backend and in every
compiled mode, and the negatives in the sample are a uniformly random subset of
the others (up to the quality of the hash) that changes from step to step.
``top_k`` takes ``width = min(C, max(n, B))`` scores (a static number when the
batch size is), since |P| <= B; the columns past ``used`` (only when B > n) are
masked out of the loss.

The hash is integer arithmetic in int32 (wrapping multiplication, shifts, xor,
masks to 31 bits) in ``keras.ops``: the same bits on TensorFlow, JAX and PyTorch,
eagerly and compiled. :func:`sampled_classes` is the same rule in NumPy.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from keras import ops

#: 31 bits: every intermediate of the hash is a non-negative int32
MASK31 = 0x7FFFFFFF
#: odd multipliers (bijections modulo 2^31) and shifts of the mixing function: the
#: constants of the well-known 32-bit integer hash "lowbias32" (C. Wellons), reduced to 31 bits
_MULTIPLIERS = (0x7FEB352D, 0x046CA68B)
_SHIFTS = (16, 15, 16)


def sample_size(sample_rate: float, num_classes: int) -> int:
    """n = ceil(r * C) classes at least (r * C rounded to 6 decimals first), in [1, C]."""
    return min(num_classes, max(1, math.ceil(round(sample_rate * num_classes, 6))))


# ------------------------------------------------------------------------- keras.ops
def mix31(x: Any) -> Any:
    """A bijection of [0, 2^31) onto itself that scrambles the bits (int32 in and out).

        x ^= x >> 16;  x = (x * a) mod 2^31;  x ^= x >> 15;  x = (x * b) mod 2^31;  x ^= x >> 16

    Each step is invertible on 31-bit values (a and b are odd), so distinct inputs
    give distinct outputs. The products wrap in int32; their low 31 bits are exact.
    """
    a, b = (ops.convert_to_tensor(np.int32(m)) for m in _MULTIPLIERS)
    x = ops.bitwise_xor(x, ops.right_shift(x, _SHIFTS[0]))
    x = ops.bitwise_and(ops.multiply(x, a), MASK31)
    x = ops.bitwise_xor(x, ops.right_shift(x, _SHIFTS[1]))
    x = ops.bitwise_and(ops.multiply(x, b), MASK31)
    return ops.bitwise_xor(x, ops.right_shift(x, _SHIFTS[2]))


def class_hash(class_ids: Any, seed: Any, step: Any) -> Any:
    """h(j, seed, t) = mix31(mix31(j) ^ mix31(mix31(seed) ^ t)), int32 in [0, 2^31).

    ``seed`` and ``step`` are integer-valued scalar tensors or variables (the plugin's
    seed is a float32 variable holding an integer); only their low 31 bits count.
    """
    seed = ops.bitwise_and(ops.cast(seed, "int32"), MASK31)
    step = ops.bitwise_and(ops.cast(step, "int32"), MASK31)
    key = mix31(ops.bitwise_xor(mix31(seed), step))
    return mix31(ops.bitwise_xor(mix31(ops.cast(class_ids, "int32")), key))


class Sample(NamedTuple):
    """The classes of one sampled step.

    Attributes:
        classes: (width,) int32 class ids, the positives first; the first ``used``
            are the classes of the loss.
        labels: (B,) int32, each label's position in ``classes``.
        used: scalar int32, max(|P|, n).
        width: the number of columns (an int, or a scalar tensor when the batch size
            is not static): min(C, max(n, B)).
        mask: (width,) bool, ``column < used``; ``None`` when every column is used
            (a static batch size B <= n).
    """

    classes: Any
    labels: Any
    used: Any
    width: Any
    mask: Any


def sample_classes(labels: Any, num_classes: int, size: int, seed: Any, step: Any) -> Sample:
    """The batch's positive classes plus random other classes, ``max(|P|, size)`` in all.

    ``labels`` are (B,) int32 class ids already checked to lie in [0, num_classes).
    Memory: a few (C,) int32 vectors (scores, positives, positions), nothing (B, C).
    """
    batch = labels.shape[0]
    width = _width(num_classes, size, labels)
    ids = ops.arange(num_classes, dtype="int32")
    zeros = ops.zeros((num_classes,), "int32")
    column = ops.reshape(labels, (-1, 1))
    positive = ops.scatter_update(zeros, column, ops.ones_like(labels)) > 0
    scores = ops.where(positive, ids, -1 - class_hash(ids, seed, step))
    _, classes = ops.top_k(scores, width)
    classes = ops.cast(classes, "int32")
    # position of each class in the sample (only the sampled entries are read)
    where_in_sample = ops.scatter_update(
        zeros, ops.reshape(classes, (-1, 1)), ops.arange(width, dtype="int32")
    )
    remapped = ops.take(where_in_sample, labels, axis=0)
    used = ops.maximum(ops.sum(ops.cast(positive, "int32")), size)
    static_full = batch is not None and int(batch) <= size
    mask = None if static_full else ops.arange(width, dtype="int32") < used
    return Sample(classes=classes, labels=remapped, used=used, width=width, mask=mask)


def _width(num_classes: int, size: int, labels: Any) -> Any:
    """min(C, max(n, B)): an int for a static batch size, else a scalar tensor."""
    batch = labels.shape[0]
    if batch is not None:
        return min(num_classes, max(size, int(batch)))
    # a dynamic batch size (tf.function with an unknown batch axis)
    return ops.minimum(num_classes, ops.maximum(size, ops.shape(labels)[0]))


def sampled_columns(classes: Any, sub_centers: int) -> Any:
    """The columns of W of the sampled classes: class j has columns j * K ... j * K + K - 1."""
    if sub_centers == 1:
        return classes
    offsets = ops.arange(sub_centers, dtype="int32")
    return ops.reshape(classes[:, None] * sub_centers + offsets[None, :], (-1,))


# ------------------------------------------------------------------------- NumPy
def mix31_numpy(x: Any) -> np.ndarray:
    """:func:`mix31` in NumPy (int64 arithmetic, exact)."""
    x = np.asarray(x, dtype=np.int64) & MASK31
    x = x ^ (x >> _SHIFTS[0])
    x = (x * _MULTIPLIERS[0]) & MASK31
    x = x ^ (x >> _SHIFTS[1])
    x = (x * _MULTIPLIERS[1]) & MASK31
    return x ^ (x >> _SHIFTS[2])


def class_hash_numpy(class_ids: Any, seed: int, step: int) -> np.ndarray:
    """:func:`class_hash` in NumPy."""
    key = mix31_numpy(mix31_numpy(int(seed) & MASK31) ^ (int(step) & MASK31))
    return mix31_numpy(mix31_numpy(class_ids) ^ key)


def sampled_classes(
    labels: Any, num_classes: int, sample_rate: float, seed: int, step: int
) -> np.ndarray:
    """The classes a training step of the sampled loss uses, in the plugin's column order.

    NumPy. The positives (the distinct ``labels``) in decreasing id, then
    ``max(|P|, n) - |P|`` other classes in the order of their hash; ``seed`` is the
    term's state variable ``sample_seed`` (``model.term_state(term)["sample_seed"]``)
    and ``step`` the optimizer's step counter at that training step.
    """
    size = sample_size(sample_rate, num_classes)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    positives = np.unique(labels)[::-1]
    ids = np.arange(num_classes, dtype=np.int64)
    others = ids[~np.isin(ids, positives)]
    order = np.argsort(class_hash_numpy(others, seed, step), kind="stable")
    extra = max(size - len(positives), 0)
    return np.concatenate([positives, others[order[:extra]]]).astype(np.int64)


__all__ = [
    "MASK31",
    "Sample",
    "class_hash",
    "class_hash_numpy",
    "mix31",
    "mix31_numpy",
    "sample_classes",
    "sample_size",
    "sampled_classes",
    "sampled_columns",
]

"""NumPy helpers behind the claims of ``cross_batch_memory`` (no Keras import here).

The conformance kit calls the plugin with its initial state, an empty memory,
where the loss is the in-batch loss. These claims fill the memory (through the
example's ``state``) to check what the memory must and must not change:

- :func:`perfect`: zero loss when every class sits on its own point, far apart;
- :func:`check_warmup_ignores_memory`: before ``warmup_steps`` steps the memory,
  however full, does not change the loss;
- :func:`check_unfilled_slots_ignored`: the contents of the slots past
  ``filled`` do not change the loss;
- :func:`check_memory_order_invariance`: permuting the filled slots (rows and
  labels together) does not change the loss.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from lossplug.properties import Example

from .memory import FILLED, LABELS, MEMORY, POINTER, STEPS

Loss = Callable[[Example], Any]


def perfect(example: Example) -> Example:
    """Every sample at its class's point on the first axis, classes 2 (m + 1) apart.

    Positives coincide (d = 0 <= m_pos) and negatives are farther apart than any
    margin (Euclidean or squared Euclidean distance), so both forms are 0.
    """
    config = example.config
    embeddings = np.asarray(example.outputs["embeddings"])
    labels = np.asarray(example.inputs["y_true"]).reshape(-1)
    _, index = np.unique(labels, return_inverse=True)
    spacing = 2.0 * (max(config.margin, config.neg_margin, config.pos_margin) + 1.0)
    points = np.zeros(embeddings.shape, dtype=np.float64)
    points[:, 0] = spacing * index.reshape(-1)
    return example.with_tensor("embeddings", points.astype(embeddings.dtype))


def _rng(example: Example) -> np.random.Generator:
    data = np.ascontiguousarray(np.asarray(example.outputs["embeddings"], np.float64)).tobytes()
    return np.random.default_rng(zlib.crc32(data))


def _stored(example: Example, filled: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A memory whose first ``filled`` slots hold rows near the batch with its labels."""
    embeddings = np.asarray(example.outputs["embeddings"], np.float64)
    labels = np.asarray(example.inputs["y_true"]).reshape(-1)
    size = int(example.config.memory_size)
    scale = max(float(np.abs(embeddings).max(initial=0.0)), 1.0)
    memory = np.zeros((size, embeddings.shape[1]), np.float32)
    memory[:filled] = rng.uniform(-scale, scale, (filled, embeddings.shape[1]))
    ids = np.zeros(size, np.float32)
    pool = np.unique(labels) if labels.size else np.zeros(1)
    ids[:filled] = rng.choice(np.concatenate([pool, pool.max(initial=0) + 1.0 + pool]), filled)
    return {
        MEMORY: memory,
        LABELS: ids,
        POINTER: np.float32(filled % size),
        FILLED: np.float32(filled),
    }


def _warm(example: Example) -> np.float32:
    """The ``steps`` value of a memory whose warm-up is over (so the loss uses it)."""
    return np.float32(example.config.warmup_steps)


def _close(got: Any, expected: Any, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(expected, np.float64), rtol=1e-5, atol=1e-6,
        err_msg=what,
    )  # fmt: skip


def check_warmup_ignores_memory(example: Example, loss_fn: Loss) -> None:
    """With fewer than ``warmup_steps`` steps enqueued, a full memory leaves the loss unchanged."""
    warmup = int(example.config.warmup_steps)
    assert warmup > 0, "the claim needs warmup_steps > 0"
    rng = _rng(example)
    empty = loss_fn(example)
    state = {**example.state, **_stored(example, int(example.config.memory_size), rng)}
    state[STEPS] = np.float32(rng.integers(0, warmup))
    _close(loss_fn(example.replace(state=state)), empty, "a full memory changed the loss "
           f"during the warm-up (steps={state[STEPS]}, warmup_steps={warmup})")  # fmt: skip


def check_unfilled_slots_ignored(example: Example, loss_fn: Loss) -> None:
    """What the slots past ``filled`` hold does not change the loss."""
    size = int(example.config.memory_size)
    rng = _rng(example)
    filled = int(rng.integers(0, size + 1))
    state = {**example.state, **_stored(example, filled, rng), STEPS: _warm(example)}
    reference = loss_fn(example.replace(state=state))
    junk = dict(state)
    memory, labels = state[MEMORY].copy(), state[LABELS].copy()
    memory[filled:] = rng.uniform(-1e3, 1e3, memory[filled:].shape)
    labels[filled:] = rng.integers(0, 3, size - filled)
    junk[MEMORY], junk[LABELS] = memory, labels
    _close(loss_fn(example.replace(state=junk)), reference,
           f"the unfilled memory slots {filled}..{size - 1} changed the loss")  # fmt: skip


def check_memory_order_invariance(example: Example, loss_fn: Loss) -> None:
    """Permuting the filled slots (embeddings with their labels) leaves the loss unchanged."""
    size = int(example.config.memory_size)
    rng = _rng(example)
    filled = int(rng.integers(1, size + 1))
    state = {**example.state, **_stored(example, filled, rng), STEPS: _warm(example)}
    reference = loss_fn(example.replace(state=state))
    order = rng.permutation(filled)
    shuffled = dict(state)
    shuffled[MEMORY] = state[MEMORY].copy()
    shuffled[LABELS] = state[LABELS].copy()
    shuffled[MEMORY][:filled] = state[MEMORY][order]
    shuffled[LABELS][:filled] = state[LABELS][order]
    _close(loss_fn(example.replace(state=shuffled)), reference,
           "permuting the filled memory slots changed the loss")  # fmt: skip

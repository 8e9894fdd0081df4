"""The cross-batch memory: a ring buffer of the last M embeddings and labels, in ``keras.ops``.

State (non-trainable, float32, created with ``extras.state.variable`` on every call):

============  =======  ==========================================================
name          shape    holds
============  =======  ==========================================================
``memory``    (M, D)   the embeddings of the last M samples enqueued
``labels``    (M,)     their labels, as float32 (integer ids, exact below 2**24)
``pointer``   ()       the slot the next sample is written to, in [0, M)
``filled``    ()       how many slots hold a sample, min(samples enqueued, M)
``steps``     ()       training steps enqueued, counted up to ``warmup_steps``
============  =======  ==========================================================

Everything is float32 because the core creates non-trainable state with the
aggregation "mean" (every replica of a ``tf.distribute`` strategy writes the same
value, and the mean of equal values is that value); integer variables would not
take that aggregation on every strategy. Counts are exact in float32 below 2**24;
``steps`` stops at ``warmup_steps`` for that reason.

Slots are written in order from slot 0, so the filled slots are always
0, ..., filled - 1 (all of them once the memory is full), and the slot of the
oldest sample is ``pointer`` once it is.

One step enqueues the B rows e_0, ..., e_{B-1} of the (global) batch: row i goes
to slot (p + i) mod M, p the pointer. When B > M several rows fall into one
slot and the last of them stays, so slot s ends up holding row

    i(s) = o + M floor((B - 1 - o) / M),   o = (s - p) mod M,   if o < B

and keeps its old value if o >= B. That is one gather of M rows
(:func:`enqueue`), with no loop over rows and no scatter, so it compiles the
same on TensorFlow (XLA included), JAX and PyTorch. Then

    p <- (p + B) mod M,   filled <- min(filled + B, M),   steps <- min(steps + 1, N).

Importing this module is cheap (the functions import ``keras.ops`` when first
called), so the claims can use its names when the plugin registers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MEMORY = "memory"
LABELS = "labels"
POINTER = "pointer"
FILLED = "filled"
STEPS = "steps"
#: every state variable of the plugin, in the order they are created
NAMES = (MEMORY, LABELS, POINTER, FILLED, STEPS)


class Memory(NamedTuple):
    """The memory's state variables (or tensors of their values)."""

    memory: Any  #: (M, D) embeddings
    labels: Any  #: (M,) float32 label ids
    pointer: Any  #: () next slot
    filled: Any  #: () filled slots
    steps: Any  #: () steps enqueued (up to warmup_steps)


def variables(state: Any, memory_size: int, dim: int) -> Memory:
    """Create (on the first call) or look up the state variables in the term's store."""
    return Memory(
        memory=state.variable(MEMORY, (memory_size, dim), "zeros", trainable=False),
        labels=state.variable(LABELS, (memory_size,), "zeros", trainable=False),
        pointer=state.variable(POINTER, (), "zeros", trainable=False),
        filled=state.variable(FILLED, (), "zeros", trainable=False),
        steps=state.variable(STEPS, (), "zeros", trainable=False),
    )


def read(mem: Memory) -> Memory:
    """The variables' current values as tensors (what a compiled step must compute with)."""
    from keras import ops

    return Memory(*(ops.convert_to_tensor(v) for v in mem))


def _as_int(value: Any) -> Any:
    from keras import ops

    return ops.cast(ops.round(ops.convert_to_tensor(value)), "int32")


def in_use(mem: Memory, warmup_steps: int) -> Any:
    """Boolean (M,): the slots the loss uses now (filled, and the warm-up is over)."""
    from keras import ops

    size = mem.memory.shape[0]
    filled = ops.arange(size, dtype="int32") < _as_int(mem.filled)
    warm = _as_int(mem.steps) >= warmup_steps
    return ops.logical_and(filled, warm)


def enqueue(mem: Memory, embeddings: Any, labels: Any, warmup_steps: int) -> Memory:
    """The state after writing one batch (see the module docstring); values, not variables.

    ``embeddings`` (B, D) and ``labels`` (B,) are taken without gradient and
    stored as float32. Works for any B >= 0 (B = 0 leaves the memory as it is,
    but counts the step).
    """
    from keras import ops

    size, dim = mem.memory.shape
    rows = ops.cast(ops.stop_gradient(ops.convert_to_tensor(embeddings)), "float32")
    ids = ops.cast(ops.stop_gradient(ops.reshape(ops.convert_to_tensor(labels), (-1,))), "float32")
    batch = ops.shape(rows)[0]
    batch_int = ops.cast(batch, "int32")
    pointer = _as_int(mem.pointer)
    slots = ops.arange(size, dtype="int32")
    offset = ops.mod(slots - pointer + size, size)  # o = (s - p) mod M, all terms >= 0
    written = offset < batch_int
    last = offset + size * ops.floor_divide(ops.maximum(batch_int - 1 - offset, 0), size)
    # a zero row after the batch: the index of unwritten slots, so the gather is always
    # in range (also for an empty batch)
    padded_rows = ops.concatenate([rows, ops.zeros((1, dim), "float32")], axis=0)
    padded_ids = ops.concatenate([ids, ops.zeros((1,), "float32")], axis=0)
    index = ops.where(written, last, batch_int)
    new_memory = ops.where(written[:, None], ops.take(padded_rows, index, axis=0), mem.memory)
    new_labels = ops.where(written, ops.take(padded_ids, index, axis=0), mem.labels)
    return Memory(
        memory=new_memory,
        labels=new_labels,
        pointer=ops.cast(ops.mod(pointer + ops.mod(batch_int, size), size), "float32"),
        filled=ops.cast(ops.minimum(_as_int(mem.filled) + batch_int, size), "float32"),
        steps=ops.cast(ops.minimum(_as_int(mem.steps) + 1, warmup_steps), "float32"),
    )


def request_update(state: Any, new: Memory) -> None:
    """Ask the core to set every state variable to ``new`` after this training step."""
    for name, value in zip(NAMES, new, strict=True):
        state.update(name, value)

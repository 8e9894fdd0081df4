"""Terms the distribution workers (tf.distribute and keras.distribution) train alike."""

from __future__ import annotations

from typing import Any

import lossplug


def global_memory_term() -> Any:
    """``cross_batch_memory`` over the exposed ``features``: a ring buffer of plugin state
    written from, and mined over, the global batch."""
    return lossplug.use(
        "cross_batch_memory",
        weight=0.2,
        memory_size=80,
        warmup_steps=2,
        global_batch=True,
        bind={"embeddings": "features"},
    )

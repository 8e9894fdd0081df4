"""What ``LossModel`` needs to train under ``MultiWorkerMirroredStrategy`` on Keras 3.

Keras 3's TensorFlow trainer (3.15 at the time of writing; tensorflow/tensorflow#72388)
cannot ``fit`` or ``evaluate`` any model when the collective strategy spans several
workers, for two reasons that have nothing to do with losses:

1. Before the first step, ``fit`` reduces the first distributed batch with
   ``strategy.reduce("MEAN", (x, y, sample_weight))`` only to learn its shapes; the
   collective strategy's ``reduce`` takes one value, not a structure, and fails.
2. After every step, the logs (scalars) are reduced with
   ``strategy.reduce("MEAN", value, axis=0)``, which needs an axis 0 to reduce along
   and fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions").

``LossModel`` works around both without touching Keras: shapes are taken from one
worker's local slice of the first batch (what the reduce was for), and each replica's
logs get a leading axis of length 1, so the reduction along axis 0 is the mean over
the replicas, as Keras computes with ``MirroredStrategy``. Everything here is inert
unless the strategy has more than one worker. ``tests/test_distribute.py`` keeps a
canary asserting that a plain Keras model still fails; it turns red once Keras is
fixed, and this module can go then.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` synchronises replicas on more than one worker process."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)
    )


def first_local_batch(strategy: tf.distribute.Strategy, epoch_iterator: Any) -> Any:
    """This worker's first replica's slice of the first batch of ``epoch_iterator``.

    Only its shapes and dtypes are used (to build the model before training), so one
    replica's slice serves as well as the cross-worker mean Keras asks for.
    """
    for _, _, iterator in epoch_iterator:
        batch = next(iterator)
        break
    else:  # an empty dataset: let Keras report it as it does without a strategy
        return None

    def local(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return keras.tree.map_structure(local, batch)


def logs_for_replica_mean(logs: Any) -> Any:
    """Give each log value a leading axis of length 1 for Keras' ``reduce(axis=0)``."""
    return keras.tree.map_structure(lambda value: tf.expand_dims(value, 0), logs)

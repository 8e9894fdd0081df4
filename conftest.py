"""Repository-wide pytest hooks: the tests of one Keras backend at a time.

``KERAS_BACKEND`` chooses the backend of a test run (``scripts/test.sh --backend``).
A test marked ``@pytest.mark.backends("tensorflow")`` is about that backend's own
machinery (``tf.distribute``, SavedModel export) and is deselected, not skipped,
on the others.
"""


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) the tests of other backends than this run's KERAS_BACKEND."""
    import keras

    current = keras.backend.backend()
    keep, other = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        (keep if marker is None or current in marker.args else other).append(item)
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = keep

"""Tests of the center plugin: the mathematics, the centres, the config, and training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import lossplug
import lossplug_center as plugin
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.extras import Extras, StateStore
from lossplug.properties import Example
from lossplug.terms import call_plugin as core_call_plugin
from lossplug.testing import call_plugin, conformance_tests
from lossplug_center import claims
from lossplug_center.loss import center_loss, paper_update

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def run(labels, features, centers=None, **config):
    """The installed plugin's per-sample loss as float64 NumPy, with the centres set first."""
    state = None if centers is None else {"centers": centers}
    loss, _ = call_plugin(
        "center", {"y_true": labels}, {"features": features}, config=config, state=state
    )
    assert loss.shape == (len(features),)
    return loss.astype(np.float64)


def call_in(store, labels, features, *, training=True, sample_weight=None, **config):
    """Call the plugin with a StateStore the test owns; the core's TermOutput."""
    spec = plugin.SPEC
    extras = Extras(
        config=spec.make_config(config),
        epoch=tf.constant(0, tf.int64),
        step=tf.constant(0, tf.int64),
        training=training,
        state=store,
        sample_weight=sample_weight,
    )
    return core_call_plugin(
        spec,
        plugin.build_loss_graph,
        {"y_true": labels},
        {"features": features},
        extras,
        term=spec.name,
    )


def run_in(store, labels, features, **config):
    """Call the plugin with a StateStore the test owns, to look at the variables it creates."""
    return keras.ops.convert_to_numpy(call_in(store, labels, features, **config).loss)


def paper_store(centers):
    """A closed StateStore holding ``centers`` for update="paper" (as after compile)."""
    store = StateStore(plugin="center")
    k, d = centers.shape
    run_in(
        store, np.zeros(1, np.int64), np.zeros((1, d), np.float32), num_classes=k, update="paper"
    )
    store.close()
    store.set_values({"centers": centers})
    return store


@st.composite
def batches(draw):
    b = draw(st.integers(1, 6))
    d = draw(st.integers(1, 5))
    k = draw(st.integers(1, 5))
    values = st.floats(-100, 100, width=32)
    features = draw(hnp.arrays(np.float32, (b, d), elements=values))
    centers = draw(hnp.arrays(np.float32, (k, d), elements=values))
    labels = draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, k - 1)))
    return labels, features, centers


# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("center")


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(batches(), st.floats(0.0, 1.0))
def test_half_squared_distance_to_the_class_centre(batch, alpha):
    labels, features, centers = batch
    loss = run(labels, features, centers, num_classes=len(centers), alpha=alpha)
    diff = features.astype(np.float64) - centers.astype(np.float64)[labels]
    expected = 0.5 * (diff**2).sum(-1)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-3)
    assert np.all(loss >= 0)


@SETTINGS
@given(batches(), st.floats(0.0, 1.0))
def test_zero_when_every_feature_is_its_centre(batch, alpha):
    labels, _, centers = batch
    loss = run(labels, centers[labels], centers, num_classes=len(centers), alpha=alpha)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6 * (1 + np.abs(centers).max() ** 2))


@pytest.mark.backends("tensorflow")  # tf.GradientTape
@SETTINGS
@given(batches(), st.floats(0.0, 1.0))
def test_alpha_scales_only_the_centres_gradient(batch, alpha):
    """d/dx = x - c_y for any alpha; d/dc_k = alpha * sum_{i: y_i = k} (c_k - x_i)."""
    labels, features, centers = batch
    x = tf.Variable(features)
    c = tf.Variable(centers)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(center_loss(x, labels, c, alpha))
    grad_x, grad_c = tape.gradient(total, [x, c])
    diff = features.astype(np.float64) - centers.astype(np.float64)[labels]
    np.testing.assert_allclose(grad_x.numpy(), diff, rtol=1e-5, atol=1e-3)
    expected_c = np.zeros(centers.shape)
    np.add.at(expected_c, labels, -diff)
    grad_c = tf.convert_to_tensor(grad_c).numpy() if grad_c is not None else np.zeros(c.shape)
    np.testing.assert_allclose(grad_c, alpha * expected_c, rtol=1e-4, atol=1e-2)


@pytest.mark.backends("tensorflow")  # tf.GradientTape and tf.IndexedSlices
@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_adam_first_step_is_bounded_by_the_learning_rate(alpha):
    """Adam's first step moves no centre coordinate by more than lr, with repeated labels too.

    (Gathering straight from the variable gives IndexedSlices with duplicate rows, for
    which Keras' Adam steps up to sqrt(k) * lr.) Under Adam alpha cancels out, as the
    README says: any alpha > 0 takes the same first step.
    """
    features = np.array([[1.0, -2.0], [3.0, 0.5], [2.0, 1.0], [-1.0, 1.0]], np.float32)
    labels = np.array([0, 0, 0, 1])

    def adam_step(a):
        centers = keras.Variable(np.zeros((3, 2), np.float32))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(center_loss(features, labels, centers, a))
        keras.optimizers.Adam(0.1).apply_gradients([(tape.gradient(loss, centers.value), centers)])
        return centers.numpy()

    step = adam_step(alpha)
    assert np.abs(step).max() <= 0.1 * (1 + 1e-5)
    np.testing.assert_allclose(np.abs(step[:2]), 0.1, rtol=1e-3)  # sign steps of size lr
    np.testing.assert_array_equal(step[2], 0.0)  # class 2 is not in the batch
    np.testing.assert_allclose(step, adam_step(1.0 if alpha != 1.0 else 0.5), rtol=1e-3)


def test_centres_are_state_created_once():
    store = StateStore(plugin="center")
    features = np.ones((3, 4), np.float32)
    labels = np.array([0, 2, 1])
    run_in(store, labels, features, num_classes=3)
    assert "centers" in store
    (variable,) = store.weights
    assert tuple(variable.shape) == (3, 4) and variable.trainable
    np.testing.assert_array_equal(store.values()["centers"], 0.0)
    store.close()  # as after compile: the next call must find the variable, not create one
    np.testing.assert_allclose(run_in(store, labels, features, num_classes=3), 2.0)
    assert len(store.weights) == 1


def test_alpha_zero_freezes_the_centres():
    store = StateStore(plugin="center")
    run_in(store, np.array([1]), np.ones((1, 2), np.float32), num_classes=2, alpha=0.0)
    assert store.trainable_weights == [] and len(store.non_trainable_weights) == 1


def test_label_forms_agree():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 3)).astype(np.float32)
    centers = rng.normal(size=(5, 3)).astype(np.float32)
    ids = np.array([0, 4, 2, 2])
    expected = run(ids, features, centers, num_classes=5)
    np.testing.assert_allclose(run(ids[:, None], features, centers, num_classes=5), expected)
    one_hot = np.eye(5, dtype=np.float32)[ids]
    np.testing.assert_allclose(run(one_hot, features, centers, num_classes=5), expected)
    np.testing.assert_allclose(
        run(ids.astype(np.float32), features, centers, num_classes=5), expected
    )


def test_claim_helpers_hold_on_an_example():
    rng = np.random.default_rng(1)
    example = Example(
        inputs={"y_true": rng.integers(0, 4, size=(6,))},
        outputs={"features": rng.normal(size=(6, 3)).astype(np.float32)},
        config=plugin.SPEC.make_config({"num_classes": 4}),
        state={"centers": rng.normal(size=(4, 3)).astype(np.float32)},
    )

    def loss_fn(ex):
        return run(
            ex.inputs["y_true"],
            ex.outputs["features"],
            ex.state["centers"],
            num_classes=ex.config.num_classes,
            alpha=ex.config.alpha,
        )

    np.testing.assert_allclose(loss_fn(claims.perfect(example)), 0.0, atol=1e-6)
    assert np.all(loss_fn(example) > 0)
    claims.check_alpha_keeps_value(example, loss_fn)
    with pytest.raises(KeyError, match="no 'centers' state"):
        claims.perfect(example.replace(state={}))


# ----------------------------------------------------------------- update="paper"
@SETTINGS
@given(batches(), st.floats(0.0, 1.0), st.data())
def test_paper_update_is_the_papers_rule(batch, alpha, data):
    """c_j - alpha * sum_{y_i=j} w_i (c_j - x_i) / (1 + n_j), a class absent keeps its centre."""
    labels, features, centers = batch
    weights = data.draw(
        st.one_of(
            st.none(), hnp.arrays(np.float32, (len(labels),), elements=st.floats(0, 3, width=32))
        )
    )
    got = paper_update(features, labels.astype(np.int32), centers, alpha, weights)
    want = claims.paper_rule(centers, features, labels, alpha, weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-3)
    absent = np.setdiff1d(np.arange(len(centers)), labels)
    # up to subnormals, which TensorFlow's CPU kernels flush to zero
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got)[absent],
        centers[absent],
        rtol=0,
        atol=np.finfo(np.float32).tiny,
    )


def test_paper_centres_are_state_the_optimizer_does_not_own():
    store = StateStore(plugin="center")
    run_in(store, np.array([1]), np.ones((1, 2), np.float32), num_classes=2, update="paper")
    assert store.trainable_weights == [] and len(store.non_trainable_weights) == 1


def test_paper_rule_is_asked_for_from_the_batch_and_only_reaches_the_core_in_training():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(3, 4)).astype(np.float32)
    features = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 0, 2, 0, 2])
    store = paper_store(centers)
    out = call_in(store, labels, features, num_classes=3, alpha=0.3, update="paper")
    ((variable, value),) = out.updates
    assert variable is store.plugin_variables["centers"]
    want = claims.paper_rule(centers, features, labels, 0.3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.values()["centers"], centers)  # the core assigns, later
    # the loss is the same whatever the rule; evaluation asks the core for nothing
    plain = run(labels, features, centers, num_classes=3, alpha=0.3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out.loss), plain, rtol=1e-6)
    evaluation = call_in(store, labels, features, training=False, num_classes=3, update="paper")
    assert evaluation.updates == []


def test_paper_rule_gives_the_features_their_gradient():
    """d loss_i / d x_i = x_i - c_{y_i}, as with the gradient rule (any backend's autodiff)."""
    from lossplug import backend

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 2)).astype(np.float32)
    features = rng.normal(size=(4, 2)).astype(np.float32)
    labels = np.array([2, 0, 2, 1])
    store = paper_store(centers)

    def objective(tensors):
        out = call_in(store, labels, tensors["features"], num_classes=3, update="paper")
        return keras.ops.sum(out.loss), None

    tensors = {"features": keras.ops.convert_to_tensor(features)}
    _, _, grads, _ = backend.current().kit_gradients(objective, tensors, [])
    got = keras.ops.convert_to_numpy(grads["features"])
    np.testing.assert_allclose(got, features - centers[labels], rtol=1e-6)


@pytest.mark.backends("tensorflow")  # a tape that watches a non-trainable variable
def test_paper_rule_gives_the_centres_no_gradient():
    rng = np.random.default_rng(3)
    store = paper_store(rng.normal(size=(3, 2)).astype(np.float32))
    variable = store.plugin_variables["centers"]
    x = tf.Variable(rng.normal(size=(4, 2)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(variable.value)
        out = call_in(store, np.array([2, 0, 2, 1]), x, num_classes=3, update="paper")
        total = tf.reduce_sum(out.loss)
    assert tape.gradient(total, variable.value) is None  # the loss reads stop_gradient(c)
    assert tape.gradient(out.updates[0][1], x) is None  # the rule is computed without gradients
    assert tape.gradient(out.updates[0][1], variable.value) is None


def test_paper_rule_counts_each_sample_by_its_weight():
    """Weights are per-sample counts: w = 0 leaves its sample out, w = 2 counts it twice."""
    centers = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)
    features = np.array([[3.0, 1.0], [5.0, 5.0], [3.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1])
    weighted = call_in(
        paper_store(centers),
        labels,
        features,
        sample_weight=np.array([2.0, 0.0, 1.0], np.float32),
        num_classes=2,
        alpha=1.0,
        update="paper",
    )
    twice = call_in(
        paper_store(centers),
        np.array([0, 0, 1]),
        np.array([[3.0, 1.0], [3.0, 1.0], [3.0, 1.0]], np.float32),
        num_classes=2,
        alpha=1.0,
        update="paper",
    )
    got = keras.ops.convert_to_numpy(weighted.updates[0][1])
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(twice.updates[0][1]), rtol=1e-6)
    # class 0: c - (2 (c - x_0)) / (1 + 2) = (1, 1) - (2/3) (-2, 0)
    np.testing.assert_allclose(got, [[1.0 + 4.0 / 3.0, 1.0], [1.5, 0.5]], rtol=1e-6)


def test_paper_rule_with_sample_weights_in_fit():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(48, 64)).astype(np.float32)
    y = rng.integers(0, 10, 48)
    w = rng.uniform(0.0, 2.0, 48).astype(np.float32)
    w[:5] = 0.0
    model = _model([lossplug.use("center", num_classes=10, alpha=0.5, update="paper")])
    extractor = keras.Model(model.input, model.get_layer("features").output)
    feats = extractor.predict(x[:16], verbose=0)
    model.fit(x[:16], y[:16], sample_weight=w[:16], batch_size=16, epochs=1, verbose=0)
    want = claims.paper_rule(np.zeros((10, 16)), feats, y[:16], 0.5, w[:16])
    np.testing.assert_allclose(_centers(model), want, rtol=1e-5, atol=1e-6)


def test_paper_rule_needs_one_weight_per_sample():
    store = paper_store(np.zeros((3, 4), np.float32))
    with pytest.raises(lossplug.InvalidTensorError, match=r"sample weights of shape \(batch,\)"):
        call_in(
            store,
            np.array([0, 1]),
            np.zeros((2, 4), np.float32),
            sample_weight=np.ones((2, 3), np.float32),
            num_classes=3,
            update="paper",
        )


def _first_step_sizes(update, alphas=(0.1, 1.0)):
    """How far Adam's first step (or the rule) moves the centres, for each alpha."""
    x, y = _digits()
    moved = {}
    for alpha in alphas:
        model = _model([lossplug.use("center", num_classes=10, alpha=alpha, update=update)])
        before = _centers(model).copy()
        model.fit(x[:128], y[:128], epochs=1, batch_size=128, verbose=0)
        moved[alpha] = np.abs(_centers(model) - before).sum()
    return moved


def test_alpha_is_the_centre_rate_under_adam_with_the_paper_rule_only():
    """The README's claim: Adam cancels alpha in the gradient rule; the paper's rule keeps it."""
    gradient = _first_step_sizes("gradient")
    assert gradient[0.1] / gradient[1.0] > 0.9  # Adam's first step is ~lr * sign(g)
    paper = _first_step_sizes("paper")
    assert paper[1.0] > 0
    np.testing.assert_allclose(paper[0.1] / paper[1.0], 0.1, rtol=1e-4)


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"num_classes": 0}, "num_classes=0 is invalid: must be in [1, inf]"),
        ({"num_classes": 2.5}, "num_classes=2.5 is invalid: must be int, got float"),
        ({"num_classes": True}, "must be int, got bool"),
        ({"alpha": -0.5}, "alpha=-0.5 is invalid: must be in [0.0, 1.0]"),
        ({"alpha": 2.0}, "alpha=2.0 is invalid"),
        ({"update": "sgd"}, "update='sgd' is invalid: must be one of 'gradient', 'paper'"),
        (
            {"lambda_": 0.1},
            "has no parameter 'lambda_'; its parameters are: num_classes, alpha, update",
        ),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("center", **values)
    assert "'center'" in str(info.value)
    assert fragment in str(info.value)


def test_bad_feature_and_label_shapes_are_explained():
    with pytest.raises(lossplug.InvalidTensorError, match=r"features must have shape \(batch, D\)"):
        run(np.array([0]), np.zeros((1,), np.float32))
    with pytest.raises(
        lossplug.InvalidTensorError, match=r"y_true must hold class ids of shape \(batch,\)"
    ):
        run(np.zeros((2, 3)), np.zeros((2, 4), np.float32), num_classes=10)


def test_out_of_range_class_ids_fail_loudly():
    with pytest.raises(
        lossplug.InvalidTensorError, match=r"outside \[0, num_classes=3\): smallest offending id 12"
    ):
        run(np.array([0, 12]), np.zeros((2, 4), np.float32), num_classes=3)
    with pytest.raises(lossplug.InvalidTensorError, match="num_classes=<the number"):
        run(np.array([-1]), np.zeros((1, 4), np.float32), num_classes=3)


def test_missing_exposed_layer_names_the_tensor():
    inputs = keras.Input((8,))
    model = lossplug.LossModel(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(lossplug.MissingTensorError, match="needs tensor 'features'"):
        model.compile("sgd", loss=lossplug.use("center", num_classes=3))


# ----------------------------------------------------------------- training
def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def _model(loss, optimizer=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    features = keras.layers.Dense(16, activation="relu", name="features")(inputs)
    logits = keras.layers.Dense(10, name="logits")(features)
    model = lossplug.LossModel(inputs, logits, expose=["features"])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="ce")
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(0.01), loss=[ce, *loss], metrics=["accuracy"]
    )
    return model


def _intra_inter(model, x, y):
    """Mean distance of features to their class mean, and mean distance between class means."""
    extractor = keras.Model(model.input, model.get_layer("features").output)
    feats = extractor.predict(x, verbose=0)
    means = np.stack([feats[y == k].mean(0) for k in range(10)])
    intra = np.linalg.norm(feats - means[y], axis=1).mean()
    inter = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(10, dtype=bool)].mean()
    return intra, inter, means


def _centers(model):
    return next(w for w in model.weights if w.path.endswith("centers")).numpy()


@pytest.mark.slow
def test_center_loss_tightens_classes_on_digits(tmp_path):
    x, y = _digits()
    plain = _model([])
    plain.fit(x, y, epochs=3, batch_size=32, verbose=0)
    centred = _model([lossplug.use("center", weight=0.2, num_classes=10, alpha=1.0)])
    history = centred.fit(x, y, epochs=3, batch_size=32, verbose=0).history
    # the total falls; the center term itself first grows with the features it measures
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["accuracy"][-1] > 0.85

    intra_plain, inter_plain, _ = _intra_inter(plain, x, y)
    intra_centred, inter_centred, means = _intra_inter(centred, x, y)
    assert intra_centred < 0.6 * intra_plain
    # not a mere rescaling of the feature space: classes are tighter relative to their spacing
    assert intra_centred / inter_centred < 0.9 * intra_plain / inter_plain
    # the learnt centres sit near the class means of the features
    centers = _centers(centred)
    assert (
        np.linalg.norm(centers - means, axis=1).mean() < 0.5 * np.linalg.norm(means, axis=1).mean()
    )

    path = tmp_path / "centred.keras"
    centred.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_centers(loaded), centers)


@pytest.mark.slow
def test_alpha_sets_the_centre_rate_under_sgd():
    """With plain SGD, the centres move alpha times as far in the first step."""
    x, y = _digits()
    moved = {}
    for alpha in (0.0, 0.25, 1.0):
        model = _model(
            [lossplug.use("center", num_classes=10, alpha=alpha)],
            optimizer=keras.optimizers.SGD(0.1),
        )
        before = _centers(model).copy()
        model.fit(x[:128], y[:128], epochs=1, batch_size=128, verbose=0)
        moved[alpha] = np.abs(_centers(model) - before).sum()
    assert moved[0.0] == 0.0
    assert moved[1.0] > 0
    np.testing.assert_allclose(moved[0.25], 0.25 * moved[1.0], rtol=1e-4)

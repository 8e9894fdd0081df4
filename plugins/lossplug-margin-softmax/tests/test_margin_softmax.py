"""Tests of the margin_softmax plugin: the margins against their papers' formulas, the
neutral margin, stability, configuration and training.

Backend-neutral: keras.ops, NumPy and the kit's harness for gradients (with respect to the
features and the class weights, the plugin's trainable state); float64 stays float64 on
JAX (64-bit mode where the tests need it)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attrs
import keras
import lossplug
import lossplug_margin_softmax as plugin
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops
from lossplug import backend
from lossplug.extras import Extras, StateStore
from lossplug.properties import Example
from lossplug.terms import call_plugin
from lossplug.testing import call_plugin as kit_call
from lossplug.testing import conformance_tests
from lossplug.testing.harness import harness_for
from lossplug_margin_softmax.margins import MARGIN_RANGES, NEUTRAL_MARGINS, angle, target_logit
from stats_helpers import two_proportion_z

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
KINDS = ("arcface", "cosface", "sphereface")
#: float64 tensors exist inside this context on every backend (JAX: 64-bit mode)
float64_available = backend.current().kit_scope
#: Eager JAX compiles every op for each new shape (seconds each): there, the examples are
#: drawn with a few shapes (either end of each range), so the compilations are reused.
FEW_SHAPES = backend.name() == "jax"


def sizes(low, high):
    """An int in [low, high]; on JAX either end of the range."""
    return st.sampled_from([low, high]) if FEW_SHAPES else st.integers(low, high)


# ----------------------------------------------------------------------------- helpers
def run(labels, features, weights=None, *, grads=False, **values):
    """Call the plugin as the core does; ``weights`` overwrite the class weights W.

    With ``grads``: (loss, d sum(loss) / d features, d sum(loss) / d W), through the kit's
    harness (the backend's autodiff; W as the plugin's trainable state)."""
    cfg = plugin.SPEC.make_config(values)
    if grads:
        state = {} if weights is None else {"class_weights": np.asarray(weights)}
        example = Example({"y_true": labels}, {"features": features}, cfg, state=state)
        outcome, g, g_state = harness_for("margin_softmax").gradients(example, ["features"])
        assert outcome.per_sample
        return outcome.loss.astype(np.float64), g["features"], g_state["class_weights"]
    store = StateStore(plugin="margin_softmax")
    extras = Extras(
        config=cfg,
        epoch=ops.convert_to_tensor(np.int32(0)),
        step=ops.convert_to_tensor(np.int32(0)),
        training=True,
        state=store,
    )
    labels, features = ops.convert_to_tensor(labels), ops.convert_to_tensor(features)

    def call():
        return call_plugin(
            plugin.SPEC,
            plugin.build_loss_graph,
            {"y_true": labels},
            {"features": features},
            extras,
            term="margin_softmax",
        )

    call()  # creates W
    if weights is not None:
        store.set_values({"class_weights": np.asarray(weights)})
    out = call()
    assert out.per_sample
    return ops.convert_to_numpy(out.loss).astype(np.float64)


def _zero():
    return ops.convert_to_tensor(np.int32(0))


def reference(
    labels, features, weights, kind, scale, margin, easy_margin=False, lam=0.0, sub_centers=1
):
    """The papers' formulas in float64 NumPy: angles from arccos, margin on the target only.

    Sub-center ArcFace (Deng et al. 2020): W has K columns per class (j * K + k) and
    cos theta_j = max_k cos theta_jk, the margin then applies to the target's maximum."""
    x = np.asarray(features, np.float64)
    w = np.asarray(weights, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    cos = (x @ w).reshape(len(x), -1, sub_centers).max(axis=2)
    rows = np.arange(len(labels))
    c = np.clip(cos[rows, labels], -1.0, 1.0)
    theta = np.arccos(c)
    if kind == "arcface":
        if easy_margin:
            phi = np.where(c > 0, np.cos(theta + margin), c)
        else:
            phi = np.where(
                theta + margin <= np.pi, np.cos(theta + margin), c - margin * np.sin(margin)
            )
    elif kind == "cosface":
        phi = c - margin
    else:
        k = np.floor(margin * theta / np.pi)
        psi = (-1.0) ** k * np.cos(margin * theta) - 2 * k
        phi = (lam * c + psi) / (1 + lam)
    logits = scale * cos
    logits[rows, labels] = scale * phi
    top = logits.max(axis=1)
    return top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[rows, labels]


def loss_of(labels, features, weights, **values):
    """The per-sample loss from the pure function (no state store): fast, for the maths."""
    cfg = plugin.SPEC.make_config(values)
    with float64_available():
        tensors = [ops.convert_to_tensor(t) for t in (features, labels, weights)]
        loss = plugin.margin_softmax_loss(*tensors, cfg)
        return ops.convert_to_numpy(loss).astype(np.float64)


@st.composite
def problems(draw):
    n = draw(sizes(1, 6))
    dim = draw(sizes(2, 5))
    classes = draw(sizes(2, 6))
    unit = st.floats(-1.0, 1.0, allow_nan=False)
    features = draw(hnp.arrays(np.float64, (n, dim), elements=unit))
    weights = draw(hnp.arrays(np.float64, (dim, classes), elements=unit))
    labels = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, classes - 1)))
    features[np.linalg.norm(features, axis=1) < 1e-3, 0] = 1.0  # directions must exist
    weights[0, np.linalg.norm(weights, axis=0) < 1e-3] = 1.0
    return labels, features, weights, classes


@st.composite
def sub_center_problems(draw):
    """(labels, features, W with K columns per class, classes, K)."""
    labels, features, _, classes = draw(problems())
    sub_centers = draw(sizes(1, 4))
    unit = st.floats(-1.0, 1.0, allow_nan=False)
    weights = draw(
        hnp.arrays(np.float64, (features.shape[1], classes * sub_centers), elements=unit)
    )
    weights[0, np.linalg.norm(weights, axis=0) < 1e-3] = 1.0
    return labels, features, weights, classes, sub_centers


@st.composite
def kind_configs(draw):
    kind = draw(st.sampled_from(KINDS))
    low, high = MARGIN_RANGES[kind]
    values = {
        "kind": kind,
        "margin": draw(st.floats(low, high)),
        "scale": draw(st.floats(1.0, 64.0)),
    }
    if kind == "arcface":
        values["easy_margin"] = draw(st.booleans())
    if kind == "sphereface":
        values["sphere_lambda"] = draw(st.sampled_from([0.0, 0.5, 5.0]))
    return values


# ----------------------------------------------------------------------------- the maths
@SETTINGS
@given(problem=problems(), values=kind_configs())
def test_loss_equals_the_papers_formulas(problem, values):
    labels, features, weights, classes = problem
    got = loss_of(labels, features, weights, num_classes=classes, **values)
    expected = reference(
        labels,
        features,
        weights,
        values["kind"],
        values["scale"],
        values["margin"],
        values.get("easy_margin", False),
        values.get("sphere_lambda", 0.0),
    )
    # arccos in the reference loses ~1e-8 rad near theta = 0 and pi; the plugin uses atan2
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * values["scale"])


@SETTINGS
@given(problem=problems(), kind=st.sampled_from(KINDS), scale=st.floats(0.5, 64.0))
def test_neutral_margin_equals_normalised_softmax_cross_entropy(problem, kind, scale):
    labels, features, weights, classes = problem
    values = {"kind": kind, "scale": scale, "margin": NEUTRAL_MARGINS[kind]}
    got = run(
        labels,
        features.astype(np.float32),
        weights.astype(np.float32),
        num_classes=classes,
        **values,
    )  # through the core, float32
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    expected = ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(labels, scale * (x @ w), from_logits=True)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    claimed = plugin.normalised_softmax_reference(
        Example(
            inputs={"y_true": labels},
            outputs={"features": features},
            config=plugin.SPEC.make_config({"num_classes": classes, **values}),
            state={"class_weights": weights},
        )
    )
    np.testing.assert_allclose(claimed, expected, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(problem=problems(), values=kind_configs())
def test_loss_is_non_negative_and_grows_with_the_margin(problem, values):
    labels, features, weights, classes = problem
    values = {**values, "num_classes": classes}
    assert np.all(loss_of(labels, features.astype(np.float32), weights, **values) >= 0.0)
    example = Example(
        inputs={"y_true": labels},
        outputs={"features": features},
        config=plugin.SPEC.make_config(values),
        state={"class_weights": weights},
    )

    def loss_fn(ex):
        return loss_of(
            ex.inputs["y_true"],
            ex.outputs["features"],
            ex.state["class_weights"],
            **attrs.asdict(ex.config),
        )

    plugin._check_monotone_in_margin(example, loss_fn)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("margin_position", ["low", "default", "high"])
def test_target_logit_is_continuous_enough_and_decreasing_in_the_angle(kind, margin_position):
    low, high = MARGIN_RANGES[kind]
    margin = {"low": low, "high": high, "default": plugin.margins.DEFAULT_MARGINS[kind]}[
        margin_position
    ]
    theta = np.linspace(0.0, np.pi, 20001)
    with float64_available():
        c, s = ops.convert_to_tensor(np.cos(theta)), ops.convert_to_tensor(np.sin(theta))
        phi = ops.convert_to_numpy(target_logit(c, s, kind, margin))
    assert np.all(np.diff(phi) <= 1e-12), "phi must not increase with the angle"
    assert np.all(phi <= np.cos(theta) + 1e-12), "the margin must never help the target class"
    if kind == "sphereface":
        assert np.max(np.abs(np.diff(phi))) < 1e-2  # psi is continuous
    if kind == "arcface" and margin > 0:
        # the standard fallback's only jump is at theta = pi - m, of size cos m + m sin m - 1
        jumps = np.flatnonzero(np.abs(np.diff(phi)) > 1e-2)
        assert np.all(np.abs(theta[jumps] - (np.pi - margin)) < 1e-3)


def test_easy_margin_only_applies_to_positive_cosines():
    theta = np.linspace(0.0, np.pi, 1001)
    with float64_available():
        c, s = ops.convert_to_tensor(np.cos(theta)), ops.convert_to_tensor(np.sin(theta))
        phi = ops.convert_to_numpy(target_logit(c, s, "arcface", 0.5, easy_margin=True))
    positive = np.cos(theta) > 0
    np.testing.assert_allclose(phi[positive], np.cos(theta[positive] + 0.5), atol=1e-12)
    np.testing.assert_allclose(phi[~positive], np.cos(theta[~positive]), atol=1e-12)


def test_angle_is_accurate_where_arccos_is_not():
    """theta = atan2(sin, cos) keeps full precision for tiny angles (arccos(cos) cannot)."""
    tiny = np.array([1e-9, 1e-7, 1e-5], np.float64)
    features = np.stack([np.cos(tiny), np.sin(tiny)], axis=1)
    weight = np.tile([[1.0, 0.0]], (3, 1))
    from lossplug_margin_softmax.margins import cosine_and_sine

    with float64_available():
        c, s = cosine_and_sine(ops.convert_to_tensor(features), ops.convert_to_tensor(weight))
        np.testing.assert_allclose(ops.convert_to_numpy(angle(c, s)), tiny, rtol=1e-6)
    f32 = cosine_and_sine(
        ops.convert_to_tensor(features, "float32"), ops.convert_to_tensor(weight, "float32")
    )
    # float32 cos would say 0
    np.testing.assert_allclose(ops.convert_to_numpy(angle(*f32)), tiny, rtol=1e-3)


# ----------------------------------------------------------------------------- sub-centres
def kit_loss(labels, features, weights, **values):
    """The installed plugin through the kit's harness, W set as its state (float32 result)."""
    with float64_available():
        loss, _ = kit_call(
            "margin_softmax",
            {"y_true": labels},
            {"features": features},
            config=values,
            state={"class_weights": weights},
        )
    return np.asarray(loss, np.float64)


@SETTINGS
@given(problem=sub_center_problems(), values=kind_configs())
def test_sub_center_loss_equals_the_papers_formula(problem, values):
    labels, features, weights, classes, sub_centers = problem
    config = {"num_classes": classes, "sub_centers": sub_centers, **values}
    got = kit_loss(labels, features, weights, **config)
    expected = reference(
        labels,
        features,
        weights,
        values["kind"],
        values["scale"],
        values["margin"],
        values.get("easy_margin", False),
        values.get("sphere_lambda", 0.0),
        sub_centers=sub_centers,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * values["scale"])


@settings(SETTINGS, max_examples=20)  # three harness calls per example
@given(problem=problems(), values=kind_configs(), copies=st.integers(2, 4))
def test_one_sub_center_is_the_plain_loss_and_copies_of_a_centre_are_one_centre(
    problem, values, copies
):
    """K = 1 is exactly the loss without sub-centres; K identical sub-centres per class
    give the one-centre loss."""
    labels, features, weights, classes = problem
    plain = kit_loss(labels, features, weights, num_classes=classes, **values)
    one = kit_loss(labels, features, weights, num_classes=classes, sub_centers=1, **values)
    np.testing.assert_array_equal(one, plain)
    repeated = np.repeat(weights, copies, axis=1)  # column j * K + k is a copy of column j
    many = kit_loss(labels, features, repeated, num_classes=classes, sub_centers=copies, **values)
    np.testing.assert_allclose(many, plain, rtol=1e-6, atol=1e-6 * values["scale"])


def test_the_margin_acts_on_the_nearest_target_sub_center_only():
    """Two sub-centres of class 0 at 10 and 60 degrees from x: ArcFace's target angle is 10
    degrees; class 1's sub-centres at 80 and 120 degrees give its cosine cos 80."""
    degrees = np.radians([10.0, 60.0, 80.0, 120.0])
    weights = np.stack([np.cos(degrees), np.sin(degrees)])  # (2, 2 classes * 2 sub-centres)
    features = np.array([[1.0, 0.0]])
    loss = kit_loss(np.array([0]), features, weights, num_classes=2, sub_centers=2, scale=8.0)
    target, other = 8.0 * np.cos(np.radians(10.0) + 0.5), 8.0 * np.cos(np.radians(80.0))
    assert loss[0] == pytest.approx(np.logaddexp(target, other) - target, rel=1e-5)


def test_only_the_nearest_sub_centres_receive_gradients():
    weights = np.array([[1.0, 0.0, 0.6, -0.8], [0.0, 1.0, 0.8, 0.6]], np.float32)
    features = np.array([[0.9, 0.1]], np.float32)  # nearest: sub-centre 0 of 0, 0 of 1
    _, _, g_weights = run(
        np.array([0], np.int32), features, weights, grads=True, num_classes=2, sub_centers=2
    )
    assert np.abs(g_weights[:, [0, 2]]).max() > 1e-3
    np.testing.assert_array_equal(g_weights[:, [1, 3]], 0.0)


def test_sub_centers_multiply_the_columns_of_the_class_weights():
    store = StateStore(plugin="margin_softmax")
    cfg = plugin.SPEC.make_config({"num_classes": 7, "sub_centers": 3})
    extras = Extras(config=cfg, epoch=_zero(), step=_zero(), training=False, state=store)
    plugin.build_loss_graph(
        {"y_true": ops.convert_to_tensor([1, 6])}, {"features": ops.ones((2, 5))}, extras
    )
    (variable,) = store.trainable_variables
    assert tuple(variable.shape) == (5, 21)


def test_nearest_class_takes_the_nearest_sub_center_of_every_class():
    degrees = np.radians([10.0, 170.0, 80.0, 100.0])  # class 0 at 10 and 170, class 1 at 80, 100
    weights = np.stack([np.cos(degrees), np.sin(degrees)])
    angles = np.radians([0.0, 30.0, 70.0, 150.0, 180.0])
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    classes, centres = plugin.nearest_class(features, weights, 2, return_sub_center=True)
    np.testing.assert_array_equal(classes, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(centres, [0, 0, 0, 1, 1])
    # one centre per class: the usual nearest class direction
    np.testing.assert_array_equal(
        plugin.nearest_class(features, weights[:, [0, 2]]), [0, 0, 1, 1, 1]
    )


@pytest.mark.parametrize(("value", "fragment"), [(0, "sub_centers=0 is invalid"), (1.5, "int")])
def test_bad_sub_centers_are_rejected(value, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="margin_softmax") as info:
        lossplug.use("margin_softmax", sub_centers=value)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- stability
@pytest.mark.parametrize(
    "values",
    [
        {"kind": "arcface"},
        {"kind": "arcface", "easy_margin": True},
        {"kind": "arcface", "margin": math.pi / 2},
        {"kind": "cosface"},
        {"kind": "sphereface"},
        {"kind": "sphereface", "margin": 8.0, "sphere_lambda": 5.0},
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_finite_loss_and_gradients_at_the_singular_points(values):
    """Features exactly on (cos = 1) or opposite (cos = -1) their class weight, zero features,
    zero weight columns: the places where arccos / sqrt(1 - c^2) give NaN gradients."""
    weights = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # 3rd column is zero
    features = np.array([[3.0, 0.0], [-2.0, 0.0], [0.0, 0.0], [0.0, 5.0], [1.0, 1.0]], np.float32)
    labels = np.array([0, 0, 1, 1, 2], np.int32)
    loss, g_features, g_weights = run(
        labels, features, weights, grads=True, num_classes=3, scale=64.0, **values
    )
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
    assert np.all(np.isfinite(g_features)) and np.all(np.isfinite(g_weights))


@pytest.mark.parametrize("kind", KINDS)
def test_float16_features_at_scale_64_match_float32(kind):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(32, 16)).astype(np.float16)
    weights = rng.normal(size=(16, 100)).astype(np.float32)
    labels = rng.integers(0, 100, 32).astype(np.int32)
    low = loss_of(labels, features, weights, num_classes=100, kind=kind, scale=64.0)
    high = loss_of(
        labels, features.astype(np.float32), weights, num_classes=100, kind=kind, scale=64.0
    )
    assert np.all(np.isfinite(low))
    np.testing.assert_allclose(low, high, rtol=1e-5, atol=1e-4)


def test_initial_loss_and_gradients_are_finite_with_many_classes():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 32)).astype(np.float32)
    labels = rng.integers(0, 5000, 64).astype(np.int32)
    for kind in KINDS:
        loss, g_features, g_weights = run(
            labels, features, None, grads=True, num_classes=5000, kind=kind, scale=64.0
        )
        assert np.all(np.isfinite(loss)) and np.isfinite(g_features).all()
        assert np.isfinite(g_weights).all() and np.abs(g_weights).max() > 0


def test_class_weights_are_one_trainable_state_variable():
    store = StateStore(plugin="margin_softmax")
    cfg = plugin.SPEC.make_config({"num_classes": 7})
    extras = Extras(config=cfg, epoch=_zero(), step=_zero(), training=False, state=store)
    for _ in range(2):
        plugin.build_loss_graph(
            {"y_true": ops.convert_to_tensor([1, 2])}, {"features": ops.ones((2, 5))}, extras
        )
    (variable,) = store.trainable_variables
    assert tuple(variable.shape) == (5, 7)
    assert variable.path.endswith("class_weights")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"kind": "arcface", "margin": 2.0}, "outside [0, 1.5708] for kind='arcface'"),
        ({"kind": "cosface", "margin": -0.1}, "outside [0, 1] for kind='cosface'"),
        ({"kind": "sphereface", "margin": 0.5}, "outside [1, 8] for kind='sphereface'"),
        ({"kind": "cosface", "easy_margin": True}, "kind='arcface' only"),
        ({"kind": "arcface", "sphere_lambda": 5.0}, "kind='sphereface' only"),
        ({"kind": "normface"}, "kind='normface' is invalid"),
        ({"num_classes": 1}, "num_classes=1 is invalid"),
        ({"num_classes": 10.0}, "num_classes=10.0 is invalid"),
        ({"scale": 0.0}, "scale=0.0 is invalid"),
        ({"margin": "0.5"}, "margin='0.5' is invalid"),
        ({"margin": float("nan")}, "margin=nan is outside"),
    ],
)
def test_bad_configuration_is_rejected_with_the_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError, match="margin_softmax") as info:
        lossplug.use("margin_softmax", **values)
    assert fragment in str(info.value)


def test_margin_none_means_the_papers_value():
    for kind, value in plugin.margins.DEFAULT_MARGINS.items():
        assert plugin.SPEC.make_config({"kind": kind}).resolved_margin == value


def test_labels_outside_the_classes_are_reported():
    with pytest.raises(
        lossplug.InvalidTensorError,
        match=r"^loss plugin 'margin_softmax'.*num_classes=3\): smallest offending id 3, largest 5",
    ):
        run(np.array([0, 3, 5], np.int32), np.ones((3, 4), np.float32), num_classes=3)


@pytest.mark.parametrize(
    ("labels", "features", "fragment"),
    [
        (np.eye(3, dtype=np.float32), np.ones((3, 4), np.float32), "one-hot"),
        (np.array([0, 1, 2], np.int32), np.ones((3, 2, 2), np.float32), "shape (batch, dim)"),
    ],
)
def test_wrong_tensor_shapes_are_reported(labels, features, fragment):
    with pytest.raises(lossplug.InvalidTensorError, match="margin_softmax") as info:
        run(labels, features, num_classes=3)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_training_on_digits_learns_class_weights_that_classify(kind, tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    features = keras.layers.Dense(16, name="features")(hidden)
    model = lossplug.LossModel(inputs, features)
    extra = {"sphere_lambda": 5.0} if kind == "sphereface" else {}
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=lossplug.use("margin_softmax", num_classes=10, kind=kind, scale=16.0, **extra),
    )
    history = model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    losses = history.history["margin_softmax"]
    assert all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0], losses

    def weights_of(m):
        return next(v for v in m.weights if v.path.endswith("class_weights")).numpy()

    def accuracy(m):
        f = m.predict(x, verbose=0)
        w = weights_of(m)
        cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
            w / np.linalg.norm(w, axis=0, keepdims=True)
        )
        return float(np.mean(cos.argmax(axis=1) == y))

    assert accuracy(model) > 0.85
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(weights_of(loaded), weights_of(model))
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        model.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        rtol=1e-5,
    )


def _train_on_noisy_digits(sub_centers, x, y_noisy):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    features = keras.layers.Dense(16, name="features")(hidden)
    model = lossplug.LossModel(inputs, features)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=lossplug.use("margin_softmax", num_classes=10, scale=16.0, sub_centers=sub_centers),
    )
    model.fit(x, y_noisy, epochs=20, batch_size=64, verbose=0)
    weights = next(v for v in model.weights if v.path.endswith("class_weights")).numpy()
    return model, weights


@pytest.mark.slow
def test_sub_centers_resist_label_noise_on_digits():
    """40% of the training labels replaced by another class: with three sub-centres per class
    (the paper's K) the clean test accuracy stays higher than with one, and the samples with
    a wrong label gather at non-dominant sub-centres (Deng et al. 2020, Sec. 3.1)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:1200], order[1200:]
    y_noisy = y[train].copy()
    flipped = rng.random(len(train)) < 0.4
    y_noisy[flipped] = (y_noisy[flipped] + rng.integers(1, 10, flipped.sum())) % 10
    accuracy, at_dominant = {}, {}
    for k in (1, 3):
        model, weights = _train_on_noisy_digits(k, x[train], y_noisy)
        predicted = plugin.nearest_class(model.predict(x[test], verbose=0), weights, k)
        accuracy[k] = float(np.mean(predicted == y[test]))
        if k == 3:
            f = model.predict(x[train], verbose=0)
            f = f / np.linalg.norm(f, axis=1, keepdims=True)
            cos = (f @ (weights / np.linalg.norm(weights, axis=0))).reshape(len(f), 10, k)
            own = cos[np.arange(len(f)), y_noisy].argmax(axis=1)  # nearest own sub-centre
            counts = [np.bincount(own[y_noisy == c], minlength=k) for c in range(10)]
            dominant = np.array([c.argmax() for c in counts])[y_noisy]
            away = own != dominant  # at a non-dominant sub-centre of its (given) class
            at_dominant = {
                "clean": 1.0 - float(np.mean(away[~flipped])),
                "noisy": 1.0 - float(np.mean(away[flipped])),
            }
            z = two_proportion_z(away[flipped], away[~flipped])
    print(
        f"\nclean test accuracy with 40% label noise: sub_centers=1 {accuracy[1]:.3f}, "
        f"sub_centers=3 {accuracy[3]:.3f}; at the dominant sub-centre: clean samples "
        f"{at_dominant['clean']:.3f}, mislabelled samples {at_dominant['noisy']:.3f} (z = {z:.1f})"
    )
    assert accuracy[3] > accuracy[1] + 0.02
    # mislabelled samples sit away from the dominant sub-centre significantly more often
    # than clean ones (one-sided, p < 0.001); how much more varies with the backend's
    # random streams (0.08 to 0.3 of them against 0 to 0.08 of the clean ones)
    assert z > 3.1


test_conformance = conformance_tests("margin_softmax")

"""Tests of the asymmetric plugin: the paper's formulas, Keras' BCE and focal, config, training."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import attrs
import keras
import lossplug
import lossplug_asymmetric as plugin
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from lossplug.properties import Example
from lossplug.testing import call_plugin, conformance_tests
from lossplug.testing.harness import harness_for
from lossplug_asymmetric import claims

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# The conformance kit: every generic check plus one check per claimed property.
test_conformance = conformance_tests("asymmetric")


def run(y_true, y_pred, **config):
    """The installed plugin's per-sample loss as float64 NumPy."""
    loss, _ = call_plugin("asymmetric", {"y_true": y_true}, {"y_pred": y_pred}, config=config)
    assert loss.shape == (np.shape(y_pred)[0],)
    return loss.astype(np.float64)


def gradient(y_true, y_pred, **config):
    """d sum(loss) / d y_pred through the kit's harness (no TensorFlow import here)."""
    example = Example({"y_true": y_true}, {"y_pred": y_pred}, plugin.SPEC.make_config(config))
    _, grads, _ = harness_for("asymmetric").gradients(example, ["y_pred"])
    return grads["y_pred"]


def official_form(t, z, gamma_pos, gamma_neg, clip, eps):
    """The loss written as the authors' code computes it (multi-hot t), in float64.

    xs_neg = min(1 - p + clip, 1), logs of probabilities clamped at eps, and one
    focusing weight (1 - pt)^(gamma_pos t + gamma_neg (1 - t)); summed over labels.
    """
    p = 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))
    xs_neg = np.minimum(1.0 - p + clip, 1.0) if clip > 0 else 1.0 - p
    with np.errstate(divide="ignore"):
        loss = t * np.log(np.maximum(p, eps)) + (1 - t) * np.log(np.maximum(xs_neg, eps))
    pt = p * t + xs_neg * (1 - t)
    loss = loss * (1.0 - pt) ** (gamma_pos * t + gamma_neg * (1 - t))
    return -loss.sum(-1)


@st.composite
def multilabel(draw, scale=12.0):
    b = draw(st.integers(1, 6))
    c = draw(st.integers(1, 8))
    logits = draw(hnp.arrays(np.float32, (b, c), elements=st.floats(-scale, scale, width=32)))
    t = draw(hnp.arrays(np.float32, (b, c), elements=st.sampled_from([0.0, 1.0])))
    return t, logits


gammas = st.floats(0.0, 6.0)
clips = st.one_of(st.just(0.0), st.floats(0.0, 0.5))
epss = st.sampled_from([0.0, 1e-8, 1e-3])


# ----------------------------------------------------------------- mathematics
@SETTINGS
@given(multilabel(), gammas, gammas, clips, epss)
def test_matches_the_authors_formulation(batch, gamma_pos, gamma_neg, clip, eps):
    t, z = batch
    got = run(t, z, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps)
    expected = official_form(t, z, gamma_pos, gamma_neg, clip, eps)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-5)
    mean = run(t, z, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps, reduction="mean")
    np.testing.assert_allclose(mean, expected / z.shape[-1], rtol=2e-5, atol=1e-5)


@SETTINGS
@given(multilabel(scale=8.0), st.booleans())
def test_no_focusing_no_margin_is_keras_binary_crossentropy(batch, from_logits):
    t, z = batch
    y_pred = z if from_logits else keras.ops.convert_to_numpy(keras.ops.sigmoid(z))
    bce = keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(t, y_pred, from_logits=from_logits)
    )
    plain = {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0, "eps": 0.0}
    got = run(t, y_pred, from_logits=from_logits, reduction="mean", **plain)
    np.testing.assert_allclose(got, bce, rtol=1e-4, atol=1e-5)
    summed = run(t, y_pred, from_logits=from_logits, **plain)
    np.testing.assert_allclose(summed, bce * z.shape[-1], rtol=1e-4, atol=1e-5)


@SETTINGS
@given(multilabel(scale=8.0), gammas)
def test_equal_gammas_without_margin_is_keras_binary_focal(batch, gamma):
    t, z = batch
    focal = keras.ops.convert_to_numpy(
        keras.losses.binary_focal_crossentropy(t, z, gamma=gamma, from_logits=True)
    )
    got = run(t, z, gamma_pos=gamma, gamma_neg=gamma, clip=0.0, eps=0.0, reduction="mean")
    np.testing.assert_allclose(got, focal, rtol=1e-3, atol=1e-5)


@SETTINGS
@given(multilabel(), st.floats(0.0, 2.0), st.floats(0.0, 0.3))
def test_monotone_non_negative_and_finite_at_extremes(batch, gamma_pos, clip):
    t, z = batch
    for scale in (1.0, 1e3):
        by_gamma = [
            run(t, z * scale, gamma_pos=gamma_pos, gamma_neg=g, clip=clip) for g in (0, 1, 4)
        ]
        by_clip = [run(t, z * scale, gamma_pos=gamma_pos, clip=m) for m in (0.0, 0.05, 0.3, 1.0)]
        for losses in (by_gamma, by_clip):
            assert np.all(np.isfinite(losses)) and np.all(np.asarray(losses) >= 0)
            for smaller, larger in zip(losses[1:], losses, strict=False):
                assert np.all(smaller <= larger + 1e-6)
        # clip = 1 discards every negative: only the positives' focal terms remain
        positives_only = run(t, z * scale, gamma_pos=gamma_pos, clip=1.0)
        np.testing.assert_allclose(
            positives_only, run(t, np.where(t > 0, z * scale, -50.0), gamma_pos=gamma_pos, clip=1.0)
        )


def test_margin_discards_easy_negatives_and_hard_thresholds_at_clip():
    t = np.zeros((1, 3), np.float32)
    m = 0.05
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    z = np.array([[logit(0.01), logit(0.049), logit(0.2)]], np.float32)
    # only the third label (p = 0.2 > m) costs: p_m = 0.15, loss p_m^4 * -log(1 - p_m)
    expected = 0.15**4 * -np.log(0.85)
    np.testing.assert_allclose(run(t, z, clip=m), [expected], rtol=1e-4)
    np.testing.assert_allclose(run(t[:, :2], z[:, :2], clip=m), [0.0], atol=0)
    assert run(t[:, :2], z[:, :2], clip=0.0)[0] > 0  # without the margin they do cost
    grad = gradient(t, z, clip=m)
    assert np.all(grad[0, :2] == 0) and grad[0, 2] > 0


def test_eps_floor_caps_each_label_at_minus_log_eps():
    """The official clamp: a positive with p < eps costs -log(eps) and gets no gradient."""
    t = np.ones((1, 1), np.float32)
    z = np.array([[-1e4]], np.float32)
    np.testing.assert_allclose(run(t, z, eps=1e-8), [-np.log(1e-8)], rtol=1e-6)
    assert gradient(t, z, eps=1e-8)[0, 0] == 0
    np.testing.assert_allclose(run(t, z, eps=0.0), [1e4], rtol=1e-6)
    np.testing.assert_allclose(gradient(t, z, eps=0.0), [[-1.0]])


@pytest.mark.parametrize("gamma_neg", [0.0, 0.3, 4.0])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_gradients_finite_at_saturated_logits(gamma_neg, clip):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0]], np.float32)
    t = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
    grad = gradient(t, z, gamma_pos=0.5, gamma_neg=gamma_neg, clip=clip, eps=0.0)
    assert np.all(np.isfinite(grad))
    assert grad[1, 0] < -0.5  # a missed positive at logit -1e4 still pulls up


def test_class_ids_are_one_positive_per_sample():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3)).astype(np.float32) * 3
    ids = np.array([0, 2, 1, 2])
    np.testing.assert_allclose(run(ids, z), run(np.eye(3, dtype=np.float32)[ids], z), rtol=1e-6)


def test_probabilities_agree_with_logits():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5, 4)).astype(np.float32) * 3
    t = (rng.random((5, 4)) < 0.3).astype(np.float32)
    p = keras.ops.convert_to_numpy(keras.ops.sigmoid(z))
    np.testing.assert_allclose(run(t, p, from_logits=False), run(t, z), rtol=1e-4, atol=1e-5)
    saturated = np.array([[1.0, 0.0]], np.float32)
    loss = run(np.array([[0.0, 1.0]], np.float32), saturated, from_logits=False, clip=0.0)
    assert np.isfinite(loss).all() and loss[0] > 10


def test_claim_helpers_hold_on_an_example():
    rng = np.random.default_rng(2)
    for from_logits in (True, False):
        z = rng.normal(size=(5, 4)).astype(np.float32) * 4
        y_pred = z if from_logits else keras.ops.convert_to_numpy(keras.ops.sigmoid(z))
        t = (rng.random((5, 4)) < 0.4).astype(np.float32)
        config = plugin.SPEC.make_config({"gamma_pos": 1.0, "from_logits": from_logits})
        example = Example({"y_true": t}, {"y_pred": y_pred}, config)

        def loss_fn(ex):
            return run(ex.inputs["y_true"], ex.outputs["y_pred"], **attrs.asdict(ex.config))

        claims.check_matches_the_paper(example, loss_fn)
        claims.check_focal_at_equal_gammas(example, loss_fn)
        claims.check_clip_discards_easy_negatives(example, loss_fn)
        np.testing.assert_allclose(loss_fn(claims.perfect(example)), 0.0, atol=1e-5)
        plain = example.replace(
            config=attrs.evolve(config, gamma_pos=0.0, gamma_neg=0.0, clip=0.0, eps=0.0)
        )
        np.testing.assert_allclose(loss_fn(plain), claims.bce_reference(plain), rtol=1e-4)


# ----------------------------------------------------------------- config and errors
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"gamma_neg": -1.0}, "gamma_neg=-1.0 is invalid: must be in [0.0, inf]"),
        ({"gamma_pos": float("nan")}, "gamma_pos=nan is invalid"),
        ({"clip": 1.5}, "clip=1.5 is invalid: must be in [0.0, 1.0]"),
        ({"eps": 1.0}, "eps=1.0 is invalid: must be in [0.0, 1.0)"),
        ({"reduction": "batchmean"}, "reduction='batchmean' is invalid: must be one of 'sum'"),
        ({"from_logits": 0}, "from_logits=0 is invalid: must be bool"),
        ({"margin": 0.1}, "has no parameter 'margin'; its parameters are: gamma_pos"),
    ],
)
def test_config_errors_name_plugin_field_and_rule(values, fragment):
    with pytest.raises(lossplug.PluginConfigError) as info:
        lossplug.use("asymmetric", **values)
    assert "'asymmetric'" in str(info.value)
    assert fragment in str(info.value)


def test_bad_targets_are_explained():
    with pytest.raises(Exception, match=r"loss plugin 'asymmetric'.*class ids outside \[0, 3\)"):
        run(np.array([0, 3]), np.zeros((2, 3), np.float32))
    with pytest.raises(lossplug.InvalidTensorError, match=r"asymmetric.*multi-hot targets"):
        run(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


# ----------------------------------------------------------------- training
def _multilabel_digits():
    """Digits with 14 labels: the digit (10 one-vs-rest labels) and 4 attributes."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    attributes = [
        np.isin(y, [0, 2, 4, 6, 8]),  # even
        y >= 5,
        np.isin(y, [2, 3, 5, 7]),  # prime
        np.isin(y, [0, 6, 8, 9]),  # has a closed loop
    ]
    targets = np.concatenate([np.eye(10)[y], np.stack(attributes, 1)], 1).astype("float32")
    return train_test_split(
        (x / 16.0).astype("float32"), targets, test_size=0.3, random_state=0, stratify=y
    )


def _scores(x, t, x_test, loss):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    model = lossplug.LossModel(inputs, keras.layers.Dense(t.shape[-1])(hidden))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    model.fit(x, t, epochs=5, batch_size=64, verbose=0)
    return model.predict(x_test, verbose=0)


@pytest.mark.slow
def test_training_on_multilabel_digits_beats_bce_with_missing_positives():
    """ASL (by name, the paper's defaults) vs binary cross-entropy, held-out clean labels.

    With half of the training positives missing (turned into negatives), BCE learns to
    predict "absent"; ASL's down-weighted, margin-shifted negatives keep mAP and F1 up.
    """
    from sklearn.metrics import average_precision_score, f1_score

    x, x_test, t, t_test = _multilabel_digits()
    rng = np.random.default_rng(0)
    missing = t.copy()
    missing[(t == 1) & (rng.random(t.shape) < 0.5)] = 0.0
    results = {}
    for labels, train_targets in (("clean", t), ("half the positives missing", missing)):
        for name, loss in (
            ("bce", keras.losses.BinaryCrossentropy(from_logits=True)),
            ("asymmetric", "asymmetric"),
        ):
            scores = _scores(x, train_targets, x_test, loss)
            results[labels, name] = (
                float(average_precision_score(t_test, scores, average="macro")),
                float(f1_score(t_test, scores > 0, average="macro")),
            )
    print("\nmulti-label digits, held-out (macro mAP, macro F1 at p = 0.5):")
    for key, (m_ap, f1) in results.items():
        print(f"  {key[0]:>27} {key[1]:>10}: mAP {m_ap:.4f}  F1 {f1:.4f}")
    clean_bce, clean_asl = results["clean", "bce"], results["clean", "asymmetric"]
    miss_bce, miss_asl = (results["half the positives missing", n] for n in ("bce", "asymmetric"))
    assert clean_asl[0] > 0.97 and clean_asl[0] >= clean_bce[0] - 0.005
    assert miss_asl[0] > miss_bce[0] + 0.014
    assert miss_asl[1] > miss_bce[1] + 0.2

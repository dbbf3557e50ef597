"""Site calibration: temperature scaling, sample-size rule, site thresholds, cross-fitting."""

from __future__ import annotations

import numpy as np
import pytest

from lungxray.errors import ConfigError, DataError
from lungxray.site import (
    apply_temperature,
    check_sample_size,
    choose_site_threshold,
    compare_operating_points,
    crossfit_site_calibration,
    fit_temperature,
    labeled_size_curve,
    required_sample,
    to_logits,
)


def _binary(n=600, prevalence=0.6, sep=2.0, seed=0):
    """Labels (n,), calibrated P(positive) (n,) and patient ids (two images per patient)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(0, 1, n) + sep * (y - 0.5)
    return y, 1 / (1 + np.exp(-z * sep)), np.arange(n) // 2


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("0.5", (0, 0)),
        ("youden", (20, 20)),
        ("max-f1", (20, 20)),
        ("sensitivity>=0.95", (41, 20)),  # one miss moves sensitivity by 1/41 < 0.025
        ("sensitivity>=0.9", (21, 20)),
        ("sensitivity>=0.5", (20, 20)),  # the floor of 20 per class
        ("specificity>=0.99", (20, 201)),
    ],
)
def test_required_sample_table(strategy, expected):
    assert required_sample(strategy) == expected


def test_required_sample_refuses_a_target_of_one_and_unknown_strategies():
    with pytest.raises(DataError, match="cannot be estimated"):
        required_sample("sensitivity>=1.0")
    with pytest.raises(ConfigError):
        required_sample("youdem")


def test_too_small_sample_refused_with_counts():
    y = np.array([1] * 30 + [0] * 25)
    with pytest.raises(DataError, match=r"30 positive and 25 negative.*at least 41 positive and 20 negative"):
        check_sample_size(y, "sensitivity>=0.95")
    with pytest.raises(DataError, match="add 11 positive and 0 negative"):
        choose_site_threshold(y, np.linspace(0, 1, 55), "sensitivity>=0.95")
    check_sample_size(np.array([1] * 41 + [0] * 20), "sensitivity>=0.95")  # exactly enough: no error
    check_sample_size(np.array([], dtype=int), "0.5")


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_binary_temperature(true_t):
    rng = np.random.default_rng(1)
    a = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-a))).astype(int)
    t, b = fit_temperature(a * true_t, y)
    assert t == pytest.approx(true_t, rel=0.1) and b == 0.0
    t2, b2 = fit_temperature(a * true_t + 1.0, y, bias=True)  # a logit offset is what the bias removes
    assert t2 == pytest.approx(true_t, rel=0.1) and b2 == pytest.approx(-1.0 / true_t, abs=0.15)


def test_fit_temperature_multiclass_bias_vector_and_apply():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (3000, 3))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in prob])
    t, b = fit_temperature(logits * 2.0, y, bias=True)
    assert t == pytest.approx(2.0, rel=0.1) and b.shape == (3,) and abs(b.sum()) < 1e-9
    fixed = apply_temperature(
        np.exp(logits * 2.0) / np.exp(logits * 2.0).sum(1, keepdims=True), t, b, "multiclass"
    )
    np.testing.assert_allclose(fixed.sum(1), 1.0)
    np.testing.assert_allclose(fixed, prob, atol=0.08)


@pytest.mark.parametrize(
    "p, t, b, expected",
    [
        ([0.5], 3.0, 0.0, [0.5]),  # logit 0 stays 0
        ([0.9], 1.0, 0.0, [0.9]),  # T = 1 is the identity
        ([0.5], 1.0, np.log(3.0), [0.75]),  # bias shifts the logit
        ([0.0, 1.0], 2.0, 0.0, [0.0, 1.0]),  # degenerate probabilities stay (almost) put
    ],
)
def test_apply_temperature_table(p, t, b, expected):
    np.testing.assert_allclose(apply_temperature(p, t, b), expected, atol=1e-3)


@pytest.mark.parametrize(
    "logits, y", [(np.zeros(5), np.ones(5)), (np.zeros(5), np.zeros(4)), ([np.inf, 0], [0, 1])]
)
def test_fit_temperature_refuses_degenerate_input(logits, y):
    with pytest.raises(DataError):
        fit_temperature(logits, y)


def test_to_logits_inverts_each_tasks_output_activation():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(1 / (1 + np.exp(-to_logits(p))), p)
    # multilabel: independent sigmoids, inverted entry by entry (rows need not sum to 1)
    labels = np.array([[0.2, 0.7, 0.9], [0.5, 0.5, 0.01]])
    np.testing.assert_allclose(1 / (1 + np.exp(-to_logits(labels, "multilabel"))), labels)
    # multiclass: one softmax, recovered from the log-probabilities
    classes = np.array([[0.2, 0.3, 0.5]])
    z = to_logits(classes, "multiclass")
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(1, keepdims=True), classes)


def test_choose_site_threshold_meets_the_constraint_on_its_sample():
    y, p, g = _binary()
    st = choose_site_threshold(y, p, "sensitivity>=0.95", groups=g)
    assert st.sensitivity >= 0.95 and st.n == 600 and st.n_patients == 300
    assert st.n_pos + st.n_neg == st.n and 0 < st.threshold < 1
    assert choose_site_threshold(y, p, "0.5").threshold == 0.5


def test_compare_operating_points_cis_bracket_values():
    y, p, g = _binary()
    r = compare_operating_points(y, p, 0.5, 0.2, groups=g, n_boot=200, seed=0)
    assert r["old"]["threshold"] == 0.5 and r["new"]["threshold"] == 0.2
    assert r["new"]["sensitivity"]["value"] >= r["old"]["sensitivity"]["value"]
    for side in ("old", "new"):
        for m in ("sensitivity", "specificity", "accuracy"):
            c = r[side][m]
            assert c["low"] <= c["value"] <= c["high"]


def test_crossfit_never_chooses_on_the_evaluated_half_and_meets_target():
    y, p, g = _binary(n=800)
    r = crossfit_site_calibration(
        y, p, g, "sensitivity>=0.95", seeds=(0, 1), reference_threshold=0.5, n_boot=100
    )
    assert np.array(r["thresholds"]).shape == (2, 2)
    assert r["site"]["sensitivity"]["value"] == pytest.approx(0.95, abs=0.03)
    # the ceiling is chosen on the evaluated half itself: at least as good a specificity, on average
    assert r["ceiling"]["specificity"]["value"] >= r["site"]["specificity"]["value"] - 0.05
    assert r["before"]["threshold"] == 0.5 and r["meets_minimum"] and len(r["per_seed"]) == 2
    # the whole-split ceiling: one threshold, chosen on every image, meets the target on them all
    w = r["ceiling_whole"]
    y, p = np.asarray(y), np.asarray(p)
    assert w["sensitivity"]["value"] == pytest.approx((p[y == 1] >= w["threshold"]).mean())
    assert 0.95 <= w["sensitivity"]["value"] < 0.95 + 2 / (y == 1).sum()
    assert w["specificity"]["value"] == pytest.approx((p[y == 0] < w["threshold"]).mean())


def test_crossfit_refuses_or_marks_small_labeled_samples():
    y, p, g = _binary(n=400)
    with pytest.raises(DataError, match="too small"):
        crossfit_site_calibration(y, p, g, "sensitivity>=0.95", seeds=(0,), n_labeled=25, n_boot=0)
    curve = labeled_size_curve(y, p, g, "sensitivity>=0.95", sizes=(25, 100), repeats=2, n_boot=50)
    assert [c["n_labeled"] for c in curve] == [25, 100]
    assert [c["meets_minimum"] for c in curve] == [False, True]
    assert all(0 <= c["site"]["specificity"]["value"] <= 1 for c in curve)


def test_crossfit_rejects_one_fold():
    y, p, g = _binary(n=100)
    with pytest.raises(DataError, match="2 folds"):
        crossfit_site_calibration(y, p, g, "youden", folds=1)

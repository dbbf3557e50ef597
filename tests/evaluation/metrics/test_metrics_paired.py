"""auc_difference: two models on the same images, one paired patient bootstrap for both."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lungxray.errors import DataError
from lungxray.evaluation.metrics import auc_difference, bootstrap_ci, roc_auc


def _scores(seed: int = 0, n: int = 400):
    """Labels, a better model, and a worse one that shares most of the better one's errors."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    common = rng.normal(size=n)  # what makes an image hard for both models
    a = 1.6 * y + common + 0.15 * rng.normal(size=n)
    b = 1.45 * y + common + 0.15 * rng.normal(size=n)
    return y, a, b


def test_point_estimate_is_the_difference_of_the_two_aucs():
    y, a, b = _scores()
    d = auc_difference(y, a, b, n=300)
    assert d["difference"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert d["ci_low"] < d["difference"] < d["ci_high"] and d["n_used"] == 300 and d["level"] == 0.95


def test_same_model_twice_differs_by_exactly_zero():
    y, a, _ = _scores()
    d = auc_difference(y, a, a.copy(), n=200)
    assert d["difference"] == d["ci_low"] == d["ci_high"] == 0.0


def test_paired_interval_sees_a_gap_the_separate_intervals_hide():
    y, a, b = _scores()
    d = auc_difference(y, a, b, n=1000)
    ci_a = bootstrap_ci(roc_auc, y, a, n=1000)
    ci_b = bootstrap_ci(roc_auc, y, b, n=1000)
    assert ci_a.low < ci_b.high  # the two separate 95% intervals overlap ...
    assert d["ci_low"] > 0  # ... yet a is better than b on these images
    assert d["ci_high"] - d["ci_low"] < 0.5 * (ci_a.high - ci_a.low)


def test_swapping_the_models_mirrors_the_interval():
    y, a, b = _scores(seed=3)
    ab, ba = auc_difference(y, a, b, n=500), auc_difference(y, b, a, n=500)
    assert ba["difference"] == pytest.approx(-ab["difference"])
    assert ba["ci_low"] == pytest.approx(-ab["ci_high"]) and ba["ci_high"] == pytest.approx(-ab["ci_low"])


def test_patients_are_resampled_whole():
    # every patient filmed 4 times: treating the films as independent overstates the evidence
    y, a, b = _scores(seed=1, n=100)
    y4, a4, b4 = (np.repeat(v, 4) for v in (y, a, b))
    patients = np.repeat(np.arange(100), 4)
    by_image = auc_difference(y4, a4, b4, n=1000)
    by_patient = auc_difference(y4, a4, b4, groups=patients, n=1000)
    assert by_patient["difference"] == pytest.approx(by_image["difference"])
    assert (by_patient["ci_high"] - by_patient["ci_low"]) > 1.5 * (by_image["ci_high"] - by_image["ci_low"])


def test_bad_input_names_the_problem():
    y, a, b = _scores(n=50)
    with pytest.raises(DataError, match="score the same images"):
        auc_difference(y, a, b[:40])
    with pytest.raises(DataError, match="ci must be in"):
        auc_difference(y, a, b, ci=1.0)


def test_recipes_compare_as_the_mean_auc_of_their_runs():
    y, a, b = _scores(seed=2)
    rng = np.random.default_rng(7)
    seeds_a = np.stack([a + 0.3 * rng.normal(size=len(a)) for _ in range(3)])  # three runs of recipe a
    seeds_b = np.stack([b + 0.3 * rng.normal(size=len(b)) for _ in range(3)])
    d = auc_difference(y, seeds_a, seeds_b, n=400)
    expected = np.mean([roc_auc_score(y, s) for s in seeds_a]) - np.mean([roc_auc_score(y, s) for s in seeds_b])
    assert d["difference"] == pytest.approx(expected)
    assert d["ci_low"] < d["difference"] < d["ci_high"]
    one = auc_difference(y, a, b, n=400)
    assert auc_difference(y, np.stack([a, a]), np.stack([b, b, b]), n=400) == pytest.approx(one)  # copies: one run
    with pytest.raises(DataError, match="score the same images"):
        auc_difference(y, seeds_a, seeds_b[:, :-1])

"""choose_threshold against brute force and hand tables; strategy parsing errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.errors import ConfigError
from lungxray.evaluation.metrics import choose_threshold


def _brute_force(y, s, objective):
    """Best threshold over the unique scores; ties -> the highest threshold."""
    best_t, best_v = None, -np.inf
    for t in np.unique(s)[::-1]:
        pred = s >= t
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
        youden = tp / (tp + fn) - fp / (fp + tn)
        v = youden if objective == "youden" else 2 * tp / (2 * tp + fp + fn)
        if v > best_v + 1e-12:
            best_t, best_v = t, v
    return best_t


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strategy", ["youden", "max-f1"])
def test_youden_and_max_f1_match_brute_force(seed, strategy):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 120))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.25), 0, 1), 2)
    assert choose_threshold(y, s, strategy) == pytest.approx(_brute_force(y, s, strategy))


def test_youden_hand_table():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.3, 0.35, 0.6, 0.7, 0.9]
    assert choose_threshold(y, s, "youden") == 0.35  # TPR 1, FPR 1/3
    assert choose_threshold(y, s, "0.5") == 0.5


def _sens_spec(y, s, t):
    pred = s >= t
    return np.mean(pred[y == 1]), np.mean(~pred[y == 0])


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("finite_sample", [True, False])
def test_sensitivity_and_specificity_constraints(target, finite_sample):
    """The chosen threshold meets the constraint (counts / (n + 1) by default, / n in-sample) and is the
    best such threshold: one step further breaks it."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 3)
    unique = np.unique(s)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    extra = 1 if finite_sample and target < 1 else 0

    def sens(t):
        return np.sum(s[y == 1] >= t) / (n_pos + extra)

    def spec(t):
        return np.sum(s[y == 0] < t) / (n_neg + extra)

    t = choose_threshold(y, s, f"sensitivity>={target}", finite_sample=finite_sample)
    assert sens(t) >= target
    higher = unique[unique > t]
    assert len(higher) == 0 or sens(higher.min()) < target  # the highest such threshold

    t = choose_threshold(y, s, f"specificity>={target}", finite_sample=finite_sample)
    assert spec(t) >= target
    lower = unique[unique < t]
    assert len(lower) == 0 or spec(lower.max()) < target  # the lowest such threshold
    assert 0.0 <= t <= 1.0


def test_finite_sample_rule_keeps_sensitivity_on_new_positives():
    """62 positives, target 0.95: the in-sample rule allows 3 misses (expected 1 - 4/63 = 0.937 on new
    positives); the finite-sample rule allows 2 (1 - 3/63 = 0.952). Measured on fresh draws."""
    rng = np.random.default_rng(0)
    held_out = {True: [], False: []}
    for _ in range(400):
        pos, neg = rng.normal(1.0, 1.0, 62), rng.normal(-1.0, 1.0, 38)
        y, s = np.r_[np.ones(62), np.zeros(38)], np.r_[pos, neg]
        new = rng.normal(1.0, 1.0, 2000)
        for fs in (True, False):
            held_out[fs].append(np.mean(new >= choose_threshold(y, s, "sensitivity>=0.95", finite_sample=fs)))
    assert np.mean(held_out[True]) >= 0.945
    assert np.mean(held_out[False]) < 0.945


def test_finite_sample_rule_warns_when_the_class_is_too_small():
    y = np.array([1] * 10 + [0] * 10)
    s = np.linspace(0, 1, 20)
    with pytest.warns(UndefinedMetricWarning, match="at least 19"):
        t = choose_threshold(y, s, "sensitivity>=0.95")
    assert t == choose_threshold(y, s, "sensitivity>=0.95", finite_sample=False)


def test_specificity_one_when_a_negative_scores_highest_stays_in_unit_interval():
    y = np.array([0, 1, 1, 0])
    s = np.array([0.2, 0.6, 0.8, 0.97])
    t = choose_threshold(y, s, "specificity>=1.0")
    assert 0.97 < t <= 1.0  # no inf
    assert _sens_spec(y, s, t)[1] == 1.0


def test_choose_threshold_single_class_falls_back_to_half():
    with pytest.warns(UndefinedMetricWarning, match="one class"):
        assert choose_threshold([1, 1, 1], [0.2, 0.4, 0.9], "youden") == 0.5


def test_choose_threshold_unknown_strategy():
    with pytest.raises(ConfigError, match="youden"):
        choose_threshold([0, 1], [0.1, 0.9], "yuoden")

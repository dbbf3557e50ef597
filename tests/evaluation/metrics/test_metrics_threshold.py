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
def test_sensitivity_and_specificity_constraints(target):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 3)
    unique = np.unique(s)

    t = choose_threshold(y, s, f"sensitivity>={target}")
    assert _sens_spec(y, s, t)[0] >= target
    higher = unique[unique > t]
    assert len(higher) == 0 or _sens_spec(y, s, higher.min())[0] < target  # the highest such threshold

    t = choose_threshold(y, s, f"specificity>={target}")
    assert _sens_spec(y, s, t)[1] >= target
    lower = unique[unique < t]
    assert len(lower) == 0 or _sens_spec(y, s, lower.max())[1] < target  # the lowest such threshold
    assert 0.0 <= t <= 1.0


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

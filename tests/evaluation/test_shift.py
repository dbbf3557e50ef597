"""Set-level shift test: calibrated under the null (subsets of the reference), powerful under shift."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lungxray.errors import DataError
from lungxray.evaluation.shift import DriftMonitor, ShiftResult, shift_test


def _reference(n=800, seed=0):
    """(n, 2) synthetic (ood_distance, score): chi-like distances and bimodal scores, correlated."""
    rng = np.random.default_rng(seed)
    d = np.sqrt(rng.chisquare(16, n))
    y = rng.random(n) < 0.7
    score = 1 / (1 + np.exp(-(rng.normal(0, 1.5, n) + np.where(y, 3.0, -3.0) + 0.1 * (d - 4))))
    return np.stack([d, score], 1)


def test_null_calibration_random_subsets_of_the_reference():
    ref = _reference()
    rng = np.random.default_rng(1)
    alpha = 0.05
    fired = []
    for _ in range(200):
        idx = rng.choice(len(ref), 100, replace=False)
        fired.append(shift_test(ref, ref[idx], alpha=alpha, exclude=idx).fired)
    rate = float(np.mean(fired))
    assert rate <= alpha + 0.03  # Bonferroni over 2 columns: at most alpha, typically a bit below
    assert rate >= 0.005  # and not absurdly conservative


def test_without_exclude_the_test_is_conservative():
    ref = _reference()
    rng = np.random.default_rng(2)
    ps = [shift_test(ref, ref[rng.choice(len(ref), 100, replace=False)]).p_value for _ in range(50)]
    assert np.median(ps) > 0.5


@pytest.mark.parametrize("column, shift", [(0, 1.0), (1, 0.25)])
def test_power_a_shifted_sample_fires(column, shift):
    ref = _reference()
    sample = _reference(100, seed=9)
    sample[:, column] += shift
    r = shift_test(ref, sample, alpha=0.01)
    assert r.fired and r.p_value < 0.01 and r.n_sample == 100 and r.n_ref == 800
    assert "differs from the training data" in r.summary and "may not hold" in r.summary
    assert r.per_feature[column][2] == min(p for _, _, p in r.per_feature)


def test_quiet_summary_and_dict():
    ref = _reference()
    r = shift_test(ref[:400], ref[400:500])
    assert not r.fired and "no evidence" in r.summary
    d = r.to_dict()
    assert d["per_feature"][0]["name"] == "ood_distance" and 0 <= d["p_value"] <= 1


@pytest.mark.parametrize(
    "ref, sample, match",
    [
        (np.zeros((10, 2)), np.zeros((10, 3)), "columns"),
        (np.zeros((3, 2)), np.zeros((10, 2)), "at least 5"),
        (np.zeros((10, 2)), np.full((10, 2), np.nan), "finite"),
        (np.zeros((2, 2, 2)), np.zeros((10, 2)), "shape"),
    ],
)
def test_shift_test_degenerate_inputs(ref, sample, match):
    with pytest.raises(DataError, match=match):
        shift_test(ref, sample)


def test_one_dimensional_inputs_work():
    rng = np.random.default_rng(0)
    r = shift_test(rng.normal(size=300), rng.normal(size=60) + 2, features=("ood_distance",))
    assert r.fired and len(r.per_feature) == 1


def test_drift_monitor_none_until_min_samples_then_fires_on_shift():
    ref = _reference()
    mon = DriftMonitor(ref, window=100, alpha=0.01, min_samples=50)
    for d, s in _reference(49, seed=3):
        mon.update(d, s)
    mon.update(None, 0.5)  # ignored
    mon.update(float("nan"), 0.5)  # ignored
    assert len(mon) == 49 and mon.check() is None
    mon.update(*_reference(1, seed=4)[0])
    quiet = mon.check()
    assert isinstance(quiet, ShiftResult) and not quiet.fired
    for d, s in _reference(100, seed=5):
        mon.update(d + 3.0, s)  # the window fills with far-away images
    assert mon.check().fired and len(mon) == 100


def test_drift_monitor_is_thread_safe():
    mon = DriftMonitor(_reference(), window=500, min_samples=50)
    rows = _reference(400, seed=6)

    def feed(chunk):
        for i, (d, s) in enumerate(chunk):
            mon.update(d, s)
            if i % 20 == 0:
                mon.check()

    threads = [threading.Thread(target=feed, args=(rows[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(mon) == 400 and mon.check() is not None


def test_drift_monitor_rejects_bad_settings():
    with pytest.raises(DataError):
        DriftMonitor(_reference(), window=20, min_samples=50)
    with pytest.raises(DataError):
        DriftMonitor(np.zeros((2, 2)))

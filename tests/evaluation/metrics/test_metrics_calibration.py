"""ECE and reliability-diagram data against scikit-learn; weighted == repeated sample."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from lungxray.evaluation.metrics import calibration_curve_data, expected_calibration_error


def test_ece_small_when_calibrated_large_when_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert expected_calibration_error(y, overconfident) > 0.2


def test_calibration_curve_data_matches_sklearn():
    rng = np.random.default_rng(3)
    p = rng.random(500) ** 2
    y = (rng.random(500) < p).astype(int)
    data = calibration_curve_data(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    ok = np.array(data["counts"]) > 0
    np.testing.assert_allclose(np.array(data["fraction_positive"])[ok], frac)
    np.testing.assert_allclose(np.array(data["mean_predicted"])[ok], mean)
    assert sum(data["counts"]) == 500
    assert data["ece"] == pytest.approx(expected_calibration_error(y, p))


def test_weighted_calibration_equals_repeated_sample():
    rng = np.random.default_rng(4)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    w = rng.integers(0, 4, 300)
    yr, pr = np.repeat(y, w), np.repeat(p, w)
    assert expected_calibration_error(y, p, sample_weight=w) == pytest.approx(
        expected_calibration_error(yr, pr)
    )
    weighted, repeated = calibration_curve_data(y, p, sample_weight=w), calibration_curve_data(yr, pr)
    for key in ("mean_predicted", "fraction_positive", "counts", "ece"):
        np.testing.assert_allclose(weighted[key], repeated[key], rtol=1e-12)

"""Patient-grouped bootstrap: determinism, width, whole patients, weights == resampled indices, named columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from lungxray.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_replicates,
    bootstrap_weights,
    percentile_ci,
    roc_auc,
)


def _auc(y, s):
    return skm.roc_auc_score(y, s) if 0 < y.sum() < len(y) else math.nan


def _sample(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-rng.normal(1.2 * (2 * y - 1), 1.5)))


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y, s = _sample(300, 0)
    ci = bootstrap_ci(_auc, y, s, n=300, seed=3)
    assert ci.low < _auc(y, s) < ci.high
    assert ci.used == 300
    assert tuple(bootstrap_ci(_auc, y, s, n=300, seed=3)) == tuple(ci)
    assert tuple(bootstrap_ci(_auc, y, s, n=300, seed=4)) != tuple(ci)


def test_bootstrap_ci_narrows_with_more_data():
    widths = {}
    for n in (100, 2000):
        y, s = _sample(n, 1)
        low, high = bootstrap_ci(lambda a, b: np.mean(a == (b >= 0.5)), y, s, n=500)
        widths[n] = high - low
    assert widths[2000] < 0.5 * widths[100]  # ~ sqrt(20) = 4.5x narrower in theory


def test_patient_resampling_widens_ci_for_correlated_images():
    # 60 patients x 10 near-identical images each: only 60 independent observations, not 600
    rng = np.random.default_rng(5)
    per_patient = rng.integers(0, 2, 60)
    patient_y = np.repeat(per_patient, 10)
    patient_s = np.repeat(rng.normal(0.8 * per_patient, 1.0), 10)
    s = 1 / (1 + np.exp(-(patient_s + rng.normal(0, 0.05, 600))))
    groups = np.repeat([f"p{i}" for i in range(60)], 10)
    by_row = bootstrap_ci(_auc, patient_y, s, n=400)
    by_patient = bootstrap_ci(_auc, patient_y, s, groups=groups, n=400)
    assert (by_patient.high - by_patient.low) > 1.8 * (by_row.high - by_row.low)


def test_grouped_resamples_keep_whole_patients():
    groups = np.array(["a"] * 3 + ["b"] * 1 + ["c"] * 5 + ["d"] * 2)
    for idx in bootstrap_indices(len(groups), groups=groups, n=50, seed=0):
        counts = np.bincount(idx, minlength=len(groups))
        for g in np.unique(groups):
            rows = counts[groups == g]
            assert (rows == rows[0]).all()  # every image of a drawn patient came along, equally often


def test_bootstrap_skips_undefined_resamples():
    y = np.array([1] + [0] * 9)
    s = np.linspace(0.1, 0.9, 10)
    ci = bootstrap_ci(_auc, y, s, n=200)
    assert 0 < ci.used < 200  # ~35% of resamples miss the only positive
    assert ci.low <= ci.high


def test_bootstrap_weights_are_the_resampled_indices_as_counts():
    # same seed, same draws: each weight row is the bincount of the matching resample of indices
    groups = np.array(["a"] * 3 + ["b"] * 1 + ["c"] * 5 + ["d"] * 2)
    for g in (groups, None):
        rows = np.concatenate(list(bootstrap_weights(len(groups), groups=g, n=40, seed=7)))
        idx = list(bootstrap_indices(len(groups), groups=g, n=40, seed=7))
        assert rows.shape == (40, len(groups))
        for row, i in zip(rows, idx, strict=True):
            np.testing.assert_array_equal(row, np.bincount(i, minlength=len(groups)))
    rows = np.concatenate(list(bootstrap_weights(len(groups), groups=groups, n=40, seed=7)))
    for g in np.unique(groups):
        assert (rows[:, groups == g] == rows[:, groups == g][:, :1]).all()  # one count per patient


def test_bootstrap_weights_chunks_do_not_change_the_draws(monkeypatch):
    from lungxray.evaluation.metrics import bootstrap

    whole = np.concatenate(list(bootstrap_weights(50, n=30, seed=1)))
    monkeypatch.setattr(bootstrap, "_MAX_CELLS", 50 * 7)  # chunks of 7 replicates
    chunks = list(bootstrap_weights(50, n=30, seed=1))
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_bootstrap_replicates_are_named_columns_equal_to_bootstrap_ci():
    y, s = _sample(300, 0)
    groups = np.arange(300) // 3

    def metrics(w):
        return {
            "auc": roc_auc(y, s, sample_weight=w),
            "accuracy": np.asarray(w @ (y == (s >= 0.5)) / w.sum(1)),
        }

    reps = bootstrap_replicates(metrics, 300, groups=groups, n=200, seed=3)
    assert set(reps) == {"auc", "accuracy"} and reps["auc"].shape == (200,)
    ci = percentile_ci(reps["auc"])
    assert tuple(ci) == pytest.approx(tuple(bootstrap_ci(_auc, y, s, groups=groups, n=200, seed=3)))
    assert ci.used == 200
    acc = bootstrap_ci(lambda a, b: np.mean(a == (b >= 0.5)), y, s, groups=groups, n=200, seed=3)
    assert tuple(percentile_ci(reps["accuracy"])) == pytest.approx(tuple(acc))


def test_percentile_ci_of_all_nan_is_nan():
    ci = percentile_ci(np.full(5, np.nan))
    assert math.isnan(ci.low) and math.isnan(ci.high) and (ci.used, ci.n) == (0, 5)

"""multilabel_metrics: NaN labels masked per label, nanmean macros; weighted == repeated sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.evaluation.metrics import multilabel_metrics


def test_multilabel_masks_nan_and_nanmeans():
    rng = np.random.default_rng(6)
    y = (rng.random((300, 3)) < 0.3).astype(float)
    y[:40, 0] = np.nan
    y[:, 2] = 0.0  # label with no positive: AUC undefined
    p = np.clip(np.nan_to_num(y) * 0.4 + rng.random((300, 3)) * 0.6, 0, 1)
    with pytest.warns(UndefinedMetricWarning, match="'c'"):
        m = multilabel_metrics(y, p, ["a", "b", "c"], [0.5, 0.4, 0.5])
    known = ~np.isnan(y[:, 0])
    assert m["per_class"]["a"]["n"] == 260
    assert m["per_class"]["a"]["auc"] == pytest.approx(skm.roc_auc_score(y[known, 0], p[known, 0]))
    assert m["per_class"]["b"]["average_precision"] == pytest.approx(
        skm.average_precision_score(y[:, 1], p[:, 1])
    )
    assert m["per_class"]["b"]["sensitivity"] == pytest.approx(np.mean(p[y[:, 1] == 1, 1] >= 0.4))
    assert math.isnan(m["per_class"]["c"]["auc"])
    assert m["macro_auc"] == pytest.approx((m["per_class"]["a"]["auc"] + m["per_class"]["b"]["auc"]) / 2)


def test_weighted_multilabel_equals_repeated_sample():
    rng = np.random.default_rng(10)
    y = (rng.random((250, 3)) < 0.3).astype(float)
    y[:30, 1] = np.nan
    p = np.clip(np.nan_to_num(y) * 0.4 + rng.random((250, 3)) * 0.6, 0, 1)
    w = rng.integers(0, 4, 250)
    weighted = multilabel_metrics(y, p, ["a", "b", "c"], [0.5, 0.4, 0.6], sample_weight=w)
    repeated = multilabel_metrics(
        np.repeat(y, w, axis=0), np.repeat(p, w, axis=0), ["a", "b", "c"], [0.5, 0.4, 0.6]
    )
    for key in ("macro_auc", "macro_average_precision"):
        assert weighted[key] == pytest.approx(repeated[key], rel=1e-12)
    for c in "abc":
        for m in ("auc", "average_precision", "sensitivity", "specificity"):
            assert weighted["per_class"][c][m] == pytest.approx(repeated["per_class"][c][m], rel=1e-12), (
                c,
                m,
            )

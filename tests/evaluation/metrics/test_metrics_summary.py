"""evaluate_predictions: the metrics.json body, its CIs and speed."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.errors import ConfigError
from lungxray.evaluation.metrics import (
    BINARY_METRICS,
    binary_metrics,
    bootstrap_ci,
    evaluate_predictions,
    multiclass_metrics,
    multilabel_metrics,
)


def _auc(y, s):
    return skm.roc_auc_score(y, s) if 0 < y.sum() < len(y) else math.nan


def _sample(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-rng.normal(1.2 * (2 * y - 1), 1.5)))


def test_evaluate_binary_body():
    y, s = _sample(624, 9)
    groups = np.arange(624) // 2
    body = evaluate_predictions(
        "binary", y, s, ["NORMAL", "PNEUMONIA"], threshold=0.3, groups=groups, n_boot=300, seed=1
    )
    json.dumps(body, allow_nan=False)  # JSON-safe
    point = binary_metrics(y, s, 0.3)
    for name in BINARY_METRICS:
        entry = body[name]
        assert set(entry) == {"value", "ci_low", "ci_high"}
        assert entry["value"] == pytest.approx(point[name])
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    # the given (validation) threshold is used as is, never re-chosen on these data
    assert body["threshold"] == 0.3
    assert body["confusion"] == {k: point[k] for k in ("tp", "fp", "tn", "fn")}
    assert body["at_0.5"]["sensitivity"]["value"] == pytest.approx(binary_metrics(y, s, 0.5)["sensitivity"])
    assert body["class_counts"] == {"NORMAL": int((y == 0).sum()), "PNEUMONIA": int(y.sum())}
    assert body["bootstrap"] == {"n": 300, "unit": "patient", "used": 300, "ci": 0.95, "seed": 1}
    # the vectorised bootstrap draws the same resamples as bootstrap_ci with the same seed
    low, high = bootstrap_ci(_auc, y, s, groups=groups, n=300, seed=1)
    assert (body["auc"]["ci_low"], body["auc"]["ci_high"]) == pytest.approx((low, high))


def test_evaluate_binary_at_half_only_when_threshold_differs_and_nan_is_none():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        body = evaluate_predictions("binary", [0, 0, 0], [0.1, 0.7, 0.2], ["n", "p"], n_boot=50)
    assert "at_0.5" not in body
    assert body["auc"]["value"] is None and body["sensitivity"]["value"] is None
    assert body["bootstrap"]["unit"] == "image" and body["bootstrap"]["used"] == 0
    json.dumps(body, allow_nan=False)


def test_evaluate_binary_bootstrap_is_fast():
    y, s = _sample(624, 2)
    start = time.perf_counter()
    evaluate_predictions("binary", y, s, ["n", "p"], threshold=0.4, n_boot=1000)
    assert time.perf_counter() - start < 3.0  # 1000 resamples x 20 metrics (two thresholds)


def test_evaluate_multiclass_and_multilabel_bodies():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    p[np.arange(200), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    body = evaluate_predictions("multiclass", y, p, ["Covid", "Normal", "Viral"], n_boot=200)
    json.dumps(body, allow_nan=False)
    point = multiclass_metrics(y, p, ["Covid", "Normal", "Viral"])
    assert body["macro_auc"]["value"] == pytest.approx(point["macro"]["auc"])
    assert body["macro_auc"]["ci_low"] < body["macro_auc"]["value"] < body["macro_auc"]["ci_high"]
    assert body["per_class"]["Normal"]["auc"]["value"] == pytest.approx(point["per_class"]["Normal"]["auc"])
    assert body["per_class"]["Viral"]["f1"]["ci_low"] is not None
    assert body["confusion"]["matrix"] == point["confusion"]

    yl = (rng.random((200, 3)) < 0.3).astype(float)
    yl[:20, 1] = np.nan
    pl = np.clip(np.nan_to_num(yl) * 0.4 + rng.random((200, 3)) * 0.6, 0, 1)
    body = evaluate_predictions("multilabel", yl, pl, ["A", "B", "C"], thresholds=[0.5, 0.5, 0.6], n_boot=200)
    json.dumps(body, allow_nan=False)
    point = multilabel_metrics(yl, pl, ["A", "B", "C"], [0.5, 0.5, 0.6])
    assert body["macro_auc"]["value"] == pytest.approx(point["macro_auc"])
    for c in "ABC":
        entry = body["per_class"][c]["auc"]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert entry["value"] == pytest.approx(point["per_class"][c]["auc"])
    assert body["per_class"]["B"]["n"] == 180 and body["thresholds"] == [0.5, 0.5, 0.6]


def test_evaluate_rejects_unknown_task():
    with pytest.raises(ConfigError, match="binary"):
        evaluate_predictions("bianry", [0, 1], [0.1, 0.9], ["n", "p"])


def test_evaluate_point_values_come_from_the_same_weighted_functions():
    # weights None and all-ones rows of the bootstrap give the same numbers (one implementation)
    from lungxray.evaluation.metrics import roc_auc, sensitivity

    y, s = _sample(300, 4)
    body = evaluate_predictions("binary", y, s, ["n", "p"], threshold=0.4, n_boot=0)
    assert body["auc"]["value"] == roc_auc(y, s)
    assert body["auc"]["value"] == roc_auc(y, s, sample_weight=np.ones((2, 300)))[0]
    assert body["sensitivity"]["value"] == sensitivity(y, s, 0.4)
    assert body["auc"]["ci_low"] is None and body["bootstrap"]["used"] == 0

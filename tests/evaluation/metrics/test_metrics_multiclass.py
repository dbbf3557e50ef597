"""multiclass_metrics against a hand table and scikit-learn; weighted == repeated sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.evaluation.metrics import multiclass_metrics


def test_multiclass_metrics_hand_table():
    y = [0, 0, 1, 1, 2, 2]
    p = np.array(
        [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
    )
    m = multiclass_metrics(y, p, ["normal", "bacterial", "viral"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["bacterial"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["viral"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["normal"]["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["viral"]["precision"] == 1.0


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 400)
    p = rng.dirichlet(np.ones(4), 400)
    p[np.arange(400), y] += 0.4
    p /= p.sum(axis=1, keepdims=True)
    classes = ["a", "b", "c", "d"]
    m = multiclass_metrics(y, p, classes)
    pred = p.argmax(axis=1)
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred)
    for k, c in enumerate(classes):
        assert m["per_class"][c]["precision"] == pytest.approx(prec[k])
        assert m["per_class"][c]["recall"] == pytest.approx(rec[k])
        assert m["per_class"][c]["f1"] == pytest.approx(f1[k])
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["macro"]["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["brier"] == pytest.approx(np.mean(np.sum((p - np.eye(4)[y]) ** 2, axis=1)))
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()


def test_multiclass_absent_class_auc_nan_and_macro_uses_the_rest():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]])
    with pytest.warns(UndefinedMetricWarning, match="'c'"):
        m = multiclass_metrics(y, p, ["a", "b", "c"])
    assert math.isnan(m["per_class"]["c"]["auc"])
    assert m["macro"]["auc"] == pytest.approx(
        np.mean([m["per_class"]["a"]["auc"], m["per_class"]["b"]["auc"]])
    )


def test_weighted_multiclass_equals_repeated_sample():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    w = rng.integers(0, 4, 200)
    weighted = multiclass_metrics(y, p, ["a", "b", "c"], sample_weight=w)
    repeated = multiclass_metrics(np.repeat(y, w), np.repeat(p, w, axis=0), ["a", "b", "c"])
    assert weighted["confusion"] == repeated["confusion"]
    for key in ("accuracy", "brier"):
        assert weighted[key] == pytest.approx(repeated[key], rel=1e-12)
    for group in ("macro", "weighted"):
        assert weighted[group] == pytest.approx(repeated[group], rel=1e-12)
    for c in "abc":
        assert weighted["per_class"][c] == pytest.approx(repeated["per_class"][c], rel=1e-12)

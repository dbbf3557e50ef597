"""Binary metrics (lungxray.evaluation.metrics.binary) against hand-computed tables and scikit-learn,
and the weighting contract: a weight is a count, (B, N) weights give (B,) results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.errors import DataError
from lungxray.evaluation.metrics import (
    BINARY_METRICS,
    accuracy,
    average_precision,
    binary_metrics,
    brier_score,
    confusion_counts,
    expected_calibration_error,
    f1,
    npv,
    precision,
    roc_auc,
    sensitivity,
    specificity,
)

NAN = math.nan
KEYS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "auc", "average_precision")

# (y, score, threshold, expected) - expected values computed by hand
TABLE = [
    # the scikit-learn docs example: AUC 0.75, AP 0.8333
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5, (0.75, 0.5, 1.0, 1.0, 2 / 3, 2 / 3, 0.75, 5 / 6)),
    # ties everywhere; a score equal to the threshold is positive
    ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5, (0.5, 1.0, 0.0, 0.5, NAN, 2 / 3, 0.5, 0.5)),
    # perfect separation
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5, (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)),
    # all wrong; AP = 1/2 * 1/3 + 1/2 * 2/4
    ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.5, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5 / 12)),
]

# every single-metric function: name -> f(y, s, sample_weight)
THRESHOLD_FNS = {
    "accuracy": accuracy,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "precision": precision,
    "npv": npv,
    "f1": f1,
}


def _at_045(fn):
    return lambda y, s, w: fn(y, s, 0.45, sample_weight=w)


METRIC_FNS = {
    **{name: _at_045(fn) for name, fn in THRESHOLD_FNS.items()},
    "auc": lambda y, s, w: roc_auc(y, s, sample_weight=w),
    "average_precision": lambda y, s, w: average_precision(y, s, sample_weight=w),
    "brier": lambda y, s, w: brier_score(y, s, sample_weight=w),
    "ece": lambda y, s, w: expected_calibration_error(y, s, sample_weight=w),
}


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-12)


def _ties(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1), 1)  # heavy ties
    return rng, y, s


@pytest.mark.parametrize(("y", "s", "t", "expected"), TABLE)
def test_binary_metrics_hand_table(y, s, t, expected):
    m = binary_metrics(y, s, t)
    for key, want in zip(KEYS, expected, strict=True):
        assert _close(m[key], want), (key, m[key], want)
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == len(y)


@pytest.mark.parametrize(("y", "s", "t", "expected"), TABLE)
def test_single_metric_functions_hand_table(y, s, t, expected):
    got = {name: fn(y, s, t) for name, fn in THRESHOLD_FNS.items()}
    got.update(auc=roc_auc(y, s), average_precision=average_precision(y, s))
    for key, want in zip(KEYS, expected, strict=True):
        assert _close(got[key], want), (key, got[key], want)


def test_binary_metrics_brier_ece_confusion_by_hand():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 0, 2, 1)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    # bins are (a, b]: 0.35 and 0.4 share (0.3, 0.4]: |0 - 0.1| + |1 - (0.35 + 0.4)| + |1 - 0.8|
    assert m["ece"] == pytest.approx((0.1 + 0.25 + 0.2) / 4)
    # one image per bin: |0 - 0.15| + |1 - 0.35| + |0 - 0.45| + |1 - 0.85|
    assert expected_calibration_error([0, 1, 0, 1], [0.15, 0.35, 0.45, 0.85]) == pytest.approx(1.4 / 4)
    assert (m["n"], m["n_pos"], m["n_neg"]) == (4, 2, 2)
    assert confusion_counts([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5) == {"tp": 1, "fp": 0, "tn": 2, "fn": 1}


def test_binary_metrics_single_class_warns_and_gives_nan():
    with pytest.warns(UndefinedMetricWarning, match="one class"):
        m = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], 0.5)
    assert math.isnan(m["auc"]) and math.isnan(m["average_precision"])
    assert math.isnan(m["specificity"])  # no negatives: undefined, not 0
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["npv"] == 0.0  # tn 0, fn 1: defined, and 0
    with pytest.warns(UndefinedMetricWarning):
        m = binary_metrics([0, 0], [0.1, 0.2], 0.5)
    assert math.isnan(m["sensitivity"]) and math.isnan(m["precision"]) and math.isnan(m["f1"])
    assert m["specificity"] == 1.0 and m["npv"] == 1.0
    with pytest.warns(UndefinedMetricWarning, match="one class"):
        assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    with pytest.warns(UndefinedMetricWarning, match="one class"):  # weight 0 removes the only negative
        assert math.isnan(average_precision([0, 1, 1], [0.2, 0.3, 0.4], sample_weight=[0, 1, 2]))


def test_binary_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 300)
        s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1), 2)  # rounded: many ties
        t = float(rng.uniform(0.2, 0.8))
        m = binary_metrics(y, s, t)
        pred = (s >= t).astype(int)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
        assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
        assert m["npv"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
        assert m["auc"] == pytest.approx(skm.roc_auc_score(y, s))
        assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, s))
        assert m["brier"] == pytest.approx(skm.brier_score_loss(y, s))
        assert m["brier"] == skm.brier_score_loss(y, s)  # same formula: bit-identical


@pytest.mark.parametrize("seed", range(4))
def test_weighted_auc_and_ap_equal_sklearn_with_sample_weight(seed):
    rng, y, s = _ties(seed)
    w = rng.integers(0, 4, (6, len(y))).astype(float)
    w[0] = rng.random(len(y))  # non-integer weights too
    auc, ap = roc_auc(y, s, sample_weight=w), average_precision(y, s, sample_weight=w)
    assert auc.shape == ap.shape == (6,)
    for i in range(len(w)):
        assert auc[i] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w[i]), rel=1e-12)
        assert ap[i] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w[i]), rel=1e-12)
        assert roc_auc(y, s, sample_weight=w[i]) == pytest.approx(auc[i], rel=1e-12)  # (N,) == row of (B, N)


@pytest.mark.parametrize("name", sorted(METRIC_FNS))
def test_weighted_metric_equals_metric_of_repeated_sample(name):
    fn = METRIC_FNS[name]
    for seed in range(3):
        rng, y, s = _ties(seed)
        w = rng.integers(0, 4, len(y))
        repeated = fn(np.repeat(y, w), np.repeat(s, w), None)
        assert fn(y, s, w) == pytest.approx(repeated, rel=1e-12, abs=1e-15), (name, seed)
        assert fn(y, s, w.astype(float)[None, :])[0] == pytest.approx(repeated, rel=1e-12, abs=1e-15)
        assert fn(y, s, np.ones(len(y))) == pytest.approx(fn(y, s, None), rel=1e-12, abs=1e-15)


def test_weighted_counts_match_sklearn_confusion_matrix():
    rng, y, s = _ties(5)
    w = rng.random(len(y))
    c = confusion_counts(y, s, 0.45, sample_weight=w)
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, s >= 0.45, sample_weight=w)
    assert (c["tn"], c["fp"], c["fn"], c["tp"]) == pytest.approx((tn, fp, fn, tp))
    assert f1(y, s, 0.45, sample_weight=w) == pytest.approx(skm.f1_score(y, s >= 0.45, sample_weight=w))


def test_bootstrap_weights_give_named_rows_equal_to_binary_metrics_at_ones():
    # with all-ones weights every metric equals binary_metrics
    rng, y, s = _ties(2)
    point = binary_metrics(y, s, 0.45)
    for name in BINARY_METRICS:
        v = METRIC_FNS[name](y, s, np.ones((3, len(y))))
        assert v.shape == (3,)
        assert v == pytest.approx(np.full(3, point[name]), rel=1e-12), name


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1], [0.2, 0.3, 0.4], "entries"),
        ([0, 2], [0.2, 0.3], "only 0 and 1"),
        ([0, 1], [0.2, 1.3], r"\[0, 1\]"),
        ([0, 1], [0.2, float("nan")], "NaN"),
        ([], [], "empty"),
    ],
)
def test_binary_metrics_rejects_bad_input(y, s, message):
    with pytest.raises(DataError, match=message):
        binary_metrics(y, s, 0.5)


@pytest.mark.parametrize("w", [[1.0, 2.0], [1.0, -1.0, 1.0], [1.0, np.nan, 1.0], np.ones((2, 2, 3))])
def test_bad_sample_weight_is_rejected(w):
    with pytest.raises(DataError, match="sample_weight"):
        roc_auc([0, 1, 1], [0.1, 0.5, 0.7], sample_weight=w)


def test_one_weighted_implementation_matches_sklearn_and_binary_metrics():
    # (formerly the check of the bootstrap's separate numpy kernels; there is now one implementation)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # heavy ties
    w = rng.integers(0, 4, (6, 200)).astype(float)
    auc, ap = roc_auc(y, s, sample_weight=w), average_precision(y, s, sample_weight=w)
    for i in range(len(w)):
        assert auc[i] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w[i]))
        assert ap[i] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w[i]))
    # with all-ones weights every named metric equals binary_metrics
    point = binary_metrics(y, s, 0.45)
    for name in BINARY_METRICS:
        assert METRIC_FNS[name](y, s, np.ones((1, 200)))[0] == pytest.approx(point[name]), name


def test_weight_matrix_rows_with_one_class_are_nan_without_warning():
    import warnings

    y, s = np.array([0, 1, 1]), np.array([0.1, 0.5, 0.7])
    w = np.array([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])  # the second replicate drew no negative
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auc, ap = roc_auc(y, s, sample_weight=w), average_precision(y, s, sample_weight=w)
    assert auc[0] == 1.0 and math.isnan(auc[1]) and math.isnan(ap[1])

"""Metrics against hand-computed tables, scikit-learn, and brute force; bootstrap and calibration behaviour."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.errors import ConfigError, DataError
from lungxray.evaluation.metrics import (
    BINARY_METRICS,
    _BinaryKernel,
    _RankKernel,
    binary_metrics,
    bootstrap_ci,
    bootstrap_indices,
    calibration_curve_data,
    choose_threshold,
    evaluate_predictions,
    expected_calibration_error,
    multiclass_metrics,
    multilabel_metrics,
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


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-12)


@pytest.mark.parametrize(("y", "s", "t", "expected"), TABLE)
def test_binary_metrics_hand_table(y, s, t, expected):
    m = binary_metrics(y, s, t)
    for key, want in zip(KEYS, expected, strict=True):
        assert _close(m[key], want), (key, m[key], want)
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == len(y)


def test_binary_metrics_brier_ece_confusion_by_hand():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 0, 2, 1)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    # bins are (a, b]: 0.35 and 0.4 share (0.3, 0.4]: |0 - 0.1| + |1 - (0.35 + 0.4)| + |1 - 0.8|
    assert m["ece"] == pytest.approx((0.1 + 0.25 + 0.2) / 4)
    # one image per bin: |0 - 0.15| + |1 - 0.35| + |0 - 0.45| + |1 - 0.85|
    assert expected_calibration_error([0, 1, 0, 1], [0.15, 0.35, 0.45, 0.85]) == pytest.approx(1.4 / 4)
    assert (m["n"], m["n_pos"], m["n_neg"]) == (4, 2, 2)


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


def test_fast_bootstrap_kernels_match_sklearn_with_weights():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # heavy ties
    w = rng.integers(0, 4, (6, 200)).astype(float)
    auc, ap = _RankKernel(y, s)(w)
    for i in range(len(w)):
        assert auc[i] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w[i]))
        assert ap[i] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w[i]))
    # with all-ones weights the whole vector equals binary_metrics
    vec = _BinaryKernel(y, s, (0.45,))(np.ones((1, 200)))[0]
    point = binary_metrics(y, s, 0.45)
    for name, v in zip(BINARY_METRICS, vec, strict=True):
        assert v == pytest.approx(point[name]), name


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


# --------------------------------------------------------------------------- thresholds


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


# --------------------------------------------------------------------------- bootstrap


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


# --------------------------------------------------------------------------- calibration


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


# --------------------------------------------------------------------------- multiclass / multilabel


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


# --------------------------------------------------------------------------- metrics.json body


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

"""validation_scores (moved from training.py) gives the numbers of the former scikit-learn version."""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score, roc_auc_score

from lungxray.evaluation.metrics import validation_scores


def _former(task: str, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """training.validation_scores as it was before the move (reference implementation)."""
    out = {"auc": float("nan"), "accuracy": float("nan"), "f1": float("nan")}
    with contextlib.suppress(ValueError):
        if task == "binary":
            out["auc"] = roc_auc_score(y, prob[:, 0])
        elif task == "multiclass":
            out["auc"] = roc_auc_score(y, prob, multi_class="ovr", average="macro")
        else:
            aucs = []
            for c in range(y.shape[1]):
                known = ~np.isnan(y[:, c])
                if len(np.unique(y[known, c])) == 2:
                    aucs.append(roc_auc_score(y[known, c], prob[known, c]))
            out["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    if task == "binary":
        pred = (prob[:, 0] >= 0.5).astype(int)
        out["accuracy"] = float(np.mean(pred == y))
        out["f1"] = float(f1_score(y, pred, zero_division=0))
    elif task == "multiclass":
        pred = prob.argmax(1)
        out["accuracy"] = float(np.mean(pred == y))
        out["f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
    else:
        known = ~np.isnan(y)
        pred = prob >= 0.5
        out["accuracy"] = float(np.mean(pred[known] == (y[known] > 0.5)))
        out["f1"] = float(
            f1_score(np.nan_to_num(y).astype(int), pred.astype(int), average="macro", zero_division=0)
        )
    return {k: float(v) for k, v in out.items()}


def _same(new: dict, old: dict) -> None:
    assert list(new) == ["auc", "accuracy", "f1"]
    for k in old:
        if math.isnan(old[k]):
            assert math.isnan(new[k]), k
        elif k == "auc":  # one weighted Mann-Whitney AUC: equal to sklearn's up to float rounding (1 ulp)
            assert new[k] == pytest.approx(old[k], rel=1e-14, abs=1e-15)
        else:
            assert new[k] == old[k], k  # counts: bit-identical


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(8))
def test_binary_equals_former_implementation(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n).astype(float if seed % 2 else int)
    prob = np.round(1 / (1 + np.exp(-rng.normal(2 * y - 1, 1.5))), 2)[:, None]
    if seed == 7:
        prob[:] = 0.2  # nothing positive: F1 0 (zero_division), not NaN
    _same(validation_scores("binary", y, prob), _former("binary", y, prob))


@pytest.mark.parametrize("seed", range(8))
def test_multiclass_equals_former_implementation(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(10, 300)), int(rng.integers(2, 5))
    y = rng.integers(0, c, n)
    if seed == 3:
        y[y == c - 1] = 0  # a class absent from y: AUC NaN as before, F1 over the classes present
    prob = _softmax(rng.normal(size=(n, c)) + 2 * np.eye(c)[y])
    if seed == 5:
        prob[:, 0] = 0.0  # never predicted
        prob /= prob.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        _same(validation_scores("multiclass", y, prob), _former("multiclass", y, prob))


def test_multiclass_auc_nan_when_rows_do_not_sum_to_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    prob = rng.random((50, 3))
    new, old = validation_scores("multiclass", y, prob), _former("multiclass", y, prob)
    assert math.isnan(new["auc"]) and math.isnan(old["auc"])
    _same(new, old)


@pytest.mark.parametrize("seed", range(8))
def test_multilabel_with_nan_labels_equals_former_implementation(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(10, 300)), int(rng.integers(2, 8))
    y = (rng.random((n, c)) < 0.3).astype(float)
    y[rng.random((n, c)) < 0.2] = np.nan  # unknown labels
    y[:, 0] = np.where(np.isnan(y[:, 0]), np.nan, 0.0)  # a label without positives: left out of the AUC
    if seed == 2:
        y[:, :] = np.nan
        y[0, :] = 1.0  # no label has both classes: AUC NaN
    prob = np.clip(np.nan_to_num(y) * 0.4 + rng.random((n, c)) * 0.6, 0, 1)
    _same(validation_scores("multilabel", y, prob), _former("multilabel", y, prob))


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_non_finite_probabilities_give_nan_auc_as_before(task):
    rng = np.random.default_rng(1)
    if task == "binary":
        y, prob = rng.integers(0, 2, 40), rng.random((40, 1))
    elif task == "multiclass":
        y, prob = rng.integers(0, 3, 40), _softmax(rng.normal(size=(40, 3)))
    else:
        y, prob = (rng.random((40, 3)) < 0.4).astype(float), rng.random((40, 3))
    prob[3, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        new = validation_scores(task, y, prob)
    _same(new, _former(task, y, prob))
    assert math.isnan(new["auc"])

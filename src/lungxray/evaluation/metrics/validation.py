"""The per-epoch validation scores of training (history.csv: val_auc, val_accuracy, val_f1).

Moved from ``training.py`` and expressed with this package's metric functions; the numbers are
those of the former scikit-learn version (``roc_auc_score`` / ``f1_score(zero_division=0)``),
including its conventions, which differ on purpose from ``evaluate_predictions``:

* predictions at 0.5 (argmax for multiclass), never at the run's chosen threshold;
* F1 of an undefined class/label is 0, not NaN (``zero_division=0``);
* multiclass AUC is NaN unless every class occurs in ``y`` and the rows of ``prob`` sum to 1, and
  also with only 2 classes (the former call refused 2 probability columns);
* multilabel F1 treats unknown (NaN) labels as negative, while AUC and accuracy skip them;
* AUC is NaN when ``prob`` holds NaN/inf (a diverged model), accuracy and F1 are still reported.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.binary import _counts, _ranking, rates
from lungxray.evaluation.metrics.multiclass import multiclass_values


def _zero_if_nan(x: float) -> float:
    return 0.0 if math.isnan(x) else float(x)


def validation_scores(task: str, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """auc / accuracy / f1 at 0.5 on validation (macro over classes or labels); NaN when undefined.

    Args:
        task: "binary" | "multiclass" | "multilabel".
        y: binary (N,) 0/1; multiclass (N,) class indices; multilabel (N, C) 1/0/NaN.
        prob: binary (N, 1) positive-class probability; otherwise (N, C) probabilities.

    Returns:
        {"auc", "accuracy", "f1"} as floats.
    """
    out = _scores(task, y, prob)
    if not np.isfinite(np.asarray(prob, dtype=np.float64)).all():
        out["auc"] = math.nan  # scikit-learn refused non-finite scores
    return out


def _scores(task: str, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    if task == "binary":
        yb, s = ck.labels_1d(y, len(prob)), np.asarray(prob, dtype=np.float64)[:, 0]
        r = rates(_counts(yb, s, 0.5, None))
        auc = _ranking(yb, s, None, "validation_scores", ("auc",))["auc"]
        return {"auc": float(auc), "accuracy": float(r["accuracy"]), "f1": _zero_if_nan(r["f1"])}
    if task == "multiclass":
        p = np.asarray(prob, dtype=np.float64)
        classes = [str(k) for k in range(p.shape[1])]
        yc = ck.class_indices(y, len(p), classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            v = multiclass_values(yc, p, classes, None)
        aucs = [v["per_class"][c]["auc"] for c in classes]
        # roc_auc_score(multi_class="ovr") raised (-> NaN) unless every class occurs in y, the rows
        # sum to 1 and there are more than 2 classes (2 columns read as "binary" and were refused).
        defined = len(classes) > 2 and len(np.unique(yc)) == len(classes) and np.allclose(1, p.sum(axis=1))
        present = np.isfinite([v["per_class"][c]["f1"] for c in classes])  # in y or predicted
        f1s = [v["per_class"][c]["f1"] for c, ok in zip(classes, present, strict=True) if ok]
        return {
            "auc": float(np.mean(aucs)) if defined else math.nan,
            "accuracy": float(v["accuracy"]),
            "f1": float(np.mean(f1s)),
        }
    yl = np.asarray(y, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    known = ~np.isnan(yl)
    aucs, f1s = [], []
    for k in range(yl.shape[1]):
        yk = np.nan_to_num(yl[:, k]).astype(np.int64)  # unknown -> negative (for F1 only)
        if len(np.unique(yl[known[:, k], k])) == 2:
            aucs.append(_ranking(yk, p[:, k], known[:, k].astype(np.float64), "validation_scores")["auc"])
        f1s.append(_zero_if_nan(rates(_counts(yk, p[:, k], 0.5, None))["f1"]))
    pred = p >= 0.5
    return {
        "auc": float(np.mean(aucs)) if aucs else math.nan,
        "accuracy": float(np.mean(pred[known] == (yl[known] > 0.5))),
        "f1": float(np.mean(f1s)),
    }

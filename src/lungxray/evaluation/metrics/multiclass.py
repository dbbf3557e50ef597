"""Multi-class metrics of argmax predictions plus one-vs-rest AUCs, optionally weighted.

``multiclass_values`` is the single implementation: ``multiclass_metrics`` reports it unweighted
(the point estimate) and the bootstrap calls it with a (B, N) weight matrix (one row per replicate),
getting (B,) arrays in the same named structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from lungxray.errors import DataError
from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.binary import _ranking

# Per-class metrics, in the order of the metrics.json body.
CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auc")


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int, w: np.ndarray | None) -> np.ndarray:
    """(C, C) confusion matrix, rows = true class, columns = predicted; ints when unweighted.

    With (B, N) weights: (B, C, C) weighted counts, one matrix per weighting.
    """
    if w is None:
        return skm.confusion_matrix(y, pred, labels=list(range(n_classes)))
    cells = np.eye(n_classes * n_classes)[y * n_classes + pred]  # (N, C*C): the cell of each image
    return (w @ cells).reshape(*w.shape[:-1], n_classes, n_classes)


def _nan_weighted(values: np.ndarray, weights: np.ndarray) -> Any:
    """Mean of ``values`` over the last axis weighted by ``weights``, skipping NaN values."""
    ok = np.isfinite(values) & (weights > 0)
    return ck.wdiv(np.where(ok, values * weights, 0).sum(axis=-1), np.where(ok, weights, 0).sum(axis=-1))


def multiclass_values(
    y: np.ndarray, p: np.ndarray, classes: Sequence[str], w: np.ndarray | None
) -> dict[str, Any]:
    """Every multi-class metric of validated arrays under weights ``w`` (None, (N,) or (B, N)).

    Returns dict: accuracy, brier, per_class {name: {metric: value}}, support (C,) or (B, C),
    macro {metric}, weighted {metric} (by support), confusion. Values are floats, or (B,) arrays for
    (B, N) weights.
    """
    c = len(classes)
    cm = confusion_matrix(y, p.argmax(axis=1), c, w)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, called = cm.sum(axis=-1), cm.sum(axis=-2)
    total = support.sum(axis=-1)
    fp, fn = called - tp, support - tp
    tn = total[..., None] - tp - fp - fn
    per = {  # each (C,) or (B, C)
        "precision": ck.wdiv(tp, tp + fp),
        "recall": ck.wdiv(tp, tp + fn),
        "specificity": ck.wdiv(tn, tn + fp),
        "f1": ck.wdiv(2 * tp, 2 * tp + fp + fn),
        "auc": np.stack(
            [
                _ranking(
                    (y == k).astype(np.int64), p[:, k], w, f"multiclass_metrics, class {name!r}", ("auc",)
                )["auc"]
                for k, name in enumerate(classes)
            ],
            axis=-1,
        ),
    }
    sq = np.sum((p - np.eye(c)[y]) ** 2, axis=1)  # per image, in [0, 2]
    if w is None:
        accuracy, brier = float(np.trace(cm) / len(y)), float(np.mean(sq))
    else:
        accuracy, brier = ck.wdiv(tp.sum(axis=-1), total), ck.wdiv(w @ sq, w.sum(axis=-1))

    def scalar(x: Any) -> Any:
        return float(x) if np.ndim(x) == 0 else x

    return {
        "accuracy": scalar(accuracy),
        "brier": scalar(brier),
        "per_class": {
            name: {m: scalar(per[m][..., k]) for m in CLASS_METRICS} for k, name in enumerate(classes)
        },
        "support": support,
        "macro": {m: ck.nanmean(per[m]) for m in CLASS_METRICS},
        "weighted": {m: scalar(_nan_weighted(per[m], support)) for m in CLASS_METRICS},
        "confusion": cm,
    }


def multiclass_metrics(
    y_true_int: Any, prob: Any, classes: Sequence[str], sample_weight: Any = None
) -> dict[str, Any]:
    """Multi-class metrics of argmax predictions plus one-vs-rest AUCs.

    Args:
        y_true_int: (N,) int class indices into ``classes``.
        prob: (N, C) class probabilities (softmax), columns aligned with ``classes``.
        sample_weight: None or (N,) weights (counts).

    Returns:
        dict: n, accuracy, brier (multi-class: mean over images of sum_c (p_c - onehot_c)^2, in [0, 2]),
        per_class {name: precision, recall, specificity, f1, auc, support}, macro {...} (nanmean over
        classes; macro auc = one-vs-rest macro AUC), weighted {...} (by support), confusion (C, C)
        list of lists (rows = true class, columns = predicted), classes. A class absent from
        ``y_true_int`` has AUC NaN (with a warning) and is left out of the macro mean.
    """
    classes = list(classes)
    p = ck.prob_2d(prob, len(classes))
    y = ck.class_indices(y_true_int, len(p), classes)
    w = ck.weights(sample_weight, len(y))
    if w is not None and w.ndim != 1:
        raise DataError("multiclass_metrics takes one weighting (N,); the bootstrap uses multiclass_values.")
    v = multiclass_values(y, p, classes, w)
    support = v["support"]
    return {
        "n": len(y),
        "classes": classes,
        "accuracy": v["accuracy"],
        "brier": v["brier"],
        "per_class": {
            name: {**v["per_class"][name], "support": support[k].item()} for k, name in enumerate(classes)
        },
        "macro": v["macro"],
        "weighted": v["weighted"],
        "confusion": v["confusion"].tolist(),
    }

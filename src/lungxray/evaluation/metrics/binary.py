"""Binary metrics, one function per metric, each taking an optional ``sample_weight``.

Conventions (everywhere in lungxray):

* A prediction is **positive when ``score >= threshold``** (a score equal to the threshold is positive).
* A ratio whose denominator is zero (e.g. sensitivity with no positive images) is ``NaN``, never 0:
  "undefined" must not read as "always wrong".
* AUC and average precision need both classes; with one class they are ``NaN`` with an
  ``UndefinedMetricWarning`` (no warning for a (B, N) bootstrap weighting: NaN replicates are skipped).

``sample_weight`` is None, (N,) or (B, N) (see ``_checks``); a weight is a count, so the weighted
metric equals the metric of the sample with each image repeated that many times. With (B, N) every
function returns a (B,) array. AUC and average precision are one weighted numpy implementation
(weighted Mann-Whitney with ties counted 1/2; sklearn's step-function AP), used for point estimates
and bootstrap alike and checked against scikit-learn with ``sample_weight`` in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungxray.errors import DataError
from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.calibration import _brier, _ece

# The metrics reported with a CI for a binary task, in the order of the metrics.json body.
BINARY_METRICS = (
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "average_precision",
    "npv",
    "brier",
    "ece",
)
# Metrics that depend on the operating threshold (from the confusion counts) and those that do not.
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")
RANKING_METRICS = ("auc", "average_precision", "brier", "ece")

# --------------------------------------------------------------------------- confusion counts


def _counts(y: np.ndarray, s: np.ndarray, threshold: float, w: np.ndarray | None) -> dict[str, Any]:
    pred = s >= threshold
    pos = y == 1
    if w is None:  # plain image counts, as ints
        tp = int(np.count_nonzero(pred & pos))
        fp = int(np.count_nonzero(pred & ~pos))
        fn = int(np.count_nonzero(~pred & pos))
        return {"tp": tp, "fp": fp, "tn": len(y) - tp - fp - fn, "fn": fn}
    # float masks: a BLAS product (a bool operand would take numpy's slow mixed-type loop)
    tp, fp, fn = (w @ m.astype(np.float64) for m in (pred & pos, pred & ~pos, ~pred & pos))
    return {"tp": tp, "fp": fp, "tn": w.sum(axis=-1) - tp - fp - fn, "fn": fn}


def confusion_counts(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> dict:
    """``{"tp", "fp", "tn", "fn"}`` at ``threshold``: ints without weights, else weighted sums."""
    y, s = ck.binary_inputs(y_true, score)
    return _counts(y, s, threshold, ck.weights(sample_weight, len(s)))


# Each ratio from the confusion counts (scalars or (B,) arrays); NaN when the denominator is 0.
RATIOS = {
    "accuracy": lambda c: ck.wdiv(c["tp"] + c["tn"], c["tp"] + c["fp"] + c["tn"] + c["fn"]),
    "sensitivity": lambda c: ck.wdiv(c["tp"], c["tp"] + c["fn"]),
    "specificity": lambda c: ck.wdiv(c["tn"], c["tn"] + c["fp"]),
    "precision": lambda c: ck.wdiv(c["tp"], c["tp"] + c["fp"]),
    "npv": lambda c: ck.wdiv(c["tn"], c["tn"] + c["fn"]),
    "f1": lambda c: ck.wdiv(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
}


def rates(counts: dict) -> dict[str, Any]:
    """All ``THRESHOLD_METRICS`` from one set of confusion counts (see ``confusion_counts``)."""
    return {name: RATIOS[name](counts) for name in THRESHOLD_METRICS}


def _rate(name: str, y_true: Any, score: Any, threshold: float, sample_weight: Any) -> Any:
    return RATIOS[name](confusion_counts(y_true, score, threshold, sample_weight))


def accuracy(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> Any:
    """(tp + tn) / all."""
    return _rate("accuracy", y_true, score, threshold, sample_weight)


def sensitivity(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> Any:
    """Recall / true positive rate: tp / (tp + fn); NaN without positive images."""
    return _rate("sensitivity", y_true, score, threshold, sample_weight)


def specificity(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> Any:
    """True negative rate: tn / (tn + fp); NaN without negative images."""
    return _rate("specificity", y_true, score, threshold, sample_weight)


def precision(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> Any:
    """Positive predictive value: tp / (tp + fp); NaN without positive calls."""
    return _rate("precision", y_true, score, threshold, sample_weight)


def npv(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> Any:
    """Negative predictive value: tn / (tn + fn); NaN without negative calls."""
    return _rate("npv", y_true, score, threshold, sample_weight)


def f1(y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None) -> Any:
    """2 tp / (2 tp + fp + fn); NaN when there are no positives and no positive calls."""
    return _rate("f1", y_true, score, threshold, sample_weight)


# --------------------------------------------------------------------------- ranking: AUC, AP


def _score_groups(y: np.ndarray, s: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, G) positive and negative weight at each of the G distinct scores, ascending."""
    order = np.argsort(s, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(s[order])) + 1]  # first index of each distinct score
    w = rows[:, order]
    wp = w * (y[order] == 1)
    return np.add.reduceat(wp, starts, axis=1), np.add.reduceat(w - wp, starts, axis=1)


def _auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    # Mann-Whitney: P(score_pos > score_neg) + 1/2 P(tie), weighted; NaN with one class.
    below = np.cumsum(neg, axis=1) - neg
    return ck.wdiv((pos * (below + 0.5 * neg)).sum(axis=1), pos.sum(axis=1) * neg.sum(axis=1))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    # sum over distinct thresholds (high -> low) of (recall increment) * precision, as scikit-learn.
    tps = np.cumsum(pos[:, ::-1], axis=1)
    called = tps + np.cumsum(neg[:, ::-1], axis=1)
    prec = np.divide(tps, called, out=np.zeros_like(tps), where=called > 0)
    ap = ck.wdiv((pos[:, ::-1] * prec).sum(axis=1), pos.sum(axis=1))
    ap[neg.sum(axis=1) == 0] = np.nan  # one class only: undefined
    return ap


def _ranking(
    y: np.ndarray, s: np.ndarray, w: np.ndarray | None, what: str, names=("auc", "average_precision")
) -> dict[str, Any]:
    """AUC and/or average precision from one sort; warns (except for (B, N) weights) with one class."""
    pos, neg = _score_groups(y, s, ck.as_rows(w, len(s)))
    one_sample = w is None or w.ndim == 1
    if one_sample and not (pos.sum() > 0 and neg.sum() > 0):
        ck.warn_single_class(what, stacklevel=4)
    elif one_sample and np.isfinite(s).all():
        # a point estimate: scikit-learn's own value, to the last bit (training compares epochs by
        # it, and a one-ulp difference between two implementations can flip an exact tie)
        from sklearn.metrics import average_precision_score, roc_auc_score

        sk = {"auc": roc_auc_score, "average_precision": average_precision_score}
        return {name: float(sk[name](y, s, sample_weight=w)) for name in names}
    fns = {"auc": _auc, "average_precision": _average_precision}
    return {name: ck.result(fns[name](pos, neg), w) for name in names}


def roc_auc(y_true: Any, score: Any, sample_weight: Any = None) -> Any:
    """Area under the ROC curve (ties count 1/2) = ``sklearn.metrics.roc_auc_score``; NaN with one class.

    Args:
        y_true: (N,) 0/1 labels. score: (N,) any finite scores (only their order matters).
        sample_weight: None, (N,) or (B, N) non-negative weights (counts).

    Returns:
        float, or (B,) array for (B, N) weights. NaN (with an UndefinedMetricWarning unless the
        weights are (B, N)) when the weighted sample holds one class only.

    Raises:
        DataError: mismatched lengths, labels other than 0/1, non-finite scores, bad weights.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    s = ck.scores_1d(score, probability=False)
    y = ck.labels_1d(y_true, len(s))
    return _ranking(y, s, ck.weights(sample_weight, len(s)), "roc_auc", ("auc",))["auc"]


def average_precision(y_true: Any, score: Any, sample_weight: Any = None) -> Any:
    """Average precision (step integral of the PR curve) = ``sklearn.metrics.average_precision_score``.

    Same arguments, return shapes, degenerate cases and errors as ``roc_auc``.
    """
    s = ck.scores_1d(score, probability=False)
    y = ck.labels_1d(y_true, len(s))
    w = ck.weights(sample_weight, len(s))
    return _ranking(y, s, w, "average_precision", ("average_precision",))["average_precision"]


# --------------------------------------------------------------------------- all binary metrics


def threshold_free(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, what: str = "binary_metrics") -> dict:
    """``RANKING_METRICS`` (auc, average_precision, brier, ece) of validated arrays."""
    return {**_ranking(y, s, w, what), "brier": _brier(y, s, w), "ece": _ece(y, s, w)}


def at_threshold(y: np.ndarray, s: np.ndarray, threshold: float, w: np.ndarray | None) -> dict:
    """``THRESHOLD_METRICS`` plus tp/fp/tn/fn of validated arrays at one threshold."""
    counts = _counts(y, s, threshold, w)
    return {**rates(counts), **counts}


def binary_metrics(
    y_true: Any, score: Any, threshold: float = 0.5, sample_weight: Any = None
) -> dict[str, Any]:
    """All binary metrics at one operating threshold (positive when ``score >= threshold``).

    Args:
        y_true: (N,) 0/1 labels, 1 = positive class.
        score: (N,) predicted probability of the positive class, in [0, 1].
        threshold: operating point, chosen on validation data (see ``choose_threshold``).
        sample_weight: None or (N,) weights (counts); the metric values become weighted.

    Returns:
        dict with n, n_pos, n_neg, threshold, accuracy, sensitivity (recall), specificity,
        precision (PPV), npv, f1, auc, average_precision, brier, ece, tp, fp, tn, fn. Ratios with a
        zero denominator are NaN; auc and average_precision are NaN (with a warning) when y_true
        holds one class only. n / n_pos / n_neg count images, unweighted.

    Raises:
        DataError: mismatched lengths, labels other than 0/1, scores outside [0, 1] or not finite.
    """
    y, s = ck.binary_inputs(y_true, score)
    w = ck.weights(sample_weight, len(s))
    if w is not None and w.ndim != 1:
        raise DataError(
            "binary_metrics takes one weighting (N,); use the single-metric functions for (B, N)."
        )
    n_pos = int(y.sum())
    out: dict[str, Any] = {
        "n": len(y),
        "n_pos": n_pos,
        "n_neg": len(y) - n_pos,
        "threshold": float(threshold),
    }
    point = {**at_threshold(y, s, threshold, w), **threshold_free(y, s, w)}
    out.update({k: point[k] for k in (*THRESHOLD_METRICS, *RANKING_METRICS, "tp", "fp", "tn", "fn")})
    return out

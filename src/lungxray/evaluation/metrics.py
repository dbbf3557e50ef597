"""Pure metric functions over numpy arrays: binary, multi-class and multi-label metrics, operating
thresholds, calibration and patient-grouped bootstrap confidence intervals.

Conventions used everywhere in lungxray:

* A prediction is **positive when ``score >= threshold``** (a score equal to the threshold is positive).
* A ratio whose denominator is zero (e.g. sensitivity with no positive images, precision with no
  positive predictions) is ``NaN``, never 0: "undefined" must not read as "always wrong".
* A metric that needs both classes (AUC, average precision) is ``NaN`` with an
  ``UndefinedMetricWarning`` when only one class is present; averages over classes use ``nanmean``
  on purpose, so one undefined label does not hide the others (as MONAI's ``compute_roc_auc``).
* Point estimates use scikit-learn. The bootstrap recomputes metrics thousands of times, so it uses
  equivalent numpy implementations (``_fast_*``), checked against scikit-learn in the tests.

Example::

    t = choose_threshold(y_val, p_val, "youden")          # validation data only
    body = evaluate_predictions("binary", y_test, p_test, ("normal", "pneumonia"), threshold=t,
                                groups=test_patients)      # the metrics.json body
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.config import TASKS, parse_threshold_strategy
from lungxray.errors import DataError, check_option

__all__ = [
    "BINARY_METRICS",
    "BootstrapCI",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_samples",
    "calibration_curve_data",
    "choose_threshold",
    "evaluate_predictions",
    "expected_calibration_error",
    "multiclass_metrics",
    "multilabel_metrics",
]

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
_CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auc")


# --------------------------------------------------------------------------- validation helpers


def _labels_1d(y_true: Any, n: int | None = None, what: str = "y_true") -> np.ndarray:
    """0/1 labels as an int64 vector; DataError naming the problem otherwise."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} must be a 1-D array of 0/1 labels, got shape {y.shape}.")
    if n is not None and len(y) != n:
        raise DataError(f"{what} has {len(y)} entries but the scores have {n}; pass one label per score.")
    if len(y) == 0:
        raise DataError(f"{what} is empty: there are no images to evaluate.")
    yf = y.astype(np.float64)
    if not np.isin(yf, (0.0, 1.0)).all():
        bad = np.unique(yf[~np.isin(yf, (0.0, 1.0))])[:5]
        raise DataError(f"{what} must contain only 0 and 1 (1 = positive class), found {bad.tolist()}.")
    return yf.astype(np.int64)


def _scores_1d(score: Any, *, probability: bool, what: str = "score") -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise DataError(f"{what} must be a 1-D array (one score per image), got shape {s.shape}.")
    if not np.isfinite(s).all():
        raise DataError(
            f"{what} contains {int((~np.isfinite(s)).sum())} NaN/inf values; check the model outputs."
        )
    if probability and len(s) and (s.min() < 0.0 or s.max() > 1.0):
        raise DataError(
            f"{what} must be probabilities in [0, 1] (found {s.min():.3g}..{s.max():.3g}); "
            "apply a sigmoid/softmax to logits first."
        )
    return s


def _prob_2d(prob: Any, n_classes: int, what: str = "prob") -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise DataError(f"{what} must have shape (N, {n_classes}) (one column per class), got {p.shape}.")
    if not np.isfinite(p).all():
        raise DataError(f"{what} contains NaN/inf values; check the model outputs.")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise DataError(f"{what} must be probabilities in [0, 1]; apply softmax/sigmoid to logits first.")
    return p


def _div(num: float, den: float) -> float:
    """num / den, NaN when den == 0 (documented: undefined, not 0)."""
    return float(num) / float(den) if den else math.nan


def _warn_single_class(what: str) -> None:
    warnings.warn(
        f"{what}: only one class is present, so AUC and average precision are undefined (NaN).",
        UndefinedMetricWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- binary


def _counts(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = s >= threshold
    pos = y == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))
    return tp, fp, len(y) - tp - fp - fn, fn


def _ratios(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    n = tp + fp + tn + fn
    return {
        "accuracy": _div(tp + tn, n),
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "precision": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(y_true: Any, score: Any, threshold: float = 0.5) -> dict[str, Any]:
    """All binary metrics at one operating threshold (positive when ``score >= threshold``).

    Args:
        y_true: (N,) 0/1 labels, 1 = positive class.
        score: (N,) predicted probability of the positive class, in [0, 1].
        threshold: operating point, chosen on validation data (see ``choose_threshold``).

    Returns:
        dict with n, n_pos, n_neg, threshold, accuracy, sensitivity (recall), specificity,
        precision (PPV), npv, f1, auc, average_precision, brier, ece, tp, fp, tn, fn. Ratios with a
        zero denominator are NaN; auc and average_precision are NaN (with a warning) when y_true
        holds one class only.

    Raises:
        DataError: mismatched lengths, labels other than 0/1, scores outside [0, 1] or not finite.
    """
    s = _scores_1d(score, probability=True)
    y = _labels_1d(y_true, len(s))
    tp, fp, tn, fn = _counts(y, s, threshold)
    n_pos = int(y.sum())
    out: dict[str, Any] = {
        "n": len(y),
        "n_pos": n_pos,
        "n_neg": len(y) - n_pos,
        "threshold": float(threshold),
    }
    out.update(_ratios(tp, fp, tn, fn))
    if 0 < n_pos < len(y):
        out["auc"] = float(skm.roc_auc_score(y, s))
        out["average_precision"] = float(skm.average_precision_score(y, s))
    else:
        _warn_single_class("binary_metrics")
        out["auc"] = out["average_precision"] = math.nan
    out["brier"] = float(skm.brier_score_loss(y, s, pos_label=1))
    out["ece"] = expected_calibration_error(y, s)
    out.update(tp=tp, fp=fp, tn=tn, fn=fn)
    return out


# --------------------------------------------------------------------------- thresholds


def choose_threshold(y_true: Any, score: Any, strategy: str = "youden") -> float:
    """Pick the operating threshold from VALIDATION data (never test data: callers pass val arrays).

    Strategies (positive when ``score >= threshold``; candidates are the observed scores):

    * ``"0.5"``: 0.5.
    * ``"youden"``: maximises TPR - FPR over ``roc_curve`` thresholds (roc_curve's ``inf`` excluded).
    * ``"max-f1"``: maximises F1 over ``precision_recall_curve`` thresholds.
    * ``"sensitivity>=X"``: the HIGHEST threshold whose sensitivity >= X (best specificity under the
      constraint).
    * ``"specificity>=X"``: the LOWEST threshold whose specificity >= X (best sensitivity under the
      constraint).

    Ties between equally good thresholds go to the highest one (fewest positive calls). When the
    scores are probabilities the result lies in [0, 1]. With one class only in ``y_true`` the data
    cannot choose, so this warns and returns 0.5.

    Raises:
        ConfigError: unknown strategy (with the closest valid one suggested).
        DataError: invalid labels or scores.
    """
    kind, target = parse_threshold_strategy(strategy)
    s = _scores_1d(score, probability=False)
    y = _labels_1d(y_true, len(s))
    if kind == "0.5":
        return 0.5
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        warnings.warn(
            f"choose_threshold({strategy!r}): the validation labels hold one class only, so the "
            "threshold cannot be chosen from data; using 0.5.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return 0.5
    probability = bool(s.min() >= 0.0 and s.max() <= 1.0)
    eps = 1e-12  # float tolerance on the rate constraints (e.g. 0.95 vs 19/20)
    if kind == "max-f1":
        precision, recall, thr = skm.precision_recall_curve(y, s)
        p, r = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        best = np.flatnonzero(f1 >= f1.max() - eps)
        t = float(thr[best].max())  # thresholds increase here; ties -> the highest
    else:
        fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
        fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop roc_curve's leading inf threshold
        if kind == "youden":
            j = tpr - fpr
            t = float(thr[np.flatnonzero(j >= j.max() - eps)].max())
        elif kind == "sensitivity":
            # thresholds decrease and tpr increases: the first index meeting the target is the highest
            t = float(thr[np.flatnonzero(tpr >= target - eps)[0]])
        else:  # specificity: the last index with fpr <= 1 - X is the lowest threshold
            ok = np.flatnonzero(1.0 - fpr >= target - eps)
            if len(ok):
                t = float(thr[ok[-1]])
            else:  # only "nothing positive" reaches it: just above the highest score
                t = float(np.nextafter(s.max(), np.inf))
                if probability and t > 1.0:
                    warnings.warn(
                        f"choose_threshold({strategy!r}): a negative image scored 1.0, so no threshold "
                        "in [0, 1] reaches that specificity; using 1.0.",
                        UndefinedMetricWarning,
                        stacklevel=2,
                    )
    return float(np.clip(t, 0.0, 1.0)) if probability else t


# --------------------------------------------------------------------------- calibration


def _bin_ids(prob: np.ndarray, n_bins: int) -> np.ndarray:
    # Same binning as sklearn.calibration.calibration_curve(strategy="uniform"): bins (a, b], first [0, b].
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], prob)


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = 10) -> float:
    """ECE of the positive-class probability: sum over equal-width bins of (n_b / N) * |frac_pos - mean_prob|.

    0 is perfect calibration; the worst is 1. ``prob``: (N,) in [0, 1]; ``y_true``: (N,) 0/1.
    """
    p = _scores_1d(prob, probability=True, what="prob")
    y = _labels_1d(y_true, len(p))
    return _fast_ece(y, p, n_bins)


def _fast_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    ids = _bin_ids(p, n_bins)
    gap = np.abs(
        np.bincount(ids, weights=y, minlength=n_bins) - np.bincount(ids, weights=p, minlength=n_bins)
    )
    return float(gap.sum() / len(p)) if len(p) else math.nan


def calibration_curve_data(y_true: Any, prob: Any, n_bins: int = 10) -> dict[str, list]:
    """Reliability-diagram data over equal-width bins (same bins as ``expected_calibration_error``).

    Returns dict of lists, one entry per bin: ``bin_edges`` (n_bins + 1), ``mean_predicted``,
    ``fraction_positive`` (NaN for empty bins), ``counts``; plus ``ece``.
    """
    p = _scores_1d(prob, probability=True, what="prob")
    y = _labels_1d(y_true, len(p))
    ids = _bin_ids(p, n_bins)
    count = np.bincount(ids, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(ids, weights=p, minlength=n_bins) / count
        frac = np.bincount(ids, weights=y, minlength=n_bins) / count
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "mean_predicted": mean_p.tolist(),
        "fraction_positive": frac.tolist(),
        "counts": count.astype(int).tolist(),
        "ece": _fast_ece(y, p, n_bins),
    }


# --------------------------------------------------------------------------- fast kernels (bootstrap)
#
# A bootstrap resample is a vector of multiplicities w (how often each image was drawn). Every metric
# here is a weighted sum, so B resamples at once are a (B, N) weight matrix and a few matrix products;
# the scores are sorted once, not once per resample. With integer weights these equal the metric of
# the resampled arrays (and scikit-learn with sample_weight), which the tests check.


def _wdiv(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), math.nan), where=den > 0)


class _RankKernel:
    """AUC and average precision of one score column under many weightings, sorting once."""

    def __init__(self, y: np.ndarray, s: np.ndarray):
        self.order = np.argsort(s, kind="mergesort")
        ss = s[self.order]
        self.starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]  # first index of each distinct score
        self.pos = (y[self.order] == 1).astype(np.float64)

    def __call__(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) AUC (Mann-Whitney, ties count 1/2) and (B,) AP (sklearn's step definition)."""
        w = w[:, self.order]
        wp = w * self.pos
        pos = np.add.reduceat(wp, self.starts, axis=1)  # (B, G) positive weight per distinct score
        neg = np.add.reduceat(w - wp, self.starts, axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        below = np.cumsum(neg, axis=1) - neg
        auc = _wdiv((pos * (below + 0.5 * neg)).sum(axis=1), n_pos * n_neg)
        # AP = sum over distinct thresholds (high -> low) of (recall increment) * precision
        tps = np.cumsum(pos[:, ::-1], axis=1)
        called = tps + np.cumsum(neg[:, ::-1], axis=1)
        precision = np.divide(tps, called, out=np.zeros_like(tps), where=called > 0)
        ap = _wdiv((pos[:, ::-1] * precision).sum(axis=1), n_pos)
        ap[n_neg == 0] = math.nan  # one class only: undefined, as in binary_metrics
        return auc, ap


class _BinaryKernel:
    """BINARY_METRICS (in order) under (B, N) weights, at each of ``thresholds``: (B, 10 * T)."""

    def __init__(self, y: np.ndarray, s: np.ndarray, thresholds: Sequence[float], n_bins: int = 10):
        self.rank = _RankKernel(y, s)
        pos = y == 1
        self.calls = [(s >= t, pos) for t in thresholds]
        self.sq = (s - y) ** 2
        onehot = np.eye(n_bins)[_bin_ids(s, n_bins)]  # (N, n_bins)
        self.bin_gap = onehot * (y - s)[:, None]  # per-bin (positives - probability mass)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        auc, ap = self.rank(w)
        total = w.sum(axis=1)
        brier = w @ self.sq / total
        ece = np.abs(w @ self.bin_gap).sum(axis=1) / total
        blocks = []
        for pred, pos in self.calls:
            tp, fp, fn = w @ (pred & pos), w @ (pred & ~pos), w @ (~pred & pos)
            tn = total - tp - fp - fn
            r = _wratios(tp, fp, tn, fn)
            blocks += [auc, r["accuracy"], r["sensitivity"], r["specificity"], r["precision"], r["f1"]]
            blocks += [ap, r["npv"], brier, ece]
        return np.column_stack(blocks)


def _wratios(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    return {
        "accuracy": _wdiv(tp + tn, tp + fp + tn + fn),
        "sensitivity": _wdiv(tp, tp + fn),
        "specificity": _wdiv(tn, tn + fp),
        "precision": _wdiv(tp, tp + fp),
        "npv": _wdiv(tn, tn + fn),
        "f1": _wdiv(2 * tp, 2 * tp + fp + fn),
    }


class _MulticlassKernel:
    """[accuracy, brier, macro P/R/spec/F1/AUC, weighted F1, per class P/R/spec/F1/AUC] under weights."""

    def __init__(self, y: np.ndarray, p: np.ndarray):
        self.c = c = p.shape[1]
        self.ranks = [_RankKernel((y == k).astype(np.int64), p[:, k]) for k in range(c)]
        self.cells = np.eye(c * c)[y * c + p.argmax(axis=1)]  # (N, C*C) confusion cell of each image
        self.brier = np.sum((p - np.eye(c)[y]) ** 2, axis=1)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        c = self.c
        cm = (w @ self.cells).reshape(-1, c, c)  # (B, C, C), rows = truth
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support, called, total = cm.sum(axis=2), cm.sum(axis=1), cm.sum(axis=(1, 2))
        fp, fn = called - tp, support - tp
        tn = total[:, None] - tp - fp - fn
        auc = np.column_stack([r(w)[0] for r in self.ranks])
        per = np.stack(
            [
                _wdiv(tp, tp + fp),
                _wdiv(tp, tp + fn),
                _wdiv(tn, tn + fp),
                _wdiv(2 * tp, 2 * tp + fp + fn),
                auc,
            ],
            axis=2,
        )  # (B, C, 5) in _CLASS_METRICS order
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            macro = np.nanmean(per, axis=1)
        f1 = per[:, :, 3]
        ok = np.isfinite(f1)
        weighted_f1 = _wdiv(np.where(ok, f1 * support, 0).sum(axis=1), np.where(ok, support, 0).sum(axis=1))
        head = np.column_stack([tp.sum(axis=1) / total, w @ self.brier / total])
        return np.column_stack([head, macro, weighted_f1, per.reshape(len(w), -1)])


class _MultilabelKernel:
    """[macro AUC, macro AP, per label AUC, AP, sensitivity, specificity]; NaN labels get weight 0."""

    def __init__(self, y: np.ndarray, p: np.ndarray, thresholds: np.ndarray):
        self.labels = []
        for k in range(p.shape[1]):
            known = ~np.isnan(y[:, k])
            yk = np.where(known, y[:, k], 0).astype(np.int64)
            pred = p[:, k] >= thresholds[k]
            self.labels.append(
                (
                    known.astype(np.float64),
                    _RankKernel(np.where(known, yk, -1), p[:, k]),
                    pred & (yk == 1) & known,
                    ~pred & (yk == 1) & known,
                    pred & (yk == 0) & known,
                    ~pred & (yk == 0) & known,
                )
            )

    def __call__(self, w: np.ndarray) -> np.ndarray:
        cols = []
        for known, rank, tp, fn, fp, tn in self.labels:
            auc, ap = rank(w * known)
            cols += [auc, ap, _wdiv(w @ tp, w @ (tp | fn)), _wdiv(w @ tn, w @ (tn | fp))]
        per = np.column_stack(cols).reshape(len(w), -1, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            macro = np.nanmean(per[:, :, :2], axis=1)
        return np.column_stack([macro, per.reshape(len(w), -1)])


def _per_class_from_cm(cm: np.ndarray) -> np.ndarray:
    """(C, 4) precision, recall, specificity, F1 per class from a confusion matrix (rows = truth)."""
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.column_stack([tp / (tp + fp), tp / (tp + fn), tn / (tn + fp), 2 * tp / (2 * tp + fp + fn)])
    return out


def _nan_weighted(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values) & (weights > 0)
    return float(np.sum(values[ok] * weights[ok]) / np.sum(weights[ok])) if ok.any() else math.nan


# --------------------------------------------------------------------------- bootstrap


class BootstrapCI(tuple):
    """``(low, high)`` of a percentile bootstrap CI; ``.used`` resamples gave a defined metric, of ``.n``."""

    def __new__(cls, low: float, high: float, used: int, n: int) -> BootstrapCI:
        self = super().__new__(cls, (float(low), float(high)))
        self.used = int(used)
        self.n = int(n)
        return self

    @property
    def low(self) -> float:
        return self[0]

    @property
    def high(self) -> float:
        return self[1]

    def __repr__(self) -> str:
        return f"BootstrapCI(low={self[0]:.4g}, high={self[1]:.4g}, used={self.used}/{self.n})"


def bootstrap_indices(
    n_items: int, *, groups: Any = None, n: int = 1000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield ``n`` resamples of row indices, drawn with replacement; deterministic for a seed.

    Without ``groups`` each resample draws ``n_items`` rows. With ``groups`` ((n_items,) patient ids)
    it draws as many patients as there are, with replacement, and takes ALL rows of each drawn
    patient, so images of one patient stay together (their errors are correlated).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n):
            yield rng.integers(0, n_items, size=n_items)
        return
    g = np.asarray(groups)
    if g.shape != (n_items,):
        raise DataError(f"groups must hold one patient id per image ({n_items}), got shape {g.shape}.")
    _, codes = np.unique(g, return_inverse=True)
    order = np.argsort(codes, kind="stable")  # rows grouped by patient
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    n_groups = len(sizes)
    for _ in range(n):
        pick = rng.integers(0, n_groups, size=n_groups)
        lens = sizes[pick]
        offsets = np.repeat(np.cumsum(lens) - lens, lens)
        yield order[np.repeat(starts[pick], lens) + np.arange(lens.sum()) - offsets]


def _bootstrap_weights(n_items: int, *, groups: Any, n: int, seed: int) -> Iterator[np.ndarray]:
    """The resamples of ``bootstrap_indices`` (same seed, same draws) as (B, N) multiplicity chunks."""
    chunk = max(1, min(n, 2_000_000 // max(n_items, 1)))  # bounded memory for large test sets
    rows: list[np.ndarray] = []
    for idx in bootstrap_indices(n_items, groups=groups, n=n, seed=seed):
        rows.append(np.bincount(idx, minlength=n_items).astype(np.float64))
        if len(rows) == chunk:
            yield np.stack(rows)
            rows = []
    if rows:
        yield np.stack(rows)


def bootstrap_samples(
    metric_fn: Callable[..., Any], *arrays: Any, groups: Any = None, n: int = 1000, seed: int = 0
) -> np.ndarray:
    """``metric_fn(*resampled_arrays)`` for each of ``n`` bootstrap resamples: (n,) or (n, K) floats.

    ``metric_fn`` may return a scalar or a 1-D vector (many metrics from one resample, which is
    how ``evaluate_predictions`` stays fast). NaN marks a resample where a metric is undefined.
    """
    if not arrays:
        raise TypeError("bootstrap_samples needs at least one array to resample.")
    arrs = [np.asarray(a) for a in arrays]
    n_items = len(arrs[0])
    if any(len(a) != n_items for a in arrs):
        raise DataError(f"all arrays must have the same length; got {[len(a) for a in arrs]}.")
    out = [
        np.asarray(metric_fn(*(a[idx] for a in arrs)), dtype=np.float64)
        for idx in bootstrap_indices(n_items, groups=groups, n=n, seed=seed)
    ]
    return np.stack(out) if out else np.empty((0,))


def _percentile_ci(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: (low, high, used) of the finite samples; NaN when none."""
    s = samples.reshape(len(samples), -1)
    lo = np.full(s.shape[1], math.nan)
    hi = np.full(s.shape[1], math.nan)
    used = np.isfinite(s).sum(axis=0)
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    for k in range(s.shape[1]):
        col = s[:, k][np.isfinite(s[:, k])]
        if len(col):
            lo[k], hi[k] = np.percentile(col, q)
    return lo, hi, used


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    groups: Any = None,
    n: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``metric_fn(*arrays)``, resampling patients when ``groups`` is given.

    Resamples where the metric is NaN (e.g. one class only, so no AUC) are skipped; ``.used`` on the
    result says how many counted. Returns ``(low, high)`` (NaN, NaN when none counted).

    >>> low, high = bootstrap_ci(lambda y, s: np.mean(y == (s >= 0.5)), y, s, groups=patients)
    """
    if not 0.0 < ci < 1.0:
        raise DataError(f"ci must be in (0, 1), got {ci}.")
    samples = bootstrap_samples(metric_fn, *arrays, groups=groups, n=n, seed=seed)
    if samples.ndim != 1:
        raise TypeError("bootstrap_ci needs a scalar metric; use bootstrap_samples for vectors.")
    lo, hi, used = _percentile_ci(samples, ci)
    return BootstrapCI(lo[0], hi[0], used[0], n)


# --------------------------------------------------------------------------- multi-class / multi-label


def multiclass_metrics(y_true_int: Any, prob: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Multi-class metrics of argmax predictions plus one-vs-rest AUCs.

    Args:
        y_true_int: (N,) int class indices into ``classes``.
        prob: (N, C) class probabilities (softmax), columns aligned with ``classes``.

    Returns:
        dict: n, accuracy, brier (multi-class: mean over images of sum_c (p_c - onehot_c)^2, in [0, 2]),
        per_class {name: precision, recall, specificity, f1, auc, support}, macro {...} (nanmean over
        classes; macro auc = one-vs-rest macro AUC), weighted {...} (by support), confusion (C, C)
        list of lists (rows = true class, columns = predicted), classes.
    """
    classes = list(classes)
    c = len(classes)
    p = _prob_2d(prob, c)
    y = np.asarray(y_true_int)
    if y.ndim != 1 or len(y) != len(p):
        raise DataError(f"y_true_int must be (N,) = ({len(p)},) class indices, got shape {y.shape}.")
    if len(y) == 0:
        raise DataError("y_true_int is empty: there are no images to evaluate.")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError("y_true_int must hold integer class indices.")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= c:
        raise DataError(
            f"y_true_int must be in 0..{c - 1} (one per class of {classes}), found {y.min()}..{y.max()}."
        )
    cm = skm.confusion_matrix(y, p.argmax(axis=1), labels=list(range(c)))
    per = _per_class_from_cm(cm.astype(np.float64))
    support = cm.sum(axis=1)
    aucs = []
    for k in range(c):
        yk = (y == k).astype(np.int64)
        if 0 < yk.sum() < len(yk):
            aucs.append(float(skm.roc_auc_score(yk, p[:, k])))
        else:
            _warn_single_class(f"multiclass_metrics, class {classes[k]!r}")
            aucs.append(math.nan)
    per = np.column_stack([per, aucs])
    per_class = {
        name: {**{m: float(per[k, j]) for j, m in enumerate(_CLASS_METRICS)}, "support": int(support[k])}
        for k, name in enumerate(classes)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = {m: float(np.nanmean(per[:, j])) for j, m in enumerate(_CLASS_METRICS)}
    weighted = {m: _nan_weighted(per[:, j], support) for j, m in enumerate(_CLASS_METRICS)}
    onehot = np.eye(c)[y]
    return {
        "n": len(y),
        "classes": classes,
        "accuracy": float(np.trace(cm) / len(y)),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
        "per_class": per_class,
        "macro": macro,
        "weighted": weighted,
        "confusion": cm.tolist(),
    }


def _thresholds_vector(thresholds: Any, c: int) -> np.ndarray:
    if thresholds is None:
        return np.full(c, 0.5)
    if isinstance(thresholds, dict):
        raise DataError("thresholds must be a sequence aligned with classes, not a dict.")
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(c, float(t))
    if t.shape != (c,):
        raise DataError(f"thresholds must hold one value per label ({c}), got {t.shape}.")
    return t


def multilabel_metrics(
    y_true: Any, prob: Any, classes: Sequence[str], thresholds: Any = None
) -> dict[str, Any]:
    """Per-label metrics of a multi-label task (CheXNet-style table); NaN labels are masked per label.

    Args:
        y_true: (N, C) 1/0 per label, NaN = unknown (excluded from that label's metrics only).
        prob: (N, C) sigmoid probabilities.
        thresholds: per-label operating thresholds (C,), a scalar, or None (0.5).

    Returns:
        dict: n, classes, thresholds, per_class {name: n, n_pos, auc, average_precision, sensitivity,
        specificity, threshold}, macro_auc and macro_average_precision (nanmean over labels on
        purpose: labels with one class only are NaN, with a warning, and left out of the mean).
    """
    classes = list(classes)
    c = len(classes)
    p = _prob_2d(prob, c)
    y = np.asarray(y_true, dtype=np.float64)
    if y.shape != p.shape:
        raise DataError(f"y_true must have the shape of prob {p.shape}, got {y.shape}.")
    known = ~np.isnan(y)
    if not np.isin(y[known], (0.0, 1.0)).all():
        raise DataError("y_true must contain only 1, 0 or NaN (unknown).")
    t = _thresholds_vector(thresholds, c)
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        m = known[:, k]
        yk, pk = y[m, k].astype(np.int64), p[m, k]
        n_pos = int(yk.sum())
        r = _ratios(*_counts(yk, pk, t[k]))
        if 0 < n_pos < len(yk):
            auc = float(skm.roc_auc_score(yk, pk))
            ap = float(skm.average_precision_score(yk, pk))
        else:
            _warn_single_class(f"multilabel_metrics, label {name!r}")
            auc = ap = math.nan
        per_class[name] = {
            "n": int(m.sum()),
            "n_pos": n_pos,
            "auc": auc,
            "average_precision": ap,
            "sensitivity": r["sensitivity"],
            "specificity": r["specificity"],
            "threshold": float(t[k]),
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro_auc = float(np.nanmean([v["auc"] for v in per_class.values()]))
        macro_ap = float(np.nanmean([v["average_precision"] for v in per_class.values()]))
    return {
        "n": len(y),
        "classes": classes,
        "thresholds": t.tolist(),
        "per_class": per_class,
        "macro_auc": macro_auc,
        "macro_average_precision": macro_ap,
    }


# --------------------------------------------------------------------------- metrics.json body


def _clean(x: Any) -> Any:
    """Plain-Python, JSON-safe copy: numpy scalars -> float/int, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


def _with_ci(
    values: np.ndarray, lo: np.ndarray, hi: np.ndarray, names: Sequence[str], start: int = 0
) -> dict:
    return {
        name: {"value": values[start + j], "ci_low": lo[start + j], "ci_high": hi[start + j]}
        for j, name in enumerate(names)
    }


def evaluate_predictions(
    task: str,
    y_true: Any,
    scores: Any,
    classes: Sequence[str],
    *,
    threshold: float | None = None,
    thresholds: Any = None,
    groups: Any = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The body of ``metrics.json``: every metric with a bootstrap CI, JSON-safe (NaN -> None).

    The threshold(s) are given, never chosen here: they come from validation data
    (``choose_threshold``) and stay fixed across bootstrap resamples.

    Args:
        task: "binary" | "multiclass" | "multilabel".
        y_true: binary (N,) 0/1 of ``classes[1]``; multiclass (N,) int; multilabel (N, C) 1/0/NaN.
        scores: binary (N,) probability of ``classes[1]``; multiclass/multilabel (N, C) probabilities.
        threshold: binary operating threshold (default 0.5). ``thresholds``: multilabel, per label.
        groups: (N,) patient ids; the bootstrap then resamples patients ("unit": "patient").
        n_boot: bootstrap resamples (0: no CIs); ``ci``: coverage; ``seed``: resampling seed.

    Returns:
        binary: {auc, accuracy, sensitivity, specificity, precision, f1, average_precision, npv, brier,
        ece: {value, ci_low, ci_high}, threshold, n, class_counts, confusion {tp, fp, tn, fn},
        "at_0.5" (same metrics at 0.5, only when threshold != 0.5), bootstrap {n, unit, used, ci, seed}}
        where "used" counts the resamples in which the headline metric (binary: auc; multiclass:
        accuracy; multilabel: macro_auc) was defined.
        multiclass: accuracy, brier, macro_{precision,recall,specificity,f1,auc}, weighted_f1 (with CIs),
        per_class {name: {precision, recall, specificity, f1, auc with CIs, support}}, confusion.
        multilabel: macro_auc, macro_average_precision (with CIs), per_class {name: {auc,
        average_precision, sensitivity, specificity with CIs, n, n_pos, threshold}}.
    """
    check_option(task, TASKS, "task")
    classes = [str(c) for c in classes]
    if n_boot < 0:
        raise DataError(f"n_boot must be >= 0, got {n_boot}.")
    common = {"task": task, "classes": classes}
    if task == "binary":
        body = _evaluate_binary(y_true, scores, classes, threshold, groups, n_boot, ci, seed)
    elif task == "multiclass":
        body = _evaluate_multiclass(y_true, scores, classes, groups, n_boot, ci, seed)
    else:
        body = _evaluate_multilabel(y_true, scores, classes, thresholds, groups, n_boot, ci, seed)
    used = body.pop("_used")
    body["bootstrap"] = {
        "n": int(n_boot),
        "unit": "patient" if groups is not None else "image",
        "used": int(used),
        "ci": float(ci),
        "seed": int(seed),
    }
    return _clean({**common, **body})


def _run_bootstrap(kernel: Callable, n_items: int, groups: Any, n_boot: int, ci: float, seed: int, k: int):
    """Percentile CIs of every column of ``kernel(weights)``; "used" counts the first (headline) column."""
    if n_boot == 0:
        return np.full(k, math.nan), np.full(k, math.nan), 0
    samples = np.concatenate(
        [kernel(w) for w in _bootstrap_weights(n_items, groups=groups, n=n_boot, seed=seed)]
    )
    lo, hi, used = _percentile_ci(samples, ci)
    return lo, hi, int(used[0])


def _evaluate_binary(y_true, scores, classes, threshold, groups, n_boot, ci, seed) -> dict:
    if len(classes) != 2:
        raise DataError(f"a binary task needs 2 classes (negative, positive), got {classes}.")
    s = _scores_1d(scores, probability=True, what="scores")
    y = _labels_1d(y_true, len(s))
    t = 0.5 if threshold is None else float(threshold)
    point = binary_metrics(y, s, t)
    k = len(BINARY_METRICS)
    extra = t != 0.5
    values = np.array([point[m] for m in BINARY_METRICS])
    at05 = binary_metrics(y, s, 0.5) if extra else None
    if extra:
        values = np.concatenate([values, [at05[m] for m in BINARY_METRICS]])

    kernel = _BinaryKernel(y, s, (t, 0.5) if extra else (t,))
    lo, hi, used = _run_bootstrap(kernel, len(y), groups, n_boot, ci, seed, len(values))
    n_pos = int(y.sum())
    body = _with_ci(values, lo, hi, BINARY_METRICS)
    body.update(
        threshold=t,
        positive_class=classes[1],
        n=len(y),
        class_counts={classes[0]: len(y) - n_pos, classes[1]: n_pos},
        confusion={m: point[m] for m in ("tp", "fp", "tn", "fn")},
    )
    if extra:
        body["at_0.5"] = {
            "threshold": 0.5,
            **_with_ci(values, lo, hi, BINARY_METRICS, start=k),
            "confusion": {m: at05[m] for m in ("tp", "fp", "tn", "fn")},
        }
    body["_used"] = used
    return body


def _evaluate_multiclass(y_true, scores, classes, groups, n_boot, ci, seed) -> dict:
    point = multiclass_metrics(y_true, scores, classes)
    y = np.asarray(y_true).astype(np.int64)
    p = _prob_2d(scores, len(classes), "scores")
    head = ["accuracy", "brier"] + [f"macro_{m}" for m in _CLASS_METRICS] + ["weighted_f1"]
    values = np.concatenate(
        [
            [point["accuracy"], point["brier"]],
            [point["macro"][m] for m in _CLASS_METRICS],
            [point["weighted"]["f1"]],
            [point["per_class"][c][m] for c in classes for m in _CLASS_METRICS],
        ]
    )
    lo, hi, used = _run_bootstrap(_MulticlassKernel(y, p), len(y), groups, n_boot, ci, seed, len(values))
    body = _with_ci(values, lo, hi, head)
    body["per_class"] = {
        c: {
            **_with_ci(values, lo, hi, _CLASS_METRICS, start=len(head) + i * len(_CLASS_METRICS)),
            "support": point["per_class"][c]["support"],
        }
        for i, c in enumerate(classes)
    }
    body.update(
        n=point["n"],
        class_counts={c: point["per_class"][c]["support"] for c in classes},
        confusion={"labels": classes, "matrix": point["confusion"]},
        _used=used,
    )
    return body


def _evaluate_multilabel(y_true, scores, classes, thresholds, groups, n_boot, ci, seed) -> dict:
    point = multilabel_metrics(y_true, scores, classes, thresholds)
    y = np.asarray(y_true, dtype=np.float64)
    p = _prob_2d(scores, len(classes), "scores")
    t = np.asarray(point["thresholds"])
    names = ("auc", "average_precision", "sensitivity", "specificity")
    values = np.concatenate(
        [
            [point["macro_auc"], point["macro_average_precision"]],
            [point["per_class"][c][m] for c in classes for m in names],
        ]
    )
    lo, hi, used = _run_bootstrap(_MultilabelKernel(y, p, t), len(y), groups, n_boot, ci, seed, len(values))
    body = _with_ci(values, lo, hi, ["macro_auc", "macro_average_precision"])
    body["per_class"] = {
        c: {
            **_with_ci(values, lo, hi, names, start=2 + i * len(names)),
            **{m: point["per_class"][c][m] for m in ("n", "n_pos", "threshold")},
        }
        for i, c in enumerate(classes)
    }
    body.update(
        n=point["n"],
        thresholds=point["thresholds"],
        class_counts={c: point["per_class"][c]["n_pos"] for c in classes},
        _used=used,
    )
    return body

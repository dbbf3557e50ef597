"""Probability quality of a binary score: Brier score, expected calibration error, reliability data.

All take ``(N,)`` 0/1 labels and ``(N,)`` probabilities of the positive class, and an optional
``sample_weight`` (None, (N,) or (B, N); see ``_checks``): a weight counts an image that many
times, so a bootstrap replicate is just a weighting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lungxray.errors import DataError
from lungxray.evaluation.metrics import _checks as ck

N_BINS = 10


def bin_ids(prob: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(N,) bin index of each probability over ``n_bins`` equal-width bins.

    Same binning as ``sklearn.calibration.calibration_curve(strategy="uniform")``: bins are (a, b],
    the first one [0, b].
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], prob)


def _brier(y: np.ndarray, s: np.ndarray, w: np.ndarray | None) -> float | np.ndarray:
    # scikit-learn's binary form (one-hot [1 - y, y] against [1 - p, p], halved) so the unweighted
    # value is bit-identical to brier_score_loss.
    t = y.astype(np.float64)
    terms = ((1.0 - t) - (1.0 - s)) ** 2 + (t - s) ** 2
    if w is None:
        return float(np.mean(terms) * 0.5)
    rows = ck.as_rows(w, len(s))
    return ck.result(ck.wdiv(rows @ terms, rows.sum(axis=1)) * 0.5, w)


def brier_score(y_true: Any, prob: Any, sample_weight: Any = None) -> float | np.ndarray:
    """Mean squared error of the probability, in [0, 1] (0 = perfect); (B,) for (B, N) weights."""
    y, s = ck.binary_inputs(y_true, prob, what="prob")
    return _brier(y, s, ck.weights(sample_weight, len(s)))


def _ece(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, n_bins: int = N_BINS) -> float | np.ndarray:
    ids = bin_ids(s, n_bins)
    if w is None:
        gap = np.abs(
            np.bincount(ids, weights=y, minlength=n_bins) - np.bincount(ids, weights=s, minlength=n_bins)
        )
        return float(gap.sum() / len(s)) if len(s) else math.nan
    rows = ck.as_rows(w, len(s))
    bin_gap = np.eye(n_bins)[ids] * (y - s)[:, None]  # (N, n_bins): per-bin positives - probability mass
    return ck.result(ck.wdiv(np.abs(rows @ bin_gap).sum(axis=1), rows.sum(axis=1)), w)


def expected_calibration_error(
    y_true: Any, prob: Any, n_bins: int = N_BINS, sample_weight: Any = None
) -> float | np.ndarray:
    """ECE: sum over equal-width bins of (n_b / N) * |frac_pos_b - mean_prob_b|.

    0 is perfect calibration; the worst is 1. ``prob``: (N,) in [0, 1]; ``y_true``: (N,) 0/1.
    With weights, n_b and N are weighted counts.
    """
    y, s = ck.binary_inputs(y_true, prob, what="prob")
    return _ece(y, s, ck.weights(sample_weight, len(s)), n_bins)


def calibration_curve_data(
    y_true: Any, prob: Any, n_bins: int = N_BINS, sample_weight: Any = None
) -> dict[str, list]:
    """Reliability-diagram data over equal-width bins (same bins as ``expected_calibration_error``).

    Returns dict of lists, one entry per bin: ``bin_edges`` (n_bins + 1), ``mean_predicted``,
    ``fraction_positive`` (NaN for empty bins), ``counts`` (weighted when ``sample_weight`` (N,) is
    given); plus ``ece``.
    """
    y, s = ck.binary_inputs(y_true, prob, what="prob")
    w = ck.weights(sample_weight, len(s))
    if w is not None and w.ndim != 1:
        raise DataError("calibration_curve_data takes one weighting: sample_weight of shape (N,).")
    ids = bin_ids(s, n_bins)
    count = np.bincount(ids, weights=w, minlength=n_bins).astype(np.float64)
    wy = y if w is None else w * y
    ws = s if w is None else w * s
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(ids, weights=ws, minlength=n_bins) / count
        frac = np.bincount(ids, weights=wy, minlength=n_bins) / count
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "mean_predicted": mean_p.tolist(),
        "fraction_positive": frac.tolist(),
        "counts": count.astype(int).tolist() if w is None else count.tolist(),
        "ece": _ece(y, s, w, n_bins),
    }

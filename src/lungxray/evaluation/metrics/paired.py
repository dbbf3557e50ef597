"""Paired comparison of two models scored on the same images: AUC(a) - AUC(b) with a bootstrap CI.

Two overlapping 95% CIs do not say two models perform alike: their errors are correlated (the same hard
films trip both). Resampling patients once and scoring BOTH models on each resample keeps that
correlation, so the interval of the difference is the honest one, and usually far narrower than the
two separate intervals suggest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungxray.errors import DataError
from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.binary import roc_auc
from lungxray.evaluation.metrics.bootstrap import bootstrap_replicates, percentile_ci

__all__ = ["auc_difference"]


def _runs(score: Any, what: str) -> list[np.ndarray]:
    """(N,) or (N, 1) scores of one model -> [them]; (S, N) scores of S runs -> S rows (each checked)."""
    arr = np.asarray(score, dtype=np.float64)
    rows = [arr] if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1) else list(arr)
    return [ck.scores_1d(r, probability=False, what=what) for r in rows]


def auc_difference(
    y_true: Any, score_a: Any, score_b: Any, *, groups: Any = None, n: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """AUC of ``score_a`` minus AUC of ``score_b`` on the same (N,) images, with a paired bootstrap CI.

    Args:
        y_true: (N,) 0/1 labels. score_a, score_b: (N,) finite scores of two models for the same images,
            or (S, N) scores of S runs of one recipe (e.g. its seeds), whose AUCs are averaged: the
            difference is then between recipes, every run scored on the same patient resample.
        groups: (N,) patient ids: resample patients, not images (a patient's films stay together).
        n: bootstrap resamples. ci: interval level in (0, 1), e.g. 1 - 0.05 / k for k comparisons.

    Returns:
        ``{"difference", "ci_low", "ci_high", "level", "n_boot", "n_used"}``; ``n_used`` counts the
        resamples holding both classes (the others have no AUC and are skipped).

    >>> auc_difference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.1, 0.9, 0.2, 0.8], n=200)["difference"]
    0.5
    """
    a, b = _runs(score_a, "score_a"), _runs(score_b, "score_b")
    if len({len(s) for s in (*a, *b)}) != 1:
        raise DataError(f"auc_difference: score_a has {len(a[0])} values, score_b {len(b[0])}; score the same images.")
    y = ck.labels_1d(y_true, len(a[0]))
    if not 0.0 < ci < 1.0:
        raise DataError(f"ci must be in (0, 1), got {ci}.")

    def mean_auc(runs: list[np.ndarray], w: Any = None) -> Any:
        return np.mean([roc_auc(y, s, w) for s in runs], axis=0)

    reps = bootstrap_replicates(lambda w: {"d": mean_auc(a, w) - mean_auc(b, w)}, len(y), groups=groups, n=n, seed=seed)["d"]
    interval = percentile_ci(reps, ci)
    return {"difference": float(mean_auc(a) - mean_auc(b)), "ci_low": float(interval.low),
            "ci_high": float(interval.high), "level": ci, "n_boot": n, "n_used": interval.used}  # fmt: skip

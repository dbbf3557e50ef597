"""Paired comparison of two models scored on the same images: AUC(a) - AUC(b) with a bootstrap CI.

Two overlapping 95% CIs do not say two models perform alike: their errors are correlated (the same hard
films trip both). Resampling patients once and scoring BOTH models on each resample keeps that
correlation, so the interval of the difference is the honest one, and usually far narrower than the
two separate intervals suggest.
"""

from __future__ import annotations

from typing import Any

from lungxray.errors import DataError
from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.binary import roc_auc
from lungxray.evaluation.metrics.bootstrap import bootstrap_replicates, percentile_ci

__all__ = ["auc_difference"]


def auc_difference(
    y_true: Any, score_a: Any, score_b: Any, *, groups: Any = None, n: int = 2000, ci: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """AUC of ``score_a`` minus AUC of ``score_b`` on the same (N,) images, with a paired bootstrap CI.

    Args:
        y_true: (N,) 0/1 labels. score_a, score_b: (N,) finite scores of two models for the same images.
        groups: (N,) patient ids: resample patients, not images (a patient's films stay together).
        n: bootstrap resamples. ci: interval level in (0, 1), e.g. 1 - 0.05 / k for k comparisons.

    Returns:
        ``{"difference", "ci_low", "ci_high", "level", "n_boot", "n_used"}``; ``n_used`` counts the
        resamples holding both classes (the others have no AUC and are skipped).

    >>> auc_difference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0.1, 0.9, 0.2, 0.8], n=200)["difference"]
    0.5
    """
    a = ck.scores_1d(score_a, probability=False, what="score_a")
    b = ck.scores_1d(score_b, probability=False, what="score_b")
    if len(a) != len(b):
        raise DataError(f"auc_difference: score_a has {len(a)} values, score_b {len(b)}; score the same images.")
    y = ck.labels_1d(y_true, len(a))
    if not 0.0 < ci < 1.0:
        raise DataError(f"ci must be in (0, 1), got {ci}.")
    reps = bootstrap_replicates(
        lambda w: {"d": roc_auc(y, a, w) - roc_auc(y, b, w)}, len(y), groups=groups, n=n, seed=seed
    )["d"]
    interval = percentile_ci(reps, ci)
    return {"difference": float(roc_auc(y, a) - roc_auc(y, b)), "ci_low": float(interval.low),
            "ci_high": float(interval.high), "level": ci, "n_boot": n, "n_used": interval.used}  # fmt: skip

"""The operating threshold of a binary score, chosen on validation data by a named strategy.

Strategies are parsed by ``lungxray.config.parse_threshold_strategy``: ``youden`` | ``max-f1`` |
``0.5`` | ``sensitivity>=X`` | ``specificity>=X``. Positive means ``score >= threshold``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.config import parse_threshold_strategy
from lungxray.evaluation.metrics import _checks as ck


def choose_threshold(y_true: Any, score: Any, strategy: str = "youden", *, finite_sample: bool = True) -> float:
    """Pick the operating threshold from VALIDATION data (never test data: callers pass val arrays).

    Strategies (positive when ``score >= threshold``; candidates are the observed scores):

    * ``"0.5"``: 0.5.
    * ``"youden"``: maximises TPR - FPR over ``roc_curve`` thresholds (roc_curve's ``inf`` excluded).
    * ``"max-f1"``: maximises F1 over ``precision_recall_curve`` thresholds.
    * ``"sensitivity>=X"``: the HIGHEST threshold whose sensitivity >= X (best specificity under the
      constraint).
    * ``"specificity>=X"``: the LOWEST threshold whose specificity >= X (best sensitivity under the
      constraint).

    ``finite_sample`` (default) makes the rate constraints hold for NEW images, in expectation, not only
    on the sample: with n positives the threshold at the k-th lowest positive score misses a new,
    exchangeable positive with probability k / (n + 1) (the split-conformal argument; Angelopoulos &
    Bates 2021), so the constraint is TP / (n + 1) >= X instead of TP / n >= X (likewise TN / (n + 1)
    for specificity). Without it, 62 positives and X = 0.95 allow 3 in-sample misses and an expected
    0.937 on new positives. A sample too small for the guarantee (fewer than X / (1 - X) of the class)
    warns and falls back to the in-sample rule. ``finite_sample=False`` is the in-sample (oracle) rule,
    for reporting the best a threshold could have done on the data it is evaluated on.

    Ties between equally good thresholds go to the highest one (fewest positive calls). When the
    scores are probabilities the result lies in [0, 1]. With one class only in ``y_true`` the data
    cannot choose, so this warns and returns 0.5.

    Raises:
        ConfigError: unknown strategy (with the closest valid one suggested).
        DataError: invalid labels or scores.
    """
    kind, target = parse_threshold_strategy(strategy)
    s = ck.scores_1d(score, probability=False)
    y = ck.labels_1d(y_true, len(s))
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
            rate = _finite_rate(tpr, n_pos, target, strategy, finite_sample)
            t = float(thr[np.flatnonzero(rate >= target - eps)[0]])
        else:  # specificity: the last index with fpr <= 1 - X is the lowest threshold
            rate = _finite_rate(1.0 - fpr, len(y) - n_pos, target, strategy, finite_sample)
            ok = np.flatnonzero(rate >= target - eps)
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


def _finite_rate(rate: np.ndarray, n: int, target: float, strategy: str, finite_sample: bool) -> np.ndarray:
    """In-sample rates (count / n) -> count / (n + 1) when ``finite_sample`` and the sample allows it."""
    if not finite_sample or target >= 1.0:  # X = 1: every positive of the sample; no finite guarantee exists
        return rate
    if n / (n + 1) < target - 1e-12:
        warnings.warn(
            f"choose_threshold({strategy!r}): {n} images of that class cannot support the target on new "
            f"images (it needs at least {math.ceil(target / (1 - target) - 1e-9)}); using the in-sample rule.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return rate
    return rate * n / (n + 1)

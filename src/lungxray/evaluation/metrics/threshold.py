"""The operating threshold of a binary score, chosen on validation data by a named strategy.

Strategies are parsed by ``lungxray.config.parse_threshold_strategy``: ``youden`` | ``max-f1`` |
``0.5`` | ``sensitivity>=X`` | ``specificity>=X``. Positive means ``score >= threshold``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.config import parse_threshold_strategy
from lungxray.evaluation.metrics import _checks as ck


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

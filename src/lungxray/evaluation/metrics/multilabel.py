"""Per-label metrics of a multi-label task (CheXNet-style table), optionally weighted.

Unknown labels (NaN) are excluded per label by giving those images weight 0 for that label only.
``multilabel_values`` is the single implementation: ``multilabel_metrics`` reports it unweighted and
the bootstrap calls it with (B, N) weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lungxray.errors import DataError
from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.binary import RATIOS, _counts, _ranking

LABEL_METRICS = ("auc", "average_precision", "sensitivity", "specificity")


def thresholds_vector(thresholds: Any, c: int) -> np.ndarray:
    """(C,) per-label thresholds from None (0.5), a scalar or a sequence aligned with the labels."""
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


def multilabel_inputs(y_true: Any, prob: Any, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, C) float labels (1/0/NaN) and (N, C) probabilities."""
    p = ck.prob_2d(prob, c)
    y = np.asarray(y_true, dtype=np.float64)
    if y.shape != p.shape:
        raise DataError(f"y_true must have the shape of prob {p.shape}, got {y.shape}.")
    if not np.isin(y[~np.isnan(y)], (0.0, 1.0)).all():
        raise DataError("y_true must contain only 1, 0 or NaN (unknown).")
    return y, p


def multilabel_values(
    y: np.ndarray, p: np.ndarray, classes: Sequence[str], t: np.ndarray, w: np.ndarray | None
) -> dict[str, Any]:
    """Per-label auc, average_precision, sensitivity, specificity and their macro means.

    Returns {"per_class": {name: {metric: value}}, "macro_auc", "macro_average_precision"}; values are
    floats, or (B,) arrays for (B, N) weights. Macro means are nanmeans over labels on purpose.
    """
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        known = ~np.isnan(y[:, k])
        yk = np.where(known, y[:, k], 0).astype(np.int64)
        wk = known.astype(np.float64) if w is None else w * known  # unknown label: weight 0
        ranks = _ranking(yk, p[:, k], wk, f"multilabel_metrics, label {name!r}")
        counts = _counts(yk, p[:, k], t[k], wk)
        per_class[name] = {
            "auc": ranks["auc"],
            "average_precision": ranks["average_precision"],
            "sensitivity": RATIOS["sensitivity"](counts),
            "specificity": RATIOS["specificity"](counts),
        }
    macro = {
        m: ck.nanmean(np.stack([v[m] for v in per_class.values()], axis=-1))
        for m in ("auc", "average_precision")
    }
    return {
        "per_class": per_class,
        "macro_auc": macro["auc"],
        "macro_average_precision": macro["average_precision"],
    }


def multilabel_metrics(
    y_true: Any, prob: Any, classes: Sequence[str], thresholds: Any = None, sample_weight: Any = None
) -> dict[str, Any]:
    """Per-label metrics of a multi-label task (CheXNet-style table); NaN labels are masked per label.

    Args:
        y_true: (N, C) 1/0 per label, NaN = unknown (excluded from that label's metrics only).
        prob: (N, C) sigmoid probabilities.
        thresholds: per-label operating thresholds (C,), a scalar, or None (0.5).
        sample_weight: None or (N,) weights (counts).

    Returns:
        dict: n, classes, thresholds, per_class {name: n, n_pos, auc, average_precision, sensitivity,
        specificity, threshold}, macro_auc and macro_average_precision (nanmean over labels on
        purpose: labels with one class only are NaN, with a warning, and left out of the mean).
    """
    classes = list(classes)
    y, p = multilabel_inputs(y_true, prob, len(classes))
    t = thresholds_vector(thresholds, len(classes))
    w = ck.weights(sample_weight, len(y))
    if w is not None and w.ndim != 1:
        raise DataError("multilabel_metrics takes one weighting (N,); the bootstrap uses multilabel_values.")
    v = multilabel_values(y, p, classes, t, w)
    known = ~np.isnan(y)
    per_class = {
        name: {
            "n": int(known[:, k].sum()),
            "n_pos": int(np.nansum(y[:, k])),
            **v["per_class"][name],
            "threshold": float(t[k]),
        }
        for k, name in enumerate(classes)
    }
    return {
        "n": len(y),
        "classes": classes,
        "thresholds": t.tolist(),
        "per_class": per_class,
        "macro_auc": v["macro_auc"],
        "macro_average_precision": v["macro_average_precision"],
    }

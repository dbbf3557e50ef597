"""Input validation and small numeric helpers shared by the metric modules.

Every public metric validates its inputs here so that a wrong shape, a label other than 0/1 or a
logit passed as a probability fails with a ``DataError`` naming the problem, not deep in numpy.

Sample weights (``sample_weight``) follow one convention everywhere in the package:

* ``None``: every image counts once (the point estimate);
* ``(N,)``: one non-negative weight per image (e.g. how often a bootstrap replicate drew it);
* ``(B, N)``: B weightings at once (B bootstrap replicates); the metric then returns a ``(B,)``
  array instead of a float, so a thousand replicates cost a few matrix products, not a Python loop.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.errors import DataError


def labels_1d(y_true: Any, n: int | None = None, what: str = "y_true") -> np.ndarray:
    """0/1 labels as an (N,) int64 vector; DataError naming the problem otherwise."""
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


def scores_1d(score: Any, *, probability: bool, what: str = "score") -> np.ndarray:
    """(N,) finite float64 scores; with ``probability`` also within [0, 1]."""
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


def binary_inputs(y_true: Any, score: Any, *, what: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(y, s)``: (N,) int64 0/1 labels and (N,) probabilities."""
    s = scores_1d(score, probability=True, what=what)
    return labels_1d(y_true, len(s)), s


def prob_2d(prob: Any, n_classes: int, what: str = "prob") -> np.ndarray:
    """(N, C) finite probabilities, one column per class."""
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise DataError(f"{what} must have shape (N, {n_classes}) (one column per class), got {p.shape}.")
    if not np.isfinite(p).all():
        raise DataError(f"{what} contains NaN/inf values; check the model outputs.")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise DataError(f"{what} must be probabilities in [0, 1]; apply softmax/sigmoid to logits first.")
    return p


def class_indices(y_true_int: Any, n: int, classes: list[str]) -> np.ndarray:
    """(N,) int64 class indices into ``classes``."""
    c = len(classes)
    y = np.asarray(y_true_int)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"y_true_int must be (N,) = ({n},) class indices, got shape {y.shape}.")
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
    return y.astype(np.int64)


def weights(sample_weight: Any, n: int) -> np.ndarray | None:
    """``None``, or the weights as float64 (N,) or (B, N) after checking shape, finiteness and sign."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise DataError(f"sample_weight must have shape (N,) or (B, N) with N = {n}, got {w.shape}.")
    if w.size and (not np.isfinite(w).all() or w.min() < 0.0):
        raise DataError("sample_weight must be finite and non-negative.")
    return w


def as_rows(w: np.ndarray | None, n: int) -> np.ndarray:
    """Weights as a (B, N) matrix: None -> one row of ones, (N,) -> one row."""
    if w is None:
        return np.ones((1, n))
    return w[None, :] if w.ndim == 1 else w


def result(values: np.ndarray, w: np.ndarray | None) -> float | np.ndarray:
    """(B,) values back in the caller's shape: a float for None / (N,) weights, else the (B,) array."""
    return float(values[0]) if w is None or w.ndim == 1 else values


def div(num: float, den: float) -> float:
    """num / den, NaN when den == 0 (documented: undefined, not 0)."""
    return float(num) / float(den) if den else math.nan


def wdiv(num: Any, den: Any) -> Any:
    """Elementwise num / den, NaN where den == 0; plain floats stay floats (``div``)."""
    if np.ndim(num) == 0 and np.ndim(den) == 0:
        return div(num, den)
    return np.divide(num, den, out=np.full(np.shape(num), math.nan), where=np.asarray(den) > 0)


def nanmean(values: np.ndarray, axis: int = -1) -> Any:
    """``np.nanmean`` without the all-NaN RuntimeWarning (an all-NaN mean stays NaN on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(values, axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def warn_single_class(what: str, stacklevel: int = 3) -> None:
    """The UndefinedMetricWarning for AUC / average precision with one class only."""
    warnings.warn(
        f"{what}: only one class is present, so AUC and average precision are undefined (NaN).",
        UndefinedMetricWarning,
        stacklevel=stacklevel,
    )

"""Set-level shift test: does a new set of images differ from the model's validation distribution?

One image at a time, an OOD threshold at the 99th percentile flags few images of a shifted set (a
pediatric model flagged only 20-27% of adult films). A SET of 100 images carries far more evidence:
``shift_test`` compares the new set's per-image features (columns: by convention the Mahalanobis OOD
distance and the model score) with the validation set's.

Choice of test: one two-sample Kolmogorov-Smirnov test per column (``scipy.stats.ks_2samp``, exact
p-values for small samples), combined with a Bonferroni correction (``p = min(1, D * min_j p_j)``).
Why not a permutation test on an energy / MMD statistic over the joint (distance, score) pairs: KS
needs no permutations (O(n log n), so the server can run it on a sliding window at every check),
its p-values are exact rather than Monte-Carlo, it is well-calibrated under the null for any
continuous distribution, and the per-column p-values say WHICH signal moved (image appearance vs
score distribution). It misses shifts that change only the dependence between the columns, which is
not the failure we meet (adult films move both marginals). Bonferroni keeps the family-wise false
alarm rate <= alpha whatever the correlation between the columns (conservative when they are
correlated). Ties (e.g. many scores saturated at 1.0) make KS conservative, never anti-conservative.

Null calibration needs the two samples to be independent: when the sample was drawn FROM the
reference (e.g. a subset of validation), pass ``exclude`` (its row indices in ``reference``) so it is
compared with the rest of the reference only; otherwise the test is conservative (fires too rarely).

``DriftMonitor`` runs the same test on a sliding window of a server's recent predictions. Checking a
stream repeatedly is many tests: ``alpha`` holds per check, not over a day of checks.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungxray.errors import DataError

DEFAULT_FEATURES = ("ood_distance", "score")


@dataclass(frozen=True)
class ShiftResult:
    """Outcome of one set-level test: ``statistic`` is the largest KS distance over the columns,
    ``p_value`` the Bonferroni-combined p-value, ``per_feature`` (name, KS statistic, raw p) per column."""

    statistic: float
    p_value: float
    fired: bool
    n_ref: int
    n_sample: int
    summary: str
    alpha: float = 0.01
    per_feature: tuple[tuple[str, float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "fired": self.fired,
            "n_ref": self.n_ref,
            "n_sample": self.n_sample,
            "alpha": self.alpha,
            "summary": self.summary,
            "per_feature": [{"name": n, "statistic": s, "p_value": p} for n, s, p in self.per_feature],
        }


def _as_2d(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise DataError(f"{what} must be (N,) or (N, D); got shape {a.shape}.")
    return a


def _summary(p: float, fired: bool, n: int, worst: str) -> str:
    if fired:
        return (
            f"this set differs from the training data (p = {p:.2g}, n = {n}, mostly in {worst}): the "
            "metrics, threshold and OOD flags measured on the training data may not hold for it"
        )
    return (
        f"no evidence that this set differs from the training data (p = {p:.2g}, n = {n}); this does "
        "not prove that it matches"
    )


def shift_test(
    reference: Any,
    sample: Any,
    *,
    alpha: float = 0.01,
    seed: int = 0,
    exclude: Any = None,
    features: tuple[str, ...] = DEFAULT_FEATURES,
) -> ShiftResult:
    """Two-sample test of a new set against the reference (validation) distribution.

    Args:
        reference: (N, D) features of the reference set, e.g. columns (ood_distance, score).
        sample: (M, D) features of the new set (same columns).
        alpha: family-wise false-alarm rate; ``fired`` when ``p_value < alpha``.
        seed: unused by KS (exact); kept so a permutation variant could slot in without API change.
        exclude: row indices of ``reference`` that ARE the sample (a subset drawn from it): they are
            left out of the reference so the two sets are independent and the test stays calibrated.
        features: column names for ``per_feature`` and the summary (default: ood_distance, score).

    Returns:
        ShiftResult with the combined p-value, whether it fired, and a one-line human summary.

    Raises:
        DataError: column counts differ, non-finite values, or fewer than 5 rows on either side.

    >>> shift_test(val_feats, site_feats).summary
    'this set differs from the training data (p = 3e-19, n = 100, mostly in ood_distance): ...'
    """
    from scipy.stats import ks_2samp

    del seed
    ref = _as_2d(reference, "reference")
    smp = _as_2d(sample, "sample")
    if exclude is not None:
        keep = np.ones(len(ref), dtype=bool)
        keep[np.asarray(exclude, dtype=int)] = False
        ref = ref[keep]
    if ref.shape[1] != smp.shape[1]:
        raise DataError(f"reference has {ref.shape[1]} columns and sample {smp.shape[1]}; they must match.")
    if len(ref) < 5 or len(smp) < 5:
        raise DataError(f"a shift test needs at least 5 rows on each side; got {len(ref)} and {len(smp)}.")
    if not (np.isfinite(ref).all() and np.isfinite(smp).all()):
        raise DataError("shift_test: features must be finite (drop images without an OOD distance).")
    d = ref.shape[1]
    names = tuple(features[:d]) + tuple(f"column {j}" for j in range(len(features), d))
    per = []
    for j in range(d):
        r = ks_2samp(ref[:, j], smp[:, j], method="auto")
        per.append((names[j], float(r.statistic), float(r.pvalue)))
    p_min = min(p for _, _, p in per)
    p = float(min(1.0, d * p_min))
    worst = min(per, key=lambda t: t[2])[0]
    fired = bool(p < alpha)
    stat = float(max(s for _, s, _ in per))
    return ShiftResult(
        stat, p, fired, len(ref), len(smp), _summary(p, fired, len(smp), worst), alpha, tuple(per)
    )


class DriftMonitor:
    """Streaming shift test over the last ``window`` predictions of a server (thread-safe).

    >>> mon = DriftMonitor(val_feats)           # (N, 2): ood_distance, score
    >>> mon.update(pred.ood_score, pred.score)  # after every prediction
    >>> r = mon.check()                         # None until min_samples predictions arrived
    """

    def __init__(self, reference: Any, window: int = 200, alpha: float = 0.01, min_samples: int = 50):
        ref = _as_2d(reference, "reference")
        if len(ref) < 5:
            raise DataError(f"DriftMonitor needs a reference of at least 5 rows; got {len(ref)}.")
        if not 5 <= min_samples <= window:
            raise DataError(
                f"need 5 <= min_samples <= window; got min_samples={min_samples}, window={window}."
            )
        self.reference = ref
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self._recent: deque[tuple[float, ...]] = deque(maxlen=int(window))
        self._lock = threading.Lock()
        self._last: ShiftResult | None = None
        self._dirty = False

    def update(self, ood_distance: float | None, score: float | None) -> None:
        """Add one prediction; ignored when either value is missing or not finite (e.g. a failed image)."""
        if ood_distance is None or score is None:
            return
        row = (float(ood_distance), float(score))
        if not all(np.isfinite(row)):
            return
        with self._lock:
            self._recent.append(row)
            self._dirty = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._recent)

    def check(self) -> ShiftResult | None:
        """The shift test of the current window against the reference; None before ``min_samples``."""
        with self._lock:
            if len(self._recent) < self.min_samples:
                return None
            if not self._dirty and self._last is not None:
                return self._last
            window = np.asarray(self._recent, dtype=np.float64)
            self._dirty = False
        result = shift_test(self.reference[:, : window.shape[1]], window, alpha=self.alpha)
        with self._lock:
            self._last = result
        return result

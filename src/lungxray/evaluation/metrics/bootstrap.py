"""Patient-grouped percentile bootstrap, expressed as resampling weights.

A replicate draws as many patients as there are, with replacement, and gives every image the number
of times its patient was drawn (without ``groups`` every image is its own patient). A replicate is
therefore an (N,) weight vector, and B replicates a (B, N) matrix: the metric functions of this
package accept that matrix as ``sample_weight`` and return (B,) arrays, so the SAME functions give
the point estimate (weights None) and the bootstrap distribution, thousands of replicates in a few
matrix products. Replicate results are named columns (``dict[str, (B,) array]``), never positions.

Random draws: ``numpy.random.default_rng(seed)``, one ``integers(0, n_patients, n_patients)`` call
per replicate, in order; ``bootstrap_indices`` / ``bootstrap_ci`` make exactly the same draws, so
``evaluate_predictions`` and ``bootstrap_ci`` with one seed resample the same patients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from lungxray.errors import DataError

_MAX_CELLS = 2_000_000  # bound on a chunk of the (B, N) weight matrix (16 MB of float64)


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


def patient_codes(n_items: int, groups: Any = None) -> np.ndarray:
    """(N,) patient index of each image, 0..P-1 in sorted id order; each image alone without groups."""
    if groups is None:
        return np.arange(n_items)
    g = np.asarray(groups)
    if g.shape != (n_items,):
        raise DataError(f"groups must hold one patient id per image ({n_items}), got shape {g.shape}.")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def _patient_draws(n_patients: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` draws of ``n_patients`` patient indices with replacement (the one source of randomness)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, n_patients, size=n_patients)


def bootstrap_weights(
    n_items: int, *, groups: Any = None, n: int = 1000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield the ``n`` replicates as (B, N) float64 chunks of image weights (B <= n, bounded memory).

    Row b, column i = how many times replicate b drew the patient of image i.
    """
    codes = patient_codes(n_items, groups)
    n_patients = int(codes.max()) + 1 if n_items else 0
    chunk = max(1, min(n, _MAX_CELLS // max(n_items, 1)))
    rows: list[np.ndarray] = []
    for pick in _patient_draws(n_patients, n, seed):
        rows.append(np.bincount(pick, minlength=n_patients).astype(np.float64)[codes])
        if len(rows) == chunk:
            yield np.stack(rows)
            rows = []
    if rows:
        yield np.stack(rows)


def bootstrap_indices(
    n_items: int, *, groups: Any = None, n: int = 1000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield ``n`` resamples of row indices, drawn with replacement; deterministic for a seed.

    Without ``groups`` each resample draws ``n_items`` rows. With ``groups`` ((n_items,) patient ids)
    it draws as many patients as there are, with replacement, and takes ALL rows of each drawn
    patient, so images of one patient stay together (their errors are correlated). Same draws as
    ``bootstrap_weights``: ``np.bincount(indices)`` is its weight row.
    """
    codes = patient_codes(n_items, groups)
    order = np.argsort(codes, kind="stable")  # rows grouped by patient
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    for pick in _patient_draws(len(sizes), n, seed):
        lens = sizes[pick]
        offsets = np.repeat(np.cumsum(lens) - lens, lens)
        yield order[np.repeat(starts[pick], lens) + np.arange(lens.sum()) - offsets]


def bootstrap_replicates(
    metrics: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    n_items: int,
    *,
    groups: Any = None,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Named bootstrap distributions: ``{metric name: (n,) values}``, NaN where undefined.

    ``metrics(w)`` takes a (B, N) weight matrix and returns ``{name: (B,) array}`` (for instance a
    closure over the package's metric functions with ``sample_weight=w``).
    """
    parts: dict[str, list[np.ndarray]] = {}
    for w in bootstrap_weights(n_items, groups=groups, n=n, seed=seed):
        for name, values in metrics(w).items():
            parts.setdefault(name, []).append(np.asarray(values, dtype=np.float64).reshape(len(w)))
    return {name: np.concatenate(v) for name, v in parts.items()}


def percentile_ci(samples: np.ndarray, ci: float = 0.95) -> BootstrapCI:
    """Percentile CI of the finite values of (n,) ``samples``; (NaN, NaN) when none is finite."""
    finite = samples[np.isfinite(samples)]
    low = high = math.nan
    if len(finite):
        low, high = np.percentile(finite, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return BootstrapCI(low, high, len(finite), len(samples))


def bootstrap_samples(
    metric_fn: Callable[..., Any], *arrays: Any, groups: Any = None, n: int = 1000, seed: int = 0
) -> np.ndarray:
    """``metric_fn(*resampled_arrays)`` for each of ``n`` bootstrap resamples: (n,) or (n, K) floats.

    For any callable on the resampled arrays (slow path: one call per replicate). The package's own
    metrics use ``bootstrap_replicates`` with weights instead. NaN marks an undefined resample.
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
    return percentile_ci(samples, ci)

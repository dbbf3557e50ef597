"""Resampling by patient: bootstrap weights, grouped stratified folds, stratified subsamples.

Images of one patient have correlated errors, so every resampling here keeps a patient's images
together when ``groups`` (one patient id per image) is given. Pure functions of their arguments and a
seed; no I/O. Used by ``lungxray.site`` (site calibration) and ``lungxray.prevalence`` (label shift).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from lungxray.errors import DataError


def group_codes(n_items: int, groups: Any = None) -> np.ndarray:
    """(n_items,) int codes 0..G-1 of the patient ids; each image its own group when ``groups`` is None."""
    if groups is None:
        return np.arange(n_items)
    g = np.asarray(groups)
    if g.shape != (n_items,):
        raise DataError(f"groups must hold one patient id per image ({n_items}), got shape {g.shape}.")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def bootstrap_weights(
    n_items: int, *, groups: Any = None, n: int = 1000, seed: int = 0, chunk: int = 256
) -> Iterator[np.ndarray]:
    """Yield (B, n_items) float multiplicities of ``n`` bootstrap resamples, in chunks of <= ``chunk``.

    Each resample draws as many patients as there are (images when ``groups`` is None) with
    replacement and takes all images of each drawn patient; row ``b`` says how often each image was
    drawn. Weighted sums over rows give the resampled counts, so metrics stay vectorised.
    """
    codes = group_codes(n_items, groups)
    n_groups = int(codes.max()) + 1 if n_items else 0
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        b = min(chunk, n - done)
        pick = rng.integers(0, n_groups, size=(b, n_groups))
        counts = np.zeros((b, n_groups))
        np.add.at(counts, (np.repeat(np.arange(b), n_groups), pick.reshape(-1)), 1.0)
        yield counts[:, codes]
        done += b


def percentile_ci(samples: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of the finite values of ``samples`` (B,); NaN when none."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    lo, hi = np.percentile(s, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)


def grouped_folds(y: Any, groups: Any = None, *, folds: int = 2, seed: int = 0) -> np.ndarray:
    """(N,) fold index 0..folds-1 per image: whole patients per fold, stratified by patient label.

    A patient's label is the max of its images' labels (positive if any image is). Patients of each
    label are shuffled and dealt round-robin, so each fold gets about 1/folds of each class.
    """
    y = np.asarray(y).astype(int).reshape(-1)
    codes = group_codes(len(y), groups)
    n_groups = int(codes.max()) + 1 if len(y) else 0
    g_label = np.zeros(n_groups, dtype=int)
    np.maximum.at(g_label, codes, y)
    rng = np.random.default_rng(seed)
    g_fold = np.empty(n_groups, dtype=int)
    offset = 0
    for label in np.unique(g_label):
        members = rng.permutation(np.flatnonzero(g_label == label))
        g_fold[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # the next class starts where this one stopped: balanced fold sizes
    return g_fold[codes]


def stratified_subsample(y: Any, idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of the image indices ``idx`` drawn without replacement, class shares kept (largest remainder).

    Every class present in ``idx`` gets at least one image when ``n`` allows it.
    """
    y = np.asarray(y).reshape(-1)
    idx = np.asarray(idx)
    if n >= len(idx):
        return idx.copy()
    labels, counts = np.unique(y[idx], return_counts=True)
    quota = counts * n / len(idx)
    take = np.floor(quota).astype(int)
    if n >= len(labels):
        take = np.maximum(take, 1)
    while take.sum() < n:
        take[np.argmax(quota - take)] += 1
    while take.sum() > n:
        take[np.argmax(take)] -= 1
    out = [rng.choice(idx[y[idx] == lab], size=k, replace=False) for lab, k in zip(labels, take, strict=True)]
    return np.sort(np.concatenate(out))

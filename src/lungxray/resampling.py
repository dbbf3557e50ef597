"""Resampling by patient for site calibration: grouped stratified folds and stratified subsamples
(the patient bootstrap itself is ``evaluation.metrics.bootstrap``).

Images of one patient have correlated errors, so every resampling here keeps a patient's images
together when ``groups`` (one patient id per image) is given. Pure functions of their arguments and a
seed; no I/O. Used by ``lungxray.site`` (site calibration) and ``lungxray.prevalence`` (label shift).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lungxray.evaluation.metrics.bootstrap import patient_codes


def grouped_folds(y: Any, groups: Any = None, *, folds: int = 2, seed: int = 0) -> np.ndarray:
    """(N,) fold index 0..folds-1 per image: whole patients per fold, stratified by patient label.

    A patient's label is the max of its images' labels (positive if any image is). Patients of each
    label are shuffled and dealt round-robin, so each fold gets about 1/folds of each class.
    """
    y = np.asarray(y).astype(int).reshape(-1)
    codes = patient_codes(len(y), groups)
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

"""Patient-grouped, label-stratified splits (patient ids come from ``data.manifest``).

Images of one patient must never sit in two splits (the model would be tested on a patient it saw),
so val and test are carved from train by whole patients, keeping each class's share close to the
source's (a greedy pass over shuffled patients, like scikit-learn's ``StratifiedGroupKFold`` but for
one fold only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lungxray.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lungxray.data.manifest import Manifest

def _strata(m: Manifest) -> np.ndarray:
    """Per row, the label to stratify on: the class (binary / multiclass) or, for multilabel, the rarest
    positive class in the whole manifest (C for a row with none)."""
    if m.task != "multilabel":
        return m.targets
    positive = m.labels == 1  # NaN (unknown) counts as not positive
    freq = positive.sum(axis=0)
    order = np.argsort(freq, kind="stable")  # rarest first
    strata = np.full(len(m), len(m.classes), dtype=np.int64)
    for c in order[::-1]:  # rarest written last, so it wins
        strata[positive[:, c]] = c
    return strata


def _take_patients(
    rows: np.ndarray, count: int, strata: np.ndarray, patients: np.ndarray, seed: int, what: str
) -> np.ndarray:
    """About ``count`` of ``rows`` (indices), as whole patients, with each stratum's share kept.

    One stratified group fold: a greedy pass over the patients in a seeded random order keeps a
    patient when it brings the per-stratum counts closer (L1) to their targets. Greedy like
    scikit-learn's ``StratifiedGroupKFold``, but for the one held-out fold only: that class builds
    all k folds in a Python loop, ~3 s on 5k images and far longer on NIH ChestX-ray14.
    """
    n_groups = len(set(patients[rows].tolist()))
    if n_groups < 2 or count >= len(rows):
        raise DataError(
            f"cannot carve a {what} split of {count} images from {len(rows)} training images of {n_groups} "
            f"patients; add images, lower data.{what}_fraction, or provide a {what}/ folder."
        )
    _, group_of_row = np.unique(patients[rows].astype(str), return_inverse=True)
    _, stratum_of_row = np.unique(strata[rows], return_inverse=True)
    counts = np.zeros((n_groups, stratum_of_row.max() + 1))
    np.add.at(counts, (group_of_row, stratum_of_row), 1)
    target = counts.sum(axis=0) * (count / len(rows))
    held = np.zeros_like(target)
    take = np.zeros(n_groups, dtype=bool)
    for g in np.random.default_rng(seed).permutation(n_groups):
        after = held + counts[g]
        if np.abs(after - target).sum() < np.abs(held - target).sum():
            held = after
            take[g] = True
    return rows[take[group_of_row]]


def _carve(m: Manifest, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split per row of one source: test carved (if it has none), unassigned -> train, then val."""
    n = len(m)
    splits = np.array(m.splits, dtype=object)
    patients = np.array(m.patients, dtype=object)
    strata = _strata(m)

    def movable(sources: tuple[str, ...]) -> np.ndarray:
        """Rows in ``sources`` whose patient has no image in any other split."""
        elsewhere = {p for p, s in zip(patients, splits, strict=True) if s not in sources}
        return np.flatnonzero(
            [s in sources and p not in elsewhere for p, s in zip(patients, splits, strict=True)]
        )

    if not (splits == "test").any() and test_fraction > 0:
        rows = movable(("", "train"))
        splits[_take_patients(rows, round(test_fraction * n), strata, patients, seed, "test")] = "test"
    splits[splits == ""] = "train"
    if not (splits == "val").any() and val_fraction > 0:
        rows = movable(("train",))
        splits[_take_patients(rows, round(val_fraction * n), strata, patients, seed, "val")] = "val"
    return splits


def assign_splits(
    m: Manifest, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Manifest:
    """Give every image a train / val / test split, by whole patients and stratified by label.

    Existing val and test rows are kept. When the source has no test split, test is carved first from
    train + unassigned rows; then, when it has no val split, val is carved from train. Only patients
    whose every image is in train (or unassigned) move, so no patient is added to a second split.
    Fractions are of all N images (0.15 / 0.15 gives about 70 / 15 / 15); 0 skips that split.
    Deterministic for a given ``seed``; multilabel rows are stratified by their rarest positive label.
    A multi-source manifest (``Manifest.sources``, patients already prefixed by source) is split per
    source: each keeps its own test split, and val and test are carved from each source at these fractions.

    Raises:
        ConfigError: a fraction outside [0, 1) or fractions summing to 1 or more.
        DataError: a split would be empty, or train would have a single class.

    >>> m = assign_splits(from_folders("data/chest_xray"), val_fraction=0.15, seed=0)   # doctest: +SKIP
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"data.{name} must be in [0, 1), got {value}.")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}."
        )
    if len(m) == 0:
        raise DataError(f"{m.root}: the manifest has no images to split.")

    if len(set(m.source_names)) > 1:  # multi-source: carve each source on its own (every source in val)
        names = np.asarray(m.source_names, dtype=object)
        splits = np.array(m.splits, dtype=object)
        for k, name in enumerate(dict.fromkeys(m.source_names)):
            rows = np.flatnonzero(names == name)
            part = m.subset(rows)
            try:
                splits[rows] = _carve(part, val_fraction, test_fraction, seed + k)
            except DataError as exc:
                raise DataError(f"source {name!r}: {exc}") from None
    else:
        splits = _carve(m, val_fraction, test_fraction, seed)

    out = m.with_splits(splits.tolist())
    needed = ["train"] + ["val"] * (val_fraction > 0) + ["test"] * (test_fraction > 0)
    for name in needed:
        if name not in out.splits:
            raise DataError(
                f"{m.root}: the {name} split is empty; add images or change data.{name}_fraction."
            )
    train = out.split("train")
    if m.task == "multilabel":
        column_varies = (
            (np.nanmax(train.labels, axis=0) != np.nanmin(train.labels, axis=0)) if len(train) else []
        )
        single = not np.any(column_varies)
    else:
        single = len(np.unique(train.targets)) < 2
    if single:
        raise DataError(
            f"{m.root}: the train split has a single class ({train.class_counts()}); a classifier needs "
            "training images of at least two classes."
        )
    return out


def patients_across_splits(m: Manifest) -> dict[str, list[str]]:
    """Patients with images in more than one split: patient -> sorted split names (unassigned ignored)."""
    seen: dict[str, set[str]] = {}
    for patient, split in zip(m.patients, m.splits, strict=True):
        if split:
            seen.setdefault(patient, set()).add(split)
    return {p: sorted(s) for p, s in sorted(seen.items()) if len(s) > 1}


def assign_folds(m: Manifest, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (N,) int64 in 0..k-1 for every train and val row of ``m``; -1 for test / unassigned.

    k patient-grouped, label-stratified folds of the pooled train + val rows (the test split never
    takes part), carved per source so every source is in every fold: fold j takes about 1/(k - j) of
    the rows still unassigned by the same greedy pass as ``assign_splits``; the last fold takes the
    rest. Deterministic for a given ``seed``.

    Raises:
        DataError: fewer than k patients in a source, or a fold that would be empty.
    """
    if int(k) < 2:
        raise ConfigError(f"k-fold needs k >= 2 folds, got {k}.")
    splits = np.asarray(m.splits, dtype=object)
    pool = np.flatnonzero((splits == "train") | (splits == "val"))
    folds = np.full(len(m), -1, dtype=np.int64)
    patients = np.asarray(m.patients, dtype=object)
    names = np.asarray(m.source_names, dtype=object)
    strata = _strata(m)
    for s, name in enumerate(dict.fromkeys(names[pool].tolist())):
        rows = pool[names[pool] == name]
        if len(set(patients[rows].tolist())) < k:
            raise DataError(
                f"source {name!r}: {len(set(patients[rows].tolist()))} patients in train + val cannot "
                f"make {k} patient-grouped folds; lower train.folds or add images."
            )
        for j in range(k - 1):
            left = rows[folds[rows] == -1]
            try:
                take = _take_patients(left, round(len(left) / (k - j)), strata, patients, seed + 1000 * s + j, "fold")
            except DataError:
                take = left[:0]
            folds[take] = j
        folds[rows[folds[rows] == -1]] = k - 1
        sizes = np.bincount(folds[rows], minlength=k)
        if (sizes == 0).any():
            raise DataError(
                f"source {name!r}: {len(rows)} train + val images make an empty fold (sizes {sizes.tolist()}); "
                "lower train.folds or add images."
            )
    return folds

"""Manifest: one row per image (path, labels, patient, split), built from folders or a label CSV,
and the file-name rules that give patient ids.

The manifest is the data contract between stages: the cache decodes its paths, the splitter groups its
patients, the trainer reads its ``targets``, and a run saves it as ``splits.csv``. Labels follow the
torchxrayvision convention: an ``(N, C)`` float32 array of 1 / 0 per class, NaN for unknown (multilabel).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import numpy as np

from lungxray.errors import DataError, check_option

if TYPE_CHECKING:
    pass

TASKS = ("binary", "multiclass", "multilabel")
SPLITS = ("train", "val", "test")
# Folder / CSV spellings of a split, lower-cased -> canonical name.
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Class names that mean "nothing abnormal": sorted first, so a binary task's classes[1] is the finding.
NEGATIVE_NAMES = frozenset({"normal", "no finding", "no_finding", "nofinding", "negative", "healthy"})
# Multi-label spellings of "no finding": not a class, the row is all zeros.
NO_FINDING_NAMES = frozenset({"no finding", "no_finding", "nofinding"})
FILE_COLUMNS = ("Image Index", "path", "file", "filename")
LABEL_COLUMNS = ("Finding Labels", "label", "labels", "class")
PATIENT_COLUMN = "Patient ID"

# Ordered: the first rule whose pattern matches the file name gives the patient (group "patient").
PATIENT_RULES: dict[str, re.Pattern] = {
    # Kermany pediatric pneumonia: person1234_bacteria_5678.jpeg, person12_virus_34.jpeg
    "kermany-person": re.compile(r"^(?P<patient>person\d+)_", re.IGNORECASE),
    # Kermany normals: IM-0115-0001.jpeg, NORMAL2-IM-0115-0001.jpeg (patient IM-0115 / NORMAL2-IM-0115)
    "kermany-im": re.compile(r"^(?P<patient>(?:[a-z]+\d*-)?IM-\d+)-\d+", re.IGNORECASE),
    # NIH ChestX-ray14: 00000013_005.png (patient 00000013, follow-up 5)
    "nih": re.compile(r"^(?P<patient>\d{8})_\d{3}\b"),
}


def patient_id_from_name(filename: str) -> str:
    """The patient id encoded in an image's file name by a known data set's convention, else its stem.

    >>> patient_id_from_name("person123_bacteria_45.jpeg"), patient_id_from_name("00000013_005.png")
    ('person123', '00000013')
    """
    name = PurePath(str(filename)).name
    for pattern in PATIENT_RULES.values():
        match = pattern.match(name)
        if match:
            return match.group("patient")
    return PurePath(name).stem


def _is_negative(name: str) -> bool:
    return name.strip().lower().replace("-", " ") in NEGATIVE_NAMES


def order_classes(names: Iterable[str]) -> tuple[str, ...]:
    """Class names sorted: names meaning "normal" (normal, no finding, negative, healthy) first, then
    alphabetical (case-insensitive), so a binary task's ``classes[1]`` is the abnormal class."""
    return tuple(sorted(set(names), key=lambda c: (not _is_negative(c), c.lower(), c)))


@dataclass(frozen=True, eq=False)
class Manifest:
    """Every image of a data set with its labels, patient and split.

    Attributes:
        paths: absolute file path per image, length N.
        labels: (N, C) float32; 1 / 0 per class, NaN = unknown (multilabel only).
        classes: the C column names of ``labels``; for binary, ``classes[1]`` is the positive class.
        task: "binary" | "multiclass" | "multilabel".
        patients: patient id per image (groups for splitting and bootstrap).
        splits: "train" | "val" | "test" | "" (not yet assigned) per image.
        root: the data source (folder or CSV) as given, for reports.
        dropped: (path, reason) of rows left out while loading (e.g. a CSV row whose file is missing).
        sources: data source name per image (multi-source recipes, ``data.sources``), or () when the
            manifest has one source; ``source_names`` fills the default (the root's name).
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    task: str
    patients: tuple[str, ...]
    splits: tuple[str, ...]
    root: str = ""
    dropped: tuple[tuple[str, str], ...] = field(default=())
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_option(self.task, TASKS, "task")
        labels = np.asarray(self.labels, dtype=np.float32)
        if labels.ndim != 2 or labels.shape != (len(self.paths), len(self.classes)):
            raise ValueError(
                f"labels must have shape (N, C) = ({len(self.paths)}, {len(self.classes)}), got {labels.shape}"
            )
        if len(self.patients) != len(self.paths) or len(self.splits) != len(self.paths):
            raise ValueError("paths, patients and splits must have the same length")
        if self.sources and len(self.sources) != len(self.paths):
            raise ValueError("sources must be empty or have one name per path")
        bad = sorted(set(self.splits) - {*SPLITS, ""})
        if bad:
            raise ValueError(f"unknown split names {bad}; use train, val, test or ''")
        if self.task != "multilabel" and np.isnan(labels).any():
            raise ValueError("NaN (unknown) labels are allowed only in multilabel tasks")
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        counts = {s: n for s in (*SPLITS, "") if (n := self.splits.count(s))}
        return (
            f"Manifest({len(self)} images, task={self.task!r}, classes={list(self.classes)}, "
            f"splits={counts}, root={self.root!r})"
        )

    def subset(self, index: np.ndarray | Sequence[int] | Sequence[bool]) -> Manifest:
        """Rows selected by a boolean mask of length N or an array of integer positions (order kept)."""
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise ValueError(f"boolean mask must have length {len(self)}, got shape {index.shape}")
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        return replace(
            self,
            paths=tuple(self.paths[i] for i in index),
            labels=self.labels[index],
            patients=tuple(self.patients[i] for i in index),
            splits=tuple(self.splits[i] for i in index),
            sources=tuple(self.sources[i] for i in index) if self.sources else (),
        )

    def split(self, name: str) -> Manifest:
        """Rows of one split ("train", "val", "test" or "" for unassigned); may be empty."""
        return self.subset(np.array([s == name for s in self.splits], dtype=bool))

    @property
    def source_names(self) -> tuple[str, ...]:
        """Source name per row: ``sources``, or the root's name for a single-source manifest."""
        if self.sources:
            return self.sources
        root = PurePath(self.root or "data")
        name = root.parent.name if root.suffix.lower() == ".csv" else root.name
        return (name or "data",) * len(self)

    @property
    def targets(self) -> np.ndarray:
        """Training targets: binary (N,) int64 0/1 of ``classes[1]``; multiclass (N,) int64 class index;
        multilabel (N, C) float32 with NaN kept for unknown."""
        if self.task == "binary":
            return (self.labels[:, 1] == 1).astype(np.int64)
        if self.task == "multiclass":
            return np.argmax(self.labels, axis=1).astype(np.int64)
        return self.labels.copy()

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Positive images per class, over all rows or over one split (NaN counts as not positive)."""
        labels = self.labels if split is None else self.split(split).labels
        positives = np.nansum(labels, axis=0) if len(labels) else np.zeros(len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, positives, strict=True)}

    def with_splits(self, splits: Sequence[str]) -> Manifest:
        """The same rows with a new split per row (length N; values train/val/test/'')."""
        splits = tuple(str(s) for s in splits)
        if len(splits) != len(self):
            raise ValueError(f"need {len(self)} split names, got {len(splits)}")
        return replace(self, splits=splits)

    def label_strings(self) -> list[str]:
        """Per row, the positive class names joined by '|' ('' for a multilabel row with none)."""
        return ["|".join(c for c, v in zip(self.classes, row, strict=True) if v == 1) for row in self.labels]

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write columns path, patient, split, label ('|'-joined positives), and source when the manifest
        has ``sources`` (multi-source); read back with ``from_splits_csv``.

        Unknown (NaN) multilabel entries are written as negatives. Written atomically (``lungxray.io``).
        """
        from lungxray.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            columns = [self.paths, self.patients, self.splits, self.label_strings()]
            writer.writerow(["path", "patient", "split", "label", *(["source"] if self.sources else [])])
            writer.writerows(zip(*columns, *([self.sources] if self.sources else []), strict=True))

    @classmethod
    def from_splits_csv(
        cls,
        path: str | os.PathLike,
        classes: Sequence[str] | None = None,
        task: str | None = None,
    ) -> Manifest:
        """Read a file written by ``to_csv`` (a run's splits.csv) back into a Manifest.

        Args:
            path: the CSV with columns path, patient, split, label (and optionally source).
            classes: class order to use (e.g. model.json's ``classes``); inferred from the labels if None.
            task: the task (e.g. model.json's ``task``); inferred if None.
        """
        header, rows = read_csv_rows(path)
        missing = [c for c in ("path", "patient", "split", "label") if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing columns {missing}; a splits file has path, patient, split, label."
            )
        label_sets = [split_labels(r["label"], "|") for r in rows]
        seen = sorted({lab for labs in label_sets for lab in labs})
        if classes is None:
            classes = order_classes(seen)
            if task is None and any(len(labs) != 1 for labs in label_sets):
                task = "multilabel"
        classes = tuple(classes)
        unknown = sorted(set(seen) - set(classes))
        if unknown:
            raise DataError(f"{path}: labels {unknown} are not among the classes {list(classes)}.")
        if task is None:
            task = "binary" if len(classes) == 2 else "multiclass"
        labels = one_hot(label_sets, classes)
        splits = [normalise_split(r["split"], path) for r in rows]
        return cls(
            paths=tuple(r["path"] for r in rows),
            labels=labels,
            classes=classes,
            task=task,
            patients=tuple(r["patient"] for r in rows),
            splits=tuple(splits),
            root=str(path),
            sources=tuple(r["source"] for r in rows) if "source" in header else (),
        )


# ---------------------------------------------------------------------------------------------- CSV cells


def read_csv_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"label file {str(path)!r} does not exist.")
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h for h in (reader.fieldnames or []) if h is not None]
        rows = [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not header or not rows:
        raise DataError(f"label file {str(path)!r} is empty; it needs a header row and one row per image.")
    return header, rows


def split_labels(cell: str, sep: str) -> list[str]:
    """Non-empty, stripped labels of one cell."""
    parts = cell.split(sep) if sep else [cell]
    return [x.strip() for x in parts if x.strip()]


def one_hot(label_sets: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(label_sets), len(classes)), dtype=np.float32)
    for row, labs in enumerate(label_sets):
        for lab in labs:
            if lab in index:
                labels[row, index[lab]] = 1
    return labels


def normalise_split(value: str, source) -> str:
    v = value.strip().lower()
    if not v:
        return ""
    if v not in SPLIT_ALIASES:
        raise DataError(
            f"{source}: unknown split {value!r}; use train, val (valid, validation), test or leave empty."
        )
    return SPLIT_ALIASES[v]

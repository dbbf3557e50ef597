"""Manifest: one row per image (path, labels, patient, split), built from folders or a label CSV.

The manifest is the data contract between stages: the cache decodes its paths, the splitter groups its
patients, the trainer reads its ``targets``, and a run saves it as ``splits.csv``. Labels follow the
torchxrayvision convention: an ``(N, C)`` float32 array of 1 / 0 per class, NaN for unknown (multilabel).
"""

from __future__ import annotations

import csv
import difflib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungxray.data.imageio import is_image_path
from lungxray.data.splits import patient_id_from_name
from lungxray.errors import DataError, check_option

if TYPE_CHECKING:
    from lungxray.config import DataConfig

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
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    task: str
    patients: tuple[str, ...]
    splits: tuple[str, ...]
    root: str = ""
    dropped: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        check_option(self.task, TASKS, "task")
        labels = np.asarray(self.labels, dtype=np.float32)
        if labels.ndim != 2 or labels.shape != (len(self.paths), len(self.classes)):
            raise ValueError(
                f"labels must have shape (N, C) = ({len(self.paths)}, {len(self.classes)}), got {labels.shape}"
            )
        if len(self.patients) != len(self.paths) or len(self.splits) != len(self.paths):
            raise ValueError("paths, patients and splits must have the same length")
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
        )

    def split(self, name: str) -> Manifest:
        """Rows of one split ("train", "val", "test" or "" for unassigned); may be empty."""
        return self.subset(np.array([s == name for s in self.splits], dtype=bool))

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
        """Write columns path, patient, split, label ('|'-joined positives); read back with ``from_splits_csv``.

        Unknown (NaN) multilabel entries are written as negatives.
        """
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "patient", "split", "label"])
            writer.writerows(zip(self.paths, self.patients, self.splits, self.label_strings(), strict=True))

    @classmethod
    def from_splits_csv(
        cls,
        path: str | os.PathLike,
        classes: Sequence[str] | None = None,
        task: str | None = None,
    ) -> Manifest:
        """Read a file written by ``to_csv`` (a run's splits.csv) back into a Manifest.

        Args:
            path: the CSV with columns path, patient, split, label.
            classes: class order to use (e.g. model.json's ``classes``); inferred from the labels if None.
            task: the task (e.g. model.json's ``task``); inferred if None.
        """
        header, rows = _read_csv(path)
        missing = [c for c in ("path", "patient", "split", "label") if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing columns {missing}; a splits file has path, patient, split, label."
            )
        label_sets = [_split_labels(r["label"], "|") for r in rows]
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
        labels = _one_hot(label_sets, classes)
        splits = [_normalise_split(r["split"], path) for r in rows]
        return cls(
            paths=tuple(r["path"] for r in rows),
            labels=labels,
            classes=classes,
            task=task,
            patients=tuple(r["patient"] for r in rows),
            splits=tuple(splits),
            root=str(path),
        )


# ---------------------------------------------------------------------------------------------- folders


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _images_under(folder: Path) -> list[str]:
    return sorted(
        os.path.abspath(p)
        for p in folder.rglob("*")
        if not p.name.startswith(".") and is_image_path(p) and p.is_file()
    )


def from_folders(root: str | os.PathLike, *, task: str | None = None) -> Manifest:
    """Build a manifest from class folders: ``root/<class>/**`` or ``root/<split>/<class>/**``.

    Split folders are ``train``, ``val`` / ``valid`` / ``validation`` and ``test`` (any case); without
    them every split is '' (assign later with ``splits.assign_splits``). Images are found recursively by
    suffix; other files are ignored. Rows are sorted by path. Patients come from file-name rules.

    Args:
        root: the data folder.
        task: force "binary" | "multiclass" | "multilabel"; inferred from the number of classes if None.

    Raises:
        DataError: missing folder, no class folders, a class folder with no images, a class found in
            val/test but not train, or fewer than two classes.

    >>> m = from_folders("data/chest_xray")          # doctest: +SKIP
    >>> m.classes, m.task
    (('NORMAL', 'PNEUMONIA'), 'binary')
    """
    root_path = Path(root)
    if not root_path.is_dir():
        what = "is not a folder" if root_path.exists() else "does not exist"
        raise DataError(f"data folder {str(root)!r} {what}; give a folder of class folders (root/<class>/*).")
    top = _subdirs(root_path)
    split_dirs = [d for d in top if d.name.lower() in SPLIT_ALIASES]
    if split_dirs:
        others = [d.name for d in top if d not in split_dirs and _images_under(d)]
        if others:
            raise DataError(
                f"{root}: found split folders {[d.name for d in split_dirs]} and also {others}; "
                "put class folders inside train/, val/ and test/, or use root/<class>/* without split folders."
            )
        layout: list[tuple[str, Path]] = []
        for d in split_dirs:
            name = SPLIT_ALIASES[d.name.lower()]
            if any(s == name for s, _ in layout):
                raise DataError(f"{root}: more than one folder for the {name!r} split; keep one of them.")
            layout.append((name, d))
    else:
        layout = [("", root_path)]

    # split -> class -> images
    found: dict[str, dict[str, list[str]]] = {}
    for split, folder in layout:
        loose = [p.name for p in folder.iterdir() if p.is_file() and is_image_path(p)]
        if loose:
            raise DataError(
                f"{str(folder)!r} holds images directly (e.g. {loose[0]}); put them in one folder per class "
                "(root/<class>/* or root/<split>/<class>/*)."
            )
        classes_here = {}
        for class_dir in _subdirs(folder):
            images = _images_under(class_dir)
            if not images and split in ("", "train"):
                raise DataError(
                    f"class folder {str(class_dir)!r} has no images (supported: png, jpg, tif, bmp, gif, dcm); "
                    "add images or remove the folder."
                )
            if images:
                classes_here[class_dir.name] = images
        found[split] = classes_here
    if not any(found.values()):
        raise DataError(
            f"no images found under {str(root)!r}; expected root/<class>/* or root/<split>/<class>/* "
            "with image files (png, jpg, tif, bmp, gif, dcm)."
        )
    if "train" in found and not found["train"]:
        raise DataError(f"{root}: train/ has no class folders with images; put images in train/<class>/.")
    base = found["train"] if "train" in found else found.get("", {})
    if not base:  # only val/test folders: evaluation data
        base = {c: [] for split_classes in found.values() for c in split_classes}
    classes = order_classes(base)
    for split, classes_here in found.items():
        extra = sorted(set(classes_here) - set(classes))
        if extra:
            raise DataError(
                f"{root}: classes {extra} appear in {split}/ but not in train/ (classes {list(classes)}); "
                "every class must have training images with the same folder name."
            )
    if len(classes) < 2:
        raise DataError(
            f"{root}: only one class ({', '.join(classes)}); a classifier needs at least two class folders."
        )
    rows = sorted(
        (path, split, cls)
        for split, classes_here in found.items()
        for cls, ps in classes_here.items()
        for path in ps
    )
    index = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=np.float32)
    labels[np.arange(len(rows)), [index[c] for _, _, c in rows]] = 1
    return Manifest(
        paths=tuple(p for p, _, _ in rows),
        labels=labels,
        classes=classes,
        task=_resolve_task(task, len(classes), multi=False, source=str(root)),
        patients=tuple(patient_id_from_name(os.path.basename(p)) for p, _, _ in rows),
        splits=tuple(s for _, s, _ in rows),
        root=str(root),
    )


def _resolve_task(task: str | None, n_classes: int, *, multi: bool, source: str) -> str:
    """The task: inferred (multi-positive rows -> multilabel, 2 classes -> binary, else multiclass) or checked."""
    if task is None:
        return "multilabel" if multi else ("binary" if n_classes == 2 else "multiclass")
    check_option(task, TASKS, "task")
    if task == "binary" and (n_classes != 2 or multi):
        reason = "some images have several labels" if multi else f"there are {n_classes} classes"
        raise DataError(
            f"{source}: task 'binary' needs exactly two classes, one per image, but {reason}; "
            "use task multiclass / multilabel, or binary_negative to map findings to normal/abnormal."
        )
    if task == "multiclass" and multi:
        raise DataError(
            f"{source}: task 'multiclass' needs one label per image, but some have several; use multilabel."
        )
    return task


# ---------------------------------------------------------------------------------------------- CSV


def _read_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
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


def _pick_column(
    header: list[str], given: str | None, defaults: tuple[str, ...], what: str, csv_path
) -> str | None:
    """The column to use: ``given`` (must exist) or the first default present; None if optional and absent."""
    if given is not None:
        if given in header:
            return given
        close = difflib.get_close_matches(given, header, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"{csv_path}: no {what} column {given!r}.{hint} Available columns: {header}.")
    for name in defaults:
        if name in header:
            return name
    return None


def _split_labels(cell: str, sep: str) -> list[str]:
    """Non-empty, stripped labels of one cell."""
    parts = cell.split(sep) if sep else [cell]
    return [x.strip() for x in parts if x.strip()]


def _one_hot(label_sets: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    labels = np.zeros((len(label_sets), len(classes)), dtype=np.float32)
    for row, labs in enumerate(label_sets):
        for lab in labs:
            if lab in index:
                labels[row, index[lab]] = 1
    return labels


def _normalise_split(value: str, source) -> str:
    v = value.strip().lower()
    if not v:
        return ""
    if v not in SPLIT_ALIASES:
        raise DataError(
            f"{source}: unknown split {value!r}; use train, val (valid, validation), test or leave empty."
        )
    return SPLIT_ALIASES[v]


def from_csv(
    csv_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    file_col: str | None = None,
    label_col: str | None = None,
    patient_col: str | None = None,
    split_col: str | None = None,
    label_sep: str = "|",
    binary_negative: str | None = None,
    task: str | None = None,
) -> Manifest:
    """Build a manifest from a label table (NIH ChestX-ray14 style or one label per row).

    Each row names a file (resolved against ``root``, then ``root/images``) and its labels. Rows with more
    than one label make the task multilabel, where "No Finding" is no class (all zeros); one label per
    row gives binary (2 classes) or multiclass. ``binary_negative="No Finding"`` maps rows with only that
    label to "normal" and any other to "abnormal". Rows whose file is missing are dropped with a warning
    and listed in ``Manifest.dropped``; CSV row order is kept.

    Args:
        csv_path: the CSV file.
        root: folder the file names are relative to; default the CSV's folder.
        file_col / label_col: default the first of "Image Index", "path", "file", "filename" /
            "Finding Labels", "label", "labels", "class".
        patient_col: default "Patient ID" when present, else patients from file-name rules.
        split_col: optional column of train / val (valid, validation) / test / empty.
        label_sep: separator of several labels in one cell.
        binary_negative: the label meaning "normal" for a normal-vs-abnormal binary task.
        task: force "binary" | "multiclass" | "multilabel"; inferred if None.

    Raises:
        DataError: empty CSV, unknown column (lists the available ones), no file found, a row without
            a label, a bad split value, ``binary_negative`` absent, or fewer than two classes.

    >>> m = from_csv("data/nih_sample/labels.csv")   # doctest: +SKIP
    >>> m.task, len(m.classes)
    ('multilabel', 14)
    """
    header, rows = _read_csv(csv_path)
    fcol = _pick_column(header, file_col, FILE_COLUMNS, "file", csv_path)
    lcol = _pick_column(header, label_col, LABEL_COLUMNS, "label", csv_path)
    for col, what, defaults in ((fcol, "file", FILE_COLUMNS), (lcol, "label", LABEL_COLUMNS)):
        if col is None:
            raise DataError(
                f"{csv_path}: no {what} column found (looked for {list(defaults)}); "
                f"set data.{what}_col to one of the available columns: {header}."
            )
    pcol = _pick_column(header, patient_col, (PATIENT_COLUMN,), "patient", csv_path)
    scol = _pick_column(header, split_col, (), "split", csv_path)

    base = Path(root) if root is not None else Path(csv_path).parent
    dropped: list[tuple[str, str]] = []
    kept: list[tuple[str, dict[str, str]]] = []
    seen_paths: set[str] = set()
    for line, r in enumerate(rows, start=2):
        name = r[fcol]
        if not name:
            dropped.append((f"{csv_path}:{line}", "empty file name"))
            continue
        candidates = [Path(name)] if os.path.isabs(name) else [base / name, base / "images" / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            dropped.append((str(candidates[0]), "file not found"))
            continue
        if not is_image_path(found):
            dropped.append((str(found), "not a supported image file type"))
            continue
        path = os.path.abspath(found)
        if path in seen_paths:
            dropped.append((path, "duplicate row in the CSV"))
            continue
        seen_paths.add(path)
        kept.append((path, r))
    if not kept:
        examples = ", ".join(p for p, _ in dropped[:3])
        raise DataError(
            f"{csv_path}: none of the {len(rows)} files in column {fcol!r} was found (e.g. {examples}); "
            f"file names are looked up under {str(base)!r} and {str(base / 'images')!r}: set data.path (root) "
            "to the image folder."
        )
    if dropped:
        warnings.warn(
            f"{csv_path}: {len(dropped)} of {len(rows)} rows dropped (e.g. {dropped[0][0]}: {dropped[0][1]}); "
            "see Manifest.dropped.",
            stacklevel=2,
        )

    label_sets = []
    for path, r in kept:
        labs = [x for x in _split_labels(r[lcol], label_sep) if x]
        if not labs:
            raise DataError(
                f"{csv_path}: the image {path} has an empty {lcol!r} cell; give every row a label."
            )
        label_sets.append(labs)
    multi = any(len(set(labs)) > 1 for labs in label_sets)

    if binary_negative is not None:
        if task not in (None, "binary"):
            raise DataError(
                f"binary_negative={binary_negative!r} makes a binary task; it cannot be task {task!r}."
            )
        if not any(binary_negative in labs for labs in label_sets):
            seen = sorted({x for labs in label_sets for x in labs})
            raise DataError(f"{csv_path}: no row has the label {binary_negative!r}; labels found: {seen}.")
        classes: tuple[str, ...] = ("normal", "abnormal")
        label_sets = [["normal"] if set(labs) == {binary_negative} else ["abnormal"] for labs in label_sets]
        task_name = "binary"
    else:
        task_name = "multilabel" if multi or task == "multilabel" else None
        names = {x for labs in label_sets for x in labs}
        if task_name == "multilabel":
            names = {x for x in names if x.lower() not in NO_FINDING_NAMES}
        classes = order_classes(names)
        if len(classes) < 2:
            raise DataError(
                f"{csv_path}: only one class ({', '.join(classes) or 'none'}) in column {lcol!r}; "
                "a classifier needs at least two."
            )
        task_name = _resolve_task(task, len(classes), multi=multi, source=str(csv_path))

    patients = []
    for path, r in kept:
        pid = r[pcol] if pcol is not None else ""
        patients.append(pid or patient_id_from_name(os.path.basename(path)))
    splits = [_normalise_split(r[scol], csv_path) if scol is not None else "" for _, r in kept]
    return Manifest(
        paths=tuple(p for p, _ in kept),
        labels=_one_hot(label_sets, classes),
        classes=classes,
        task=task_name,
        patients=tuple(patients),
        splits=tuple(splits),
        root=str(csv_path),
        dropped=tuple(dropped),
    )


def load_manifest(cfg: DataConfig) -> Manifest:
    """The manifest a data config describes: ``from_csv`` when ``cfg.csv`` is set (relative to
    ``cfg.path`` unless absolute; files relative to ``cfg.path``), else ``from_folders(cfg.path)``."""
    if not cfg.path and not cfg.csv:
        raise DataError("no data given: set data.path to an image folder (and data.csv for a label table).")
    if cfg.csv:
        csv_path = Path(cfg.csv) if os.path.isabs(cfg.csv) or not cfg.path else Path(cfg.path) / cfg.csv
        return from_csv(
            csv_path,
            root=cfg.path or None,
            file_col=cfg.file_col,
            label_col=cfg.label_col,
            patient_col=cfg.patient_col,
            split_col=cfg.split_col,
            label_sep=cfg.label_sep,
            binary_negative=cfg.binary_negative,
            task=cfg.task,
        )
    return from_folders(cfg.path, task=cfg.task)

"""Readers that build a Manifest from a data source: class folders or a label CSV.

``load_manifest(cfg.data)`` picks the reader a data config describes.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungxray.data.imageio import is_image_path
from lungxray.data.manifest import (
    FILE_COLUMNS,
    LABEL_COLUMNS,
    NO_FINDING_NAMES,
    PATIENT_COLUMN,
    SPLIT_ALIASES,
    TASKS,
    Manifest,
    normalise_split,
    one_hot,
    order_classes,
    patient_id_from_name,
    read_csv_rows,
    split_labels,
)
from lungxray.errors import DataError, check_option

if TYPE_CHECKING:
    from lungxray.config import DataConfig


# ---------------------------------------------------------------------------------------------- folders


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def images_under(folder: Path) -> list[str]:
    """Every image file below ``folder`` (recursively, hidden names skipped), absolute, sorted."""
    return sorted(
        os.path.abspath(p)
        for p in folder.rglob("*")
        if not p.name.startswith(".") and is_image_path(p) and p.is_file()
    )


def from_folders(root: str | os.PathLike, *, task: str | None = None, min_classes: int = 2) -> Manifest:
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
        others = [d.name for d in top if d not in split_dirs and images_under(d)]
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
            images = images_under(class_dir)
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
    if len(classes) < min_classes:  # 1 for evaluating a trained run: e.g. a site's normal films only
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
    min_classes: int = 2,
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
        min_classes: 1 when the table evaluates a trained run (a site's normal films alone); else 2.

    Raises:
        DataError: empty CSV, unknown column (lists the available ones), no file found, a row without
            a label, a bad split value, ``binary_negative`` absent, or fewer than ``min_classes`` classes.

    >>> m = from_csv("data/nih_sample/labels.csv")   # doctest: +SKIP
    >>> m.task, len(m.classes)
    ('multilabel', 14)
    """
    header, rows = read_csv_rows(csv_path)
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
        labs = [x for x in split_labels(r[lcol], label_sep) if x]
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
        if len(classes) < max(1, min_classes):  # 1 for evaluating a trained run (a site's normal films)
            raise DataError(
                f"{csv_path}: only one class ({', '.join(classes) or 'none'}) in column {lcol!r}; "
                "a classifier needs at least two."
            )
        task_name = _resolve_task(task, len(classes), multi=multi, source=str(csv_path))

    patients = []
    for path, r in kept:
        pid = r[pcol] if pcol is not None else ""
        patients.append(pid or patient_id_from_name(os.path.basename(path)))
    splits = [normalise_split(r[scol], csv_path) if scol is not None else "" for _, r in kept]
    return Manifest(
        paths=tuple(p for p, _ in kept),
        labels=one_hot(label_sets, classes),
        classes=classes,
        task=task_name,
        patients=tuple(patients),
        splits=tuple(splits),
        root=str(csv_path),
        dropped=tuple(dropped),
    )


def load_manifest(cfg: DataConfig, *, min_classes: int = 2) -> Manifest:
    """The manifest a data config describes: ``from_csv`` when ``cfg.csv`` is set (relative to
    ``cfg.path`` unless absolute; files relative to ``cfg.path``), else ``from_folders(cfg.path)``.
    With ``cfg.sources``, each source is read so and mapped to the task (``data.sources``)."""
    if cfg.sources:
        from dataclasses import replace

        from lungxray.data.sources import combine, map_labels

        parts = []
        for s in cfg.sources:
            one = replace(cfg, sources=[], path=s.path, csv=s.csv, file_col=s.file_col, label_col=s.label_col,
                          patient_col=s.patient_col, split_col=s.split_col, label_sep=s.label_sep,
                          binary_negative=None, task=None)  # fmt: skip
            parts.append(map_labels(load_manifest(one), s))
        return combine(parts, cfg.task)
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
            min_classes=min_classes,
        )
    return from_folders(cfg.path, task=cfg.task, min_classes=min_classes)

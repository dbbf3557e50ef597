"""oof.csv: a k-fold ensemble's out-of-fold predictions (``lungxray.training.kfold``), written and read.

One row per non-test image: path, patient, label ('|'-joined positives), fold, then ``prob`` (binary:
P(positive)) or ``prob:<class>`` per class. ``lungxray.calibrate`` re-chooses an ensemble's threshold
from it (``calibrate_run``), never from images the members trained on.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from lungxray.data.manifest import Manifest
from lungxray.errors import RunError
from lungxray.io import atomic_write_text

OOF_FILE = "oof.csv"


def _prob_columns(m: Manifest) -> list[str]:
    return ["prob"] if m.task == "binary" else [f"prob:{c}" for c in m.classes]


def write_oof(path: Path, m: Manifest, folds: np.ndarray, prob: np.ndarray) -> Path:
    """oof.csv: one row per non-test image (path, patient, label, fold, prob or prob:<class> ...).

    ``prob`` (N, K) aligned with ``m``; rows with fold -1 are left out. Probabilities are written with
    ``repr`` (float32 values round-trip exactly).
    """
    labels = m.label_strings()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "patient", "label", "fold", *_prob_columns(m)])
    for i in np.flatnonzero(folds >= 0):
        writer.writerow([m.paths[i], m.patients[i], labels[i], int(folds[i]), *(repr(float(p)) for p in prob[i])])
    return atomic_write_text(path, buf.getvalue())


def read_oof(path: Path, classes: tuple[str, ...] | list[str], task: str) -> dict[str, np.ndarray]:
    """oof.csv back: {"path", "patient", "fold" (N,), "y" (targets as ``Manifest.targets``), "prob" (N, K)}."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise RunError(f"{path} holds no rows.")
    classes = list(classes)
    if task == "binary":
        prob = np.array([[float(r["prob"])] for r in rows])
        y = np.array([int(r["label"] == classes[1]) for r in rows], dtype=np.int64)
    else:
        prob = np.array([[float(r[f"prob:{c}"]) for c in classes] for r in rows])
        sets = [set(r["label"].split("|")) - {""} for r in rows]
        if task == "multiclass":
            y = np.array([classes.index(next(iter(s))) for s in sets], dtype=np.int64)
        else:
            y = np.array([[float(c in s) for c in classes] for s in sets], dtype=np.float32)
    return {
        "path": np.array([r["path"] for r in rows], dtype=object),
        "patient": np.array([r["patient"] for r in rows], dtype=object),
        "fold": np.array([int(r["fold"]) for r in rows], dtype=np.int64),
        "y": y,
        "prob": prob,
    }

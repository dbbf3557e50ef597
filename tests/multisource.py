"""Two tiny real data sources for the multi-source tests: a Kermany folder (own train/ and test/ split
folders, by patient) and an NIH-sample label CSV (No Finding, Pneumonia / Consolidation and other rows)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from conftest import DATA_ROOT, require_data

NIH = DATA_ROOT / "nih_sample"
NIH_MAP = {"No Finding": "NORMAL", "Pneumonia": "PNEUMONIA", "Consolidation": "PNEUMONIA"}


def _link(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.symlink(f, folder / f.name)


def make_two_sources(tmp: Path, per_class: int = 16, n_normal_nih: int = 40) -> list[dict]:
    """``data.sources`` entries (dicts) for a tiny Kermany folder and an NIH CSV under ``tmp``."""
    chest = require_data()
    require_data(NIH)
    from lungxray.data.manifest import patient_id_from_name

    test = {k: sorted((chest / "test" / k).glob("*.jpeg"))[:4] for k in ("NORMAL", "PNEUMONIA")}
    test_patients = {patient_id_from_name(f.name) for fs in test.values() for f in fs}
    for k in ("NORMAL", "PNEUMONIA"):
        train = [f for f in sorted((chest / "train" / k).glob("*.jpeg"))
                 if patient_id_from_name(f.name) not in test_patients][:per_class]  # fmt: skip
        _link(train, tmp / "kermany" / "train" / k)
        _link(test[k], tmp / "kermany" / "test" / k)
    with (NIH / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    findings = [r for r in rows if {"Pneumonia", "Consolidation"} & set(r["Finding Labels"].split("|"))]
    normal = [r for r in rows if r["Finding Labels"] == "No Finding"][:n_normal_nih]
    other = [r for r in rows if r not in findings and r["Finding Labels"] != "No Finding"][:10]
    (tmp / "nih").mkdir(parents=True, exist_ok=True)
    with (tmp / "nih" / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Patient ID"])
        for r in findings + normal + other:
            w.writerow([str(NIH / "images" / r["Image Index"]), r["Finding Labels"], r["Patient ID"]])
    return [
        {"path": str(tmp / "kermany"), "name": "kermany"},
        {"path": str(tmp / "nih"), "csv": "labels.csv", "name": "nih", "label_map": dict(NIH_MAP)},
    ]

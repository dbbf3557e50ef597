"""Train a population gate (``lungxray.gate``): the training population's films vs other populations'.

``train_gate("../shared/data/chest_xray", ["../shared/data/nih_sample/images"], "runs/gate")`` writes
``runs/gate/gate_data.csv`` (path, label inside/outside, patient) and trains the CPU-default network on
it at 64 px (every film, whatever its native resolution, goes through the same downsampling, so native
resolution tells the sets apart less), patient-grouped 70/15/15 split, threshold ``specificity>=0.99`` on
the validation split (``gate.GATE_STRATEGY``). The inside folder's own test split is left out, so a
classifier's test films stay unseen by its gate. About 80 s on one CPU thread for Kermany + the NIH sample.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungxray.data.manifest import patient_id_from_name
from lungxray.data.readers import from_folders, images_under
from lungxray.errors import DataError
from lungxray.gate import GATE_SOURCES, GATE_STRATEGY, INSIDE, OUTSIDE

GATE_DATA = "gate_data.csv"
GATE_RECIPE: dict[str, Any] = {  # the one place for the gate's defaults (CPU default network, 64 px)
    "name": "population-gate",
    "data.size": 64,
    "data.val_fraction": 0.15,
    "data.test_fraction": 0.15,
    "data.patient_col": "patient",
    "model.name": "cnn-small",
    "model.kwargs": {"width": 16},
    "train.epochs": 6,
    "train.batch_size": 64,
    "train.lr": 0.003,
    "train.balance": "weights",
    "eval.threshold": GATE_STRATEGY,
    "eval.bootstrap": 200,
}


def gate_rows(inside: str | os.PathLike, outside: Sequence[str | os.PathLike]) -> list[tuple[str, str, str]]:
    """(path, "inside" | "outside", patient) rows: every image of ``inside`` (a class-folder data set)
    except its test split, and every image under each ``outside`` folder. Patients are prefixed by
    set, so a split never mixes them up. DataError when a set has no images."""
    m = from_folders(inside, min_classes=1)
    rows = [(p, INSIDE, f"in:{pat}") for p, pat, s in zip(m.paths, m.patients, m.splits, strict=True) if s != "test"]
    if not rows:
        raise DataError(f"{inside}: no images outside its test split for the gate's inside set.")
    for i, folder in enumerate(outside):
        files = images_under(Path(folder))
        if not files:
            raise DataError(f"{folder}: no image files for the gate's outside set.")
        rows += [(f, OUTSIDE, f"out{i}:{patient_id_from_name(f)}") for f in files]
    return rows


def train_gate(
    inside: str | os.PathLike,
    outside: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Write ``out/gate_data.csv`` and train the gate into ``out`` (a run directory); returns ``out``.

    ``overrides``: config keys over ``GATE_RECIPE`` (e.g. ``{"train.threads": 1, "train.seed": 1}``)."""
    from lungxray.config import load_config
    from lungxray.training import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = gate_rows(inside, outside)
    sources = {"inside": f"{inside} (all but its test split)", "outside": [str(o) for o in outside]}
    (out / GATE_SOURCES).write_text(json.dumps(sources, indent=2))
    with open(out / GATE_DATA, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient"])
        writer.writerows(rows)
    cfg = load_config(None, {**GATE_RECIPE, "data.path": str(out), "data.csv": GATE_DATA, "out": str(out),
                             **(overrides or {})})  # fmt: skip
    train(cfg, progress=progress)
    return out

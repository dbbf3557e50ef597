"""The reference of the server's drift check: the run's validation (ood_distance, score) pairs.

Where it comes from, first found wins:
0. the pairs stored in ``model.safetensors`` at calibration (``__ood__.ref_*``: every run trained now);
1. ``RUN/drift_reference.csv`` (columns ``ood_distance``, ``score``), e.g. written by a site;
2. ``RUN/eval/val/predictions.csv`` when it carries an OOD column (``ood_distance`` or ``ood_score``)
   and a score column (``score`` or ``score_<positive class>``);
3. otherwise computed once at start-up: the ``val`` rows of ``RUN/splits.csv`` through the run's
   predictor, at most ``REFERENCE_CAP`` images (evenly spaced, so the same ones every start).

None when nothing usable exists (no OOD statistics, no splits, fewer than 5 readable images): the
server then runs without a drift check and ``/metrics`` reports ``lungxray_drift_p_value`` NaN.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_CAP = 500
MIN_ROWS = 5


def _float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _from_csv(path: Path, positive: str | None) -> np.ndarray | None:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    if not rows:
        return None
    cols = rows[0].keys()
    ood = next((c for c in ("ood_distance", "ood_score") if c in cols), None)
    score = next((c for c in ("score", f"score_{positive}") if c in cols), None)
    if ood is None or score is None:
        return None
    pairs = [(_float(r[ood]), _float(r[score])) for r in rows]
    ref = np.array([p for p in pairs if None not in p], dtype=np.float64).reshape(-1, 2)
    return ref if len(ref) >= MIN_ROWS else None


def _val_paths(run_dir: Path, data_root: str | None) -> list[Path]:
    splits = run_dir / "splits.csv"
    if not splits.is_file():
        return []
    try:
        with splits.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("split") == "val" and r.get("path")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    root = Path(data_root) if data_root else None
    paths = [Path(r["path"]) for r in rows]
    return [p if p.is_absolute() or root is None else root / p for p in paths]


def _stored(run_dir: Path) -> np.ndarray | None:
    """The validation (ood_distance, score) pairs that calibration stores in model.safetensors, if any."""
    from safetensors import safe_open

    from lungxray.rundir import OOD_PREFIX

    path = run_dir / "model.safetensors"
    keys = (OOD_PREFIX + "ref_distance", OOD_PREFIX + "ref_score")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            names = set(fh.keys())
            if not names.issuperset(keys):
                return None
            dist, score = (np.asarray(fh.get_tensor(k), np.float64) for k in keys)
    except (OSError, ValueError):  # a missing or unreadable file: the other sources decide
        return None
    ref = np.stack([dist, score], 1)
    return ref if len(ref) >= MIN_ROWS else None


def load_reference(
    run_dir: Path,
    card: Any,
    predict_paths: Callable[[list[Path]], list[Any]],
    cap: int = REFERENCE_CAP,
) -> tuple[np.ndarray | None, str]:
    """``(reference, source)``: the (N, 2) ood_distance, score pairs and where they came from.

    Args:
        run_dir: the run directory.
        card: its RunCard (positive class, training data root).
        predict_paths: ``Predictor.predict_paths``-like callable (used only in case 3).
        cap: most validation images predicted in case 3.
    """
    if card.ood is None:
        return None, "none: the run has no OOD statistics"
    stored = _stored(run_dir)
    if stored is not None:
        return stored, "model.safetensors (validation pairs stored at calibration)"
    positive = card.positive_class
    for path in (run_dir / "drift_reference.csv", run_dir / "eval" / "val" / "predictions.csv"):
        if path.is_file():
            ref = _from_csv(path, positive)
            if ref is not None:
                return ref, str(path.relative_to(run_dir))
    paths = _val_paths(run_dir, card.training.data)
    if len(paths) > cap:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, cap).round()]
    paths = [p for p in paths if p.is_file()]
    if len(paths) < MIN_ROWS:
        return None, "none: no readable validation images in splits.csv"
    preds = predict_paths(paths)
    pairs = [(p.ood_score, p.score) for p in preds if p.error is None]
    ref = np.array([p for p in pairs if None not in p], dtype=np.float64).reshape(-1, 2)
    if len(ref) < MIN_ROWS:
        return None, "none: fewer than 5 validation images could be predicted"
    return ref, f"splits.csv val rows ({len(ref)} images)"

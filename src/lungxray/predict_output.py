"""Writers of the prediction pass: a CSV / JSON file and the terminal table.

Both take records (``predict.Record``) or their ``Prediction``s; they never touch a model or an image.
The CSV has one row per input: ``path, label ('|' joined for multilabel), score, threshold, ood_score,
ood, error, p_<class>...``; the JSON document is ``{"disclaimer", "predictions": [Prediction.to_dict()]}``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lungxray import DISCLAIMER
from lungxray.errors import ConfigError

_FIELDS = ("path", "label", "score", "threshold", "ood_score", "ood", "error", "warnings")


def _predictions(results: Iterable[Any]) -> list[Any]:
    """Records or Predictions -> Predictions (a record carries its ``prediction``)."""
    return [getattr(r, "prediction", r) for r in results]


def _flat_row(r: Any, classes: list[str]) -> dict[str, Any]:
    label = "|".join(r.label) if isinstance(r.label, list) else r.label
    threshold = r.threshold
    if isinstance(threshold, dict):
        threshold = "|".join(f"{c}={t:.4g}" for c, t in threshold.items())
    row = {
        "path": r.path,
        "label": label,
        "score": r.score,
        "threshold": threshold,
        "ood_score": r.ood_score,
        "ood": r.ood,
        "error": r.error,
        "warnings": "|".join(getattr(r, "warnings", None) or []),
    }
    row.update({f"p_{c}": r.probabilities.get(c) for c in classes})
    return row


def write_predictions(results: Iterable[Any], out: str | os.PathLike) -> Path:
    """Write results (records or Predictions) as CSV (one row per input, ``p_<class>`` columns) or
    JSON, chosen by suffix; atomically.

    Raises:
        ConfigError: the suffix is neither .csv nor .json.
    """
    from lungxray.io import atomic_write_text, csv_cell

    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(f"cannot write predictions to {path}: use a .csv or .json file name.")
    preds = _predictions(results)
    if suffix == ".json":
        doc = {"disclaimer": DISCLAIMER, "predictions": [r.to_dict() for r in preds]}
        atomic_write_text(path, json.dumps(doc, indent=2))
        return path
    classes: list[str] = []
    for r in preds:
        classes.extend(c for c in r.probabilities if c not in classes)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*_FIELDS, *(f"p_{c}" for c in classes)], lineterminator="\n")
    writer.writeheader()
    for r in preds:
        writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in _flat_row(r, classes).items()})
    atomic_write_text(path, buf.getvalue())
    return path


def render_predictions(results: Iterable[Any], console: Any) -> None:
    """Print a rich table of records or Predictions: file, label, score vs threshold, OOD flag,
    error; then a summary line."""
    from rich.markup import escape
    from rich.table import Table

    preds = _predictions(results)
    table = Table(show_lines=False)
    for col in ("file", "label", "score", "threshold", "OOD score", "note"):
        table.add_column(col, overflow="fold")
    for r in preds:
        name = Path(r.path).name if os.sep in r.path else r.path
        if r.error:
            table.add_row(escape(name), "-", "-", "-", "-", f"[red]error: {escape(str(r.error))}[/]")
            continue
        label = (", ".join(r.label) or "(none)") if isinstance(r.label, list) else str(r.label)
        thr = r.threshold
        thr_s = "argmax" if thr is None else (f"{thr:.3f}" if isinstance(thr, float) else "per label")
        ood_s = "-" if r.ood_score is None else f"{r.ood_score:.1f}"
        note = "[yellow]out of distribution: unreliable[/]" if r.ood else ""
        table.add_row(escape(name), escape(label), f"{r.score:.3f}", thr_s, ood_s, note)
    console.print(table)
    n_err = sum(1 for r in preds if r.error)
    n_ood = sum(1 for r in preds if r.ood)
    console.print(
        f"{len(preds)} inputs: {len(preds) - n_err} predicted, {n_err} failed, {n_ood} out of distribution."
    )


def rows_of_csv(csv_path: str | os.PathLike) -> Iterator[Any]:
    """The rows of a streamed predictions CSV, one at a time, as light objects for
    ``render_set_summary`` (floats only; nothing is held, whatever the number of rows)."""
    import csv
    from types import SimpleNamespace

    def num(v: str) -> float | None:
        return float(v) if v not in ("", None) else None

    with open(csv_path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            yield SimpleNamespace(path=r["path"], error=r["error"] or None, ood_score=num(r["ood_score"]),
                                  score=num(r["score"]),
                                  warnings=[w for w in (r.get("warnings") or "").split("|") if w])  # fmt: skip


def render_set_summary(predictor: Any, results: Iterable[Any], console: Any) -> None:
    """DICOM header warnings per row, then one line: does this set differ from the training data?

    One pass over ``results`` (a list, or ``rows_of_csv`` streaming a CSV); only the (OOD distance,
    score) pairs of the predicted rows are kept, as two float arrays."""
    from array import array

    from rich.markup import escape

    ood, score = array("d"), array("d")
    for r in results:
        for w in getattr(r, "warnings", None) or []:
            console.print(f"[yellow]{escape(str(r.path))}: {escape(w)}[/]")
        if r.error is None and r.ood_score is not None and r.score is not None:
            ood.append(r.ood_score)
            score.append(r.score)
    if len(ood) < 20:
        return  # one image at a time says nothing about the set; the OOD flag covers single images
    from lungxray.calibrate import set_shift

    res = set_shift(predictor.run_dir, None, np.frombuffer(ood), np.frombuffer(score))
    if res is not None:
        colour = "yellow" if res.fired else "dim"
        console.print(f"[{colour}]set-level shift test (KS statistic {res.statistic:.3f}): {res.summary}[/]")


def predict_in_memory(predictor: Any, paths: list[Any], out: str | None, writer: Any, batch_size: int,
                      console: Any) -> bool:  # fmt: skip
    """`lungxray predict` without streaming: one pass over the records (each decoded once feeds the
    heatmap ``writer``, then only its Prediction is kept), the file ``out``, the table and the set line.
    True when any file failed."""
    results = []
    for rec in predictor.records(paths, batch_size=batch_size):
        if writer is not None:
            writer.write(rec)
        results.append(rec.prediction)
    if out:
        write_predictions(results, out)
    render_predictions(results, console)
    render_set_summary(predictor, results, console)
    return any(r.error for r in results)

"""Compare evaluated runs: headline metrics with CIs, size and training time, and F1 / AUC vs time.

Reads only model.json and ``eval/<split>/metrics.json`` of each run (no model is loaded), so it is
instant. Writes ``compare.csv`` and ``compare.png`` into ``out`` (default ``./compare``). When every run
is binary and was evaluated on the same images, each run's AUC difference from the FIRST run comes with a
paired patient-bootstrap 95% CI (``metrics.auc_difference`` on the runs' predictions.csv): two models'
separate CIs overlap far more often than their paired difference is undecided.

Example::

    result = compare_runs(["runs/cnn-small", "runs/resnet18"], split="test")
    result["rows"][0]["auc"], result["figure"]
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lungxray.errors import RunError
from lungxray.evaluation.metrics import auc_difference
from lungxray.evaluation.plots import save_figure
from lungxray.io import atomic_path, csv_cell
from lungxray.runcard import RunCard

__all__ = ["COLUMNS", "binary_predictions", "compare_runs", "render_comparison"]

COLUMNS = (
    "name", "run", "architecture", "task", "parameters", "input_size", "train_seconds", "n",
    "auc", "auc_ci_low", "auc_ci_high", "accuracy", "sensitivity", "specificity", "f1",
    "auc_diff_vs_first", "auc_diff_ci_low", "auc_diff_ci_high",
)  # fmt: skip
PAIRED_BOOT = 2000  # resamples for the paired differences

# metrics.json key per compared column and task (multi-class: macro averages; multi-label: macro AUC).
_KEYS = {
    "binary": {"auc": "auc", "accuracy": "accuracy", "sensitivity": "sensitivity",
               "specificity": "specificity", "f1": "f1"},
    "multiclass": {"auc": "macro_auc", "accuracy": "accuracy", "sensitivity": "macro_recall",
                   "specificity": "macro_specificity", "f1": "macro_f1"},
    "multilabel": {"auc": "macro_auc"},
}  # fmt: skip


def _value(entry: Any) -> float | None:
    if isinstance(entry, dict):
        entry = entry.get("value")
    return None if entry is None else float(entry)


def _row(run: Path, split: str) -> dict[str, Any]:
    card = RunCard.read(run)
    path = run / "eval" / split / "metrics.json"
    if not path.is_file():
        cmd = f"lungxray evaluate {run}" + ("" if split == "test" else f" --split {split}")
        if split not in ("test", "val", "train"):
            cmd += " --data <folder>"  # an evaluation of another data set is named <folder>-<split>
        raise RunError(f"{run} has no evaluation on {split!r} ({path} is missing): run `{cmd}` first.")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); run `lungxray evaluate {run}` again.") from None
    task = m.get("task", card.task)
    training = card.training
    keys = _KEYS.get(task, {})
    auc = m.get(keys.get("auc", "auc")) or {}
    row = {
        "name": run.name,
        "run": str(run),
        "architecture": card.architecture,
        "task": task,
        "parameters": training.parameters,
        "input_size": card.input_size,
        "train_seconds": training.seconds,
        "n": m.get("n"),
        "auc": _value(auc),
        "auc_ci_low": auc.get("ci_low") if isinstance(auc, dict) else None,
        "auc_ci_high": auc.get("ci_high") if isinstance(auc, dict) else None,
        "auc_diff_vs_first": None, "auc_diff_ci_low": None, "auc_diff_ci_high": None,  # see _paired
    }
    for col in ("accuracy", "sensitivity", "specificity", "f1"):
        row[col] = _value(m.get(keys[col])) if col in keys else None
    return row


def binary_predictions(run: Path, split: str) -> dict[str, tuple[str, int, float]] | str:
    """path -> (patient, label 0/1, positive-class score) from a binary run's eval/<split>/predictions.csv,
    or a sentence saying why there are none (not binary, not evaluated, unreadable columns)."""
    card = RunCard.read(run)
    path = run / "eval" / split / "predictions.csv"
    if card.task != "binary" or card.positive_class is None:
        return f"{run.name} is a {card.task} run (paired differences are for binary runs)"
    if not path.is_file():
        return f"{run.name} has no {path.name}"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return {r["path"]: (r["patient"], int(r["true_label"] == card.positive_class),
                                float(r[f"score_{card.positive_class}"])) for r in csv.DictReader(fh)}  # fmt: skip
    except (KeyError, ValueError, TypeError) as exc:
        return f"{path} cannot be read (bad or missing column: {exc})"


def _paired(runs: list[Path], rows: list[dict[str, Any]], split: str) -> str:
    """Fill the auc_diff_* columns (vs the first run) in place; returns what was done, or why not."""
    preds = [binary_predictions(r, split) for r in runs]
    why = next((p for p in preds if isinstance(p, str)), None)
    if why is None and any(p.keys() != preds[0].keys() for p in preds[1:]):
        why = "the runs were evaluated on different images"
    if why is None and any(p[k][1] != preds[0][k][1] for p in preds[1:] for k in p):
        why = "the runs label the same images differently"
    if why is None and len({v[1] for v in preds[0].values()}) < 2:
        why = "the evaluated images hold one class only (no AUC)"
    if why is not None:
        return f"no paired differences: {why}."
    paths = sorted(preds[0])
    y = np.array([preds[0][k][1] for k in paths])
    groups = np.array([preds[0][k][0] for k in paths])
    ref = np.array([preds[0][k][2] for k in paths])
    for row, p in zip(rows[1:], preds[1:], strict=True):
        d = auc_difference(y, np.array([p[k][2] for k in paths]), ref, groups=groups, n=PAIRED_BOOT)
        row.update(auc_diff_vs_first=d["difference"], auc_diff_ci_low=d["ci_low"], auc_diff_ci_high=d["ci_high"])
    return (f"AUC differences from {rows[0]['name']}: paired patient bootstrap ({PAIRED_BOOT} resamples) "
            f"on the same {len(paths)} images.")  # fmt: skip


def _figure(rows: list[dict[str, Any]]) -> Figure:
    """F1 and AUC (with CI whiskers) against training time, one labelled point per run."""
    fig = Figure(figsize=(10.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "f1", "F1 at the operating threshold"), (axes[1], "auc", "AUC")):
        for i, r in enumerate(rows):
            x, y = r.get("train_seconds"), r.get(key)
            if x is None or y is None:
                continue
            color = f"C{i % 10}"
            if key == "auc" and r.get("auc_ci_low") is not None and r.get("auc_ci_high") is not None:
                err = [[max(0.0, y - r["auc_ci_low"])], [max(0.0, r["auc_ci_high"] - y)]]
                ax.errorbar([x], [y], yerr=err, fmt="o", color=color, capsize=3, ms=7)
            else:
                ax.plot([x], [y], "o", color=color, ms=7)
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9)
        times = [r["train_seconds"] for r in rows if r.get("train_seconds")]
        if times and max(times) / max(min(times), 1e-9) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("Training time (s)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' at ')[0]} vs training time", fontsize=12)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15, y=0.12)
    return fig


def compare_runs(
    runs: list[str | Path], split: str = "test", out: str | Path | None = None
) -> dict[str, Any]:
    """Compare evaluated runs on one evaluation (``eval/<split>``).

    Returns ``{"rows": [dict per run with COLUMNS], "figure": Path | None, "table": Path | None,
    "paired": str}``; writes compare.csv and compare.png into ``out`` (default ``./compare``). The
    figure is None when no run has both a training time and a metric; ``paired`` says against which
    run the AUC differences were computed, or why they were not.

    Raises:
        RunError: a path that is not a run, or a run not evaluated on ``split``.
    """
    if not runs:
        raise RunError("give at least one run directory to compare.")
    rows = [_row(Path(r), split) for r in runs]
    names = [r["name"] for r in rows]
    for r in rows:  # two runs with the same folder name: label them by their full path
        if names.count(r["name"]) > 1:
            r["name"] = r["run"]
    paired = _paired([Path(r) for r in runs], rows, split) if len(rows) > 1 else ""
    out_dir = Path(out) if out is not None else Path("compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "compare.csv"
    with atomic_path(table) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else csv_cell(r[k])) for k in COLUMNS} for r in rows)
    figure = None
    if any(
        r.get("train_seconds") is not None and (r.get("f1") is not None or r.get("auc") is not None)
        for r in rows
    ):
        figure = save_figure(_figure(rows), out_dir / "compare.png")
    return {"rows": rows, "figure": figure, "table": table, "paired": paired}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _diff(r: dict[str, Any]) -> str:
    if r.get("auc_diff_vs_first") is None:
        return "(reference)" if r.get("auc") is not None else "-"
    return f"{r['auc_diff_vs_first']:+.3f} [{r['auc_diff_ci_low']:+.3f}, {r['auc_diff_ci_high']:+.3f}]"


def render_comparison(result: dict[str, Any], console: Console) -> None:
    """Print the comparison as a rich table, best AUC first, and where the files are."""
    table = Table(title="Run comparison")
    for col, justify in (("run", "left"), ("architecture", "left"), ("params", "right"), ("size", "right"),
                         ("train s", "right"), ("AUC [95% CI]", "right"), ("accuracy", "right"),
                         ("sensitivity", "right"), ("specificity", "right"), ("F1", "right")):  # fmt: skip
        table.add_column(col, justify=justify)
    diffs = any(r.get("auc_diff_vs_first") is not None for r in result["rows"])
    if diffs:
        table.add_column("AUC minus first's [95% CI]", justify="right")
    rows = sorted(result["rows"], key=lambda r: -(r.get("auc") if r.get("auc") is not None else -1.0))
    for r in rows:
        auc = _fmt(r.get("auc"))
        if r.get("auc_ci_low") is not None and r.get("auc_ci_high") is not None:
            auc += f" [{_fmt(r['auc_ci_low'])}, {_fmt(r['auc_ci_high'])}]"
        params = r.get("parameters")
        table.add_row(
            escape(str(r["name"])), escape(str(r.get("architecture"))), f"{params:,}" if isinstance(params, int) else "-",
            _fmt(r.get("input_size")), _fmt(r.get("train_seconds"), 0), auc, _fmt(r.get("accuracy")),
            _fmt(r.get("sensitivity")), _fmt(r.get("specificity")), _fmt(r.get("f1")),
            *([_diff(r)] if diffs else []),
        )  # fmt: skip
    console.print(table)
    if result.get("paired"):
        console.print(escape(result["paired"]))
    if result.get("table"):
        console.print(f"table: {escape(str(result['table']))}")
    if result.get("figure"):
        console.print(f"figure: {escape(str(result['figure']))}")

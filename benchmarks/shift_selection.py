"""Round 4 of issue 11's selection: rank chest_xray recipes on films from another hospital, not on validation.

    PYTHONPATH=src python benchmarks/shift_selection.py NAME=RUN [NAME=RUN ...] --baseline NAME \
        [--config configs/pneumonia-multisource.yaml] [--source nih] [--min-val-auc 0.99] \
        [--n-boot 5000] [--work runs/shift-selection] [--out-json benchmarks/results/shift_selection.json]

The selection set is one source of a multi-source recipe with its label mapping (by default the NIH
ChestX-ray14 sample: No Finding -> NORMAL, Pneumonia or Consolidation -> PNEUMONIA; adults, another
hospital). Every candidate run is evaluated on all of its mapped rows (``evaluate_run(run, data=CSV)``)
and compared with the baseline by the paired patient-bootstrap difference in AUC. The decision rule
(docs/benchmarks.md, "Round 4"): eligible = Kermany validation (or out-of-fold) AUC >= --min-val-auc;
a winner's difference interval, two-sided and Bonferroni-adjusted for the number of candidates, lies
entirely above 0; of the winners the highest selection-set AUC is chosen; no winner -> no change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lungxray.config import load_config
from lungxray.evaluation.compare import binary_predictions
from lungxray.evaluation.evaluate import evaluate_run
from lungxray.evaluation.metrics import auc_difference, roc_auc
from lungxray.io import atomic_write_text
from lungxray.runcard import RunCard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leave_one_source_out import held_out_csv  # noqa: E402


def selection_csv(config: str, source: str, folder: Path) -> Path:
    """Every mapped row of ``source`` (a source of the multi-source ``config``) as a label CSV for --data."""
    data = load_config(config).data
    held = [s for s in data.sources if s.source_name == source]
    if not held:
        raise SystemExit(f"{config} has no source named {source!r}")
    return held_out_csv(held[0], data, folder, name=f"{source}-selection.csv")


def val_auc(run: Path) -> float:
    """The run's own selection figure: best validation AUC, or out-of-fold AUC for a k-fold ensemble."""
    best = RunCard.read(run).training.best_val
    return float(best.get("auc", best.get("oof_auc", float("nan"))))


def scores(run: Path, split: str) -> dict[str, tuple[str, int, float]]:
    """path -> (patient, label 0/1, positive-class score) of the run's evaluation ``split``."""
    out = binary_predictions(run, split)
    if isinstance(out, str):
        raise SystemExit(out)
    return out


def decide(rows: list[dict[str, Any]], min_val_auc: float) -> str | None:
    """The rule: eligible, interval above 0, then the highest selection AUC; None when nobody qualifies."""
    winners = [r for r in rows if r["val_auc"] >= min_val_auc and r["delta_low"] is not None and r["delta_low"] > 0]
    return max(winners, key=lambda r: r["auc"])["name"] if winners else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--config", default="configs/pneumonia-multisource.yaml")
    ap.add_argument("--source", default="nih")
    ap.add_argument("--min-val-auc", type=float, default=0.99)
    ap.add_argument("--n-boot", type=int, default=5000)
    ap.add_argument("--work", type=Path, default=Path("runs/shift-selection"))
    ap.add_argument("--out-json", type=Path, default=Path("benchmarks/results/shift_selection.json"))
    args = ap.parse_args()
    runs = dict(a.split("=", 1) for a in args.runs)
    if args.baseline not in runs:
        raise SystemExit(f"--baseline {args.baseline} is not among the runs")
    data = selection_csv(args.config, args.source, args.work)
    by_run = {}
    for name, run in runs.items():
        result = evaluate_run(Path(run), data=data, n_boot=200, progress=False)
        by_run[name] = (scores(Path(run), result.out_dir.name), result.metrics)
    base = by_run[args.baseline][0]
    paths = sorted(base)
    groups = np.array([base[p][0] for p in paths])
    y = np.array([base[p][1] for p in paths])
    s0 = np.array([base[p][2] for p in paths])
    k = len(runs) - 1
    level = 1 - 0.05 / max(k, 1)
    rows = []
    for name, run in runs.items():
        sc, metrics = by_run[name]
        s = np.array([sc[p][2] for p in paths])
        row: dict[str, Any] = {"name": name, "run": run, "val_auc": round(val_auc(Path(run)), 4),
                               "auc": round(float(roc_auc(y, s)), 4),
                               "auc_ci": [round(metrics["auc"]["ci_low"], 4), round(metrics["auc"]["ci_high"], 4)],
                               "delta": None, "delta_low": None, "delta_high": None}  # fmt: skip
        if name != args.baseline:
            d = auc_difference(y, s, s0, groups=groups, n=args.n_boot, ci=level)
            row.update(delta=round(d["difference"], 4), delta_low=round(d["ci_low"], 4),
                       delta_high=round(d["ci_high"], 4))  # fmt: skip
        rows.append(row)
        print(f"{name:32s} val {row['val_auc']:.4f}  selection AUC {row['auc']:.3f} {row['auc_ci']}"
              + (f"  delta {row['delta']:+.3f} [{row['delta_low']:+.3f}, {row['delta_high']:+.3f}]"
                 if row["delta"] is not None else "  (baseline)"))  # fmt: skip
    winner = decide(rows, args.min_val_auc)
    print(f"interval level {level:.4f} (Bonferroni over {k}); winner: {winner or 'none (no change)'}")
    out = {"selection_set": {"config": args.config, "source": args.source, "n": int(len(y)),
                             "positives": int(y.sum()), "patients": int(len(set(groups))),
                             "positive_patients": int(len(set(groups[y == 1])))},
           "baseline": args.baseline, "interval_level": level, "n_boot": args.n_boot,
           "min_val_auc": args.min_val_auc, "rows": rows, "winner": winner}  # fmt: skip
    atomic_write_text(args.out_json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

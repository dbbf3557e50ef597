"""Leave-one-source-out: train a multi-source recipe on all sources but one, evaluate on the held-out one.

    python benchmarks/leave_one_source_out.py [--config configs/pneumonia-multisource.yaml]
        [--set train.epochs=3 ...] [--out runs/loso] [--n-boot 200]

For each source S of ``data.sources``: trains ``<name>-without-<S>`` (``subgroups.leave_one_source_out``),
then evaluates it on every row of S (S was neither trained nor validated on, so its own splits do not
matter) at the threshold chosen on the other sources' validation rows. Prints one line per held-out
source and writes ``<out>/leave_one_source_out.json``. At full scale this trains one model per source;
on 2 CPU cores use ``--set train.epochs=1 --set data.max_images=600`` for a smoke run.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

from lungxray.config import DataConfig, load_config, parse_overrides
from lungxray.data.readers import load_manifest
from lungxray.evaluation.evaluate import evaluate_run
from lungxray.evaluation.subgroups import leave_one_source_out
from lungxray.io import atomic_write_text
from lungxray.training import train

KEYS = ("auc", "sensitivity", "specificity", "accuracy")


def held_out_csv(held, data: DataConfig, folder: Path, name: str | None = None) -> Path:
    """Every mapped row of the held-out source as a label CSV (path, label, Patient ID) for --data,
    written to ``folder / name`` (default ``<source>-held-out.csv``); returns its absolute path."""
    m = load_manifest(replace(data, sources=[held]))
    path = (folder / (name or f"{held.source_name}-held-out.csv")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "Patient ID"])
        w.writerows(zip(m.paths, m.label_strings(), m.patients, strict=True))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pneumonia-multisource.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override")
    ap.add_argument("--out", type=Path, default=Path("runs/loso"))
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    cfg = load_config(args.config, {**parse_overrides(args.overrides), "out": str(args.out / "all")})
    rows = []
    for held, train_cfg in leave_one_source_out(cfg):
        train(train_cfg, progress=False)
        data = held_out_csv(held, cfg.data, args.out / "held-out")
        result = evaluate_run(train_cfg.run_dir, data=data, n_boot=args.n_boot, progress=False)
        row = {"held_out": held.source_name, "run": str(train_cfg.run_dir), "n": result.metrics["n"],
               **{k: result.metrics.get(k) for k in KEYS}}  # fmt: skip
        rows.append(row)
        cells = ", ".join(f"{k} {row[k]['value']:.3f}" if row[k] and row[k]["value"] is not None else f"{k} n/a"
                          for k in KEYS)  # fmt: skip
        print(f"held out {held.source_name} ({row['n']} images): {cells}")
    atomic_write_text(args.out / "leave_one_source_out.json", json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Training throughput of a recipe, with its fast paths (bf16 autocast, channels-last) on and off.

    python benchmarks/bench_train.py DATA --config configs/resnet18-224.yaml [--epochs 3]
        [--max-images N] [--variants recipe,fp32,fp32-nchw] [--json out.json] [--set key=value ...]

Each variant is one real ``lungxray.training.train`` into a temporary run directory: same data, splits
and seed, only the overrides of that variant differ. Throughput is training images per second (forward,
backward, optimizer step and on-device augmentation; validation excluded), the median over the epochs
after the first (the first pays for cuDNN autotuning and warm caches). ``wall`` is the whole call:
cache, every epoch, validation, OOD statistics and writing the run. Ratios are against the first
variant, all measured in one process on one machine. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lungxray.bench import TRAIN_VARIANTS, bench_train_variant
from lungxray.config import parse_overrides

VARIANTS = TRAIN_VARIANTS
bench_variant = bench_train_variant  # the measuring function lives in lungxray.bench (``lungxray bench``)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="Data folder (e.g. ../shared/data/chest_xray).")
    ap.add_argument("--config", default="configs/resnet18-224.yaml")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per variant (>= 2 for a steady figure).")
    ap.add_argument("--max-images", type=int, default=None, help="Seeded, stratified subsample.")
    ap.add_argument("--variants", default="recipe,fp32", help=f"Comma-separated, from {list(VARIANTS)}.")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="Extra override key=value.")
    ap.add_argument("--json", default=None, help="Also write the rows here.")
    args = ap.parse_args()

    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    common = {"train.epochs": args.epochs, "train.early_stopping": 0, **parse_overrides(args.sets)}
    if args.max_images:
        common["data.max_images"] = args.max_images
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = bench_variant(args.data, args.config, {**common, **VARIANTS[name]}, Path(tmp) / name)
            rows.append({"variant": name, **row})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["images_per_s"]
    print(f"\n{rows[0]['model']} at {rows[0]['size']} px, batch {rows[0]['batch_size']}, on {rows[0]['device']}, "
          f"torch {torch.__version__}\n")  # fmt: skip
    print(
        "| variant | bf16 | channels-last | img/s (steady) | ratio | 1st epoch img/s | wall s | best val AUC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['bf16']} | {r['channels_last']} | {r['images_per_s']:.0f} | "
            f"{r['images_per_s'] / base:.2f} | {r['first_epoch_images_per_s']:.0f} | {r['wall_seconds']:.0f} | "
            f"{r['best_val_auc']:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

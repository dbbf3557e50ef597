"""Two recipes, each as several runs (seeds), on the same evaluated images: the difference of their mean
AUCs with a paired patient-bootstrap CI (``metrics.auc_difference`` with (S, N) scores).

    PYTHONPATH=src python benchmarks/recipe_difference.py A1,A2,A3 B1,B2,B3 --split nih-selection.csv-all \
        [--n-boot 5000] [--ci 0.95]

Reads ``RUN/eval/<split>/predictions.csv`` of every run (evaluate them first, e.g. with
``benchmarks/shift_selection.py`` or ``lungxray evaluate RUN --data ...``); every run must hold the same images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lungxray.evaluation.metrics import auc_difference, roc_auc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shift_selection import scores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="comma-separated run directories of recipe A")
    ap.add_argument("b", help="comma-separated run directories of recipe B")
    ap.add_argument("--split", required=True, help="the evaluation folder name under RUN/eval/")
    ap.add_argument("--n-boot", type=int, default=5000)
    ap.add_argument("--ci", type=float, default=0.95)
    args = ap.parse_args()
    runs = {k: [scores(Path(r), args.split) for r in v.split(",")]
            for k, v in (("a", args.a), ("b", args.b))}  # fmt: skip
    first = runs["a"][0]
    if any(s.keys() != first.keys() for rs in runs.values() for s in rs):
        raise SystemExit("the runs were not evaluated on the same images")
    paths = sorted(first)
    y = np.array([first[p][1] for p in paths])
    groups = np.array([first[p][0] for p in paths])
    mat = {k: np.array([[s[p][2] for p in paths] for s in rs]) for k, rs in runs.items()}
    for k, m in mat.items():
        aucs = [roc_auc(y, row) for row in m]
        print(f"{k}: AUC per run {', '.join(f'{v:.3f}' for v in aucs)}; mean {np.mean(aucs):.3f}")
    d = auc_difference(y, mat["a"], mat["b"], groups=groups, n=args.n_boot, ci=args.ci)
    print(f"mean AUC a - b: {d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] "
          f"({d['level']:.0%} paired patient bootstrap, {len(paths)} images, {len(set(groups))} patients)")  # fmt: skip


if __name__ == "__main__":
    main()

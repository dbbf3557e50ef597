"""Cross-fitted site calibration from a run's test predictions alone (any run, k-fold ensembles too).

    PYTHONPATH=src python benchmarks/site_calibration_crossfit.py RUN [RUN ...] [--strategy "sensitivity>=0.95"]
        [--labeled 100] [--seeds 10] [--out JSON]

``benchmarks/site_calibration.py`` needs the run's validation split (prevalence, shift); a k-fold run has
none (train and val are pooled into folds). This reads ``RUN/eval/test/predictions.csv`` (``lungxray
evaluate RUN``) and reports the same protocol: 2-fold patient-grouped cross-fitting on the test split,
threshold chosen on one half (or on ``--labeled`` images drawn from it) and applied to the other, pooled,
repeated over seeds; the ceiling is the in-sample threshold on the evaluated half (reporting only).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def test_predictions(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(y (N,), P(positive) (N,), patient (N,), stored threshold) from RUN's test evaluation."""
    from lungxray.runcard import RunCard

    card = RunCard.read(run)
    pos = card.positive_class
    with (run / "eval" / "test" / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([r["true_label"] == pos for r in rows], dtype=int)
    p = np.array([float(r[f"score_{pos}"]) for r in rows])
    g = np.array([r["patient"] for r in rows])
    return y, p, g, float(card.threshold)


def main(argv: list[str] | None = None) -> None:
    from lungxray.site import crossfit_site_calibration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--strategy", default="sensitivity>=0.95")
    ap.add_argument("--labeled", type=int, nargs="*", default=[100])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    out = {}
    for run in a.runs:
        y, p, g, t = test_predictions(run)
        res = {"threshold": t}
        for n in [None, *a.labeled]:
            r = crossfit_site_calibration(y, p, g, a.strategy, seeds=tuple(range(a.seeds)), n_labeled=n,
                                          reference_threshold=t, n_boot=a.n_boot, check_size=False)  # fmt: skip
            res["half" if n is None else f"labeled_{n}"] = r
            print(f"{run}  {'half' if n is None else n} labeled: " + "  ".join(
                f"{k} sens {r[k]['sensitivity']['value']:.3f} spec {r[k]['specificity']['value']:.3f}"
                for k in ("reference", "site", "ceiling") if k in r))  # fmt: skip
        out[str(run)] = res
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

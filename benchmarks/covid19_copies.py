"""Which covid19 films are Kermany films, and what a contrast curve costs a chest_xray run on them.

    PYTHONPATH=src python benchmarks/covid19_copies.py [RUN] [--data ../shared/data]

Maps every covid19 film to the Kermany (chest_xray) film it copies, if any (``lungxray.data.copies``
on 128 px thumbnails), prints the table of docs/benchmarks.md ("covid19 is made of Kermany films") and,
given a chest_xray RUN evaluated on its test split and on covid19's Normal/Viral Pneumonia films as
NORMAL/PNEUMONIA (``RUN/eval/<name>-all/predictions.csv``, ``--eval-name``), the AUC of the same
Kermany test films in both versions.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image


def thumbs(paths: list[str]) -> np.ndarray:
    """(N, 128, 128) uint8, stretched like a run's cache."""
    return np.stack([np.asarray(Image.open(p).convert("L").resize((128, 128), Image.Resampling.BILINEAR))
                     for p in paths])  # fmt: skip


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from lungxray.data.copies import copy_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    ap.add_argument("--eval-name", default="covid19_np-all")
    a = ap.parse_args()
    a.data = a.data.resolve()
    cov = sorted(str(p) for p in (a.data / "covid19").glob("*/*/*"))
    ker = sorted(str(p) for p in (a.data / "chest_xray").glob("*/*/*"))
    match = {i: j for i, j, _ in copy_pairs(thumbs(cov), thumbs(ker))}
    table = collections.Counter((Path(p).parent.name, Path(ker[match[i]]).parts[-3] if i in match else "none")
                                for i, p in enumerate(cov))  # fmt: skip
    for (cls, where), n in sorted(table.items()):
        print(f"{cls:16s} copies of Kermany {where:5s}: {n}")
    if a.run is None:
        return
    with (a.run / "eval" / a.eval_name / "predictions.csv").open(newline="") as fh:
        as_covid = {os.path.realpath(r["path"]): float(r["score_PNEUMONIA"]) for r in csv.DictReader(fh)}
    with (a.run / "eval" / "test" / "predictions.csv").open(newline="") as fh:
        as_kermany = {r["path"]: (float(r["score_PNEUMONIA"]), r["true_label"]) for r in csv.DictReader(fh)}
    y, s_cov, s_ker = [], [], []
    for i, p in enumerate(cov):
        k = ker[match[i]] if i in match else None
        if k in as_kermany and os.path.realpath(p) in as_covid:
            y.append(as_kermany[k][1] == "PNEUMONIA")
            s_cov.append(as_covid[os.path.realpath(p)])
            s_ker.append(as_kermany[k][0])
    print(f"{len(y)} Kermany test films: AUC {roc_auc_score(y, s_ker):.3f} as Kermany stores them, "
          f"{roc_auc_score(y, s_cov):.3f} as covid19 stores them")  # fmt: skip


if __name__ == "__main__":
    main()

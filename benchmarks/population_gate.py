"""How often a population gate flags each data set: its own held-out test rows, the Kermany test split
(same population, never seen by the gate) and the external sets (other populations it never saw).

    PYTHONPATH=src python benchmarks/population_gate.py runs/gate [runs/gate-seed1 ...] \
        [--data ../shared/data] [--out benchmarks/results/population_gate.json]

One row per gate and set: n, share flagged (P(outside) >= the gate's threshold, chosen on its own
validation split with specificity >= 0.99) with a 95% Wilson interval, median P(outside). Nothing here
chooses anything: the gate and its threshold are fixed before these sets are scored.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

SETS = {  # name -> (relative folder or index, what it is)
    "kermany_test_normal": ("chest_xray/test/NORMAL", "pediatric, same hospital, unseen (inside)"),
    "kermany_test_pneumonia": ("chest_xray/test/PNEUMONIA", "pediatric, same hospital, unseen (inside)"),
    "lung_masks_normal": ("lung_masks", "adult normal films, three other sources"),
    "lung_masks_tb": ("lung_masks", "adult tuberculosis films, other sources"),
    "hannover_covid19": ("hannover_covid19/images", "adult COVID-19 pneumonia, Hannover"),
    "covid19_normal": ("covid19", "covid19 data set, Normal class (mixed sources)"),
    "covid19_viral": ("covid19", "covid19 data set, Viral Pneumonia class (mixed sources)"),
    "covid19_covid": ("covid19", "covid19 data set, Covid class (mixed sources)"),
}


def set_paths(root: Path, name: str) -> list[str]:
    from lungxray.data.imageio import is_image_path

    folder, _ = SETS[name]
    if name.startswith("lung_masks"):
        want = "normal" if name.endswith("normal") else "tuberculosis"
        with open(root / folder / "index.csv", newline="") as fh:
            return [str(root / folder / r["image"]) for r in csv.DictReader(fh) if r.get("finding") == want]
    if name.startswith("covid19_"):
        cls = {"normal": "Normal", "viral": "Viral Pneumonia", "covid": "Covid"}[name.split("_")[1]]
        return sorted(str(p) for p in (root / folder).glob(f"*/{cls}/*") if is_image_path(p))
    return sorted(str(p) for p in (root / folder).rglob("*") if p.is_file() and is_image_path(p))


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float(c - h), float(c + h)]


def own_test(gate_dir: Path, gate) -> dict[str, list[str]]:
    """The gate run's own held-out test rows by label (inside / outside)."""
    with open(gate_dir / "splits.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    return {f"gate_test_{lab}": [r["path"] for r in rows if r["label"] == lab] for lab in ("inside", "outside")}


def row(gate_name: str, name: str, what: str, s: np.ndarray, t: float) -> dict:
    k, n = int((s >= t).sum()), int(len(s))
    return {"gate": gate_name, "set": name, "what": what, "n": n, "flagged": k / n if n else float("nan"),
            "flagged_ci": wilson(k, n), "median_p_outside": float(np.median(s)) if n else float("nan")}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    from lungxray.gate import Gate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gates", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    rows: list[dict] = []
    for gate_dir in a.gates:
        t0 = time.perf_counter()
        gate = Gate(gate_dir)
        sets = {k: (v, "the gate's own held-out test rows") for k, v in own_test(gate_dir, gate).items()}
        sets.update({name: (set_paths(a.data, name), what) for name, (_, what) in SETS.items()})
        for name, (paths, what) in sets.items():
            if not paths:
                continue
            rows.append(row(str(gate_dir), name, what, gate.scores_of_paths(paths)[0], gate.threshold))
            r = rows[-1]
            print(f"{gate_dir} {name:24s} n={r['n']:4d} flagged {r['flagged']:.3f} "
                  f"[{r['flagged_ci'][0]:.3f}, {r['flagged_ci'][1]:.3f}]", flush=True)  # fmt: skip
        print(f"{gate_dir}: threshold {gate.threshold:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)

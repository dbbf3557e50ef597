"""Does adapting BatchNorm statistics to the site (AdaBN) help? The issue-15 protocol, paired.

    PYTHONPATH=src python benchmarks/site_adaptation.py RUN [RUN ...] [--repeats 20] [--labeled 100]
        [--threads 1] [--out benchmarks/results/site_adaptation.json]
    python benchmarks/site_adaptation.py --table RESULT.json [RESULT.json ...]

For each run (binary, evaluated: RUN/eval/test/predictions.csv lists the Kermany test images, their
labels and patients) and each repeat r: patients are dealt into 2 stratified folds
(``grouped_folds(seed=r)``) and the labeled images drawn as ``crossfit_site_calibration`` draws them
(``rng([r, 1])``), so the unadapted figures are the published protocol's. For each fold: a copy of the
model is adapted (``adapt.adapt_batchnorm``) on ALL images of the OTHER fold (labels unused); the
threshold (``sensitivity>=0.95``, guarantee rule) is chosen on the labeled images of that fold (and on
the whole fold) with the adapted scores, and applied to this fold's adapted scores. Pooled decisions,
patient-bootstrap CIs; the ceiling is the in-sample threshold on the evaluated fold. The protocol and
what its result decides were declared before the first run (docs/site-calibration.md, "Site
adaptation of BatchNorm statistics").
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from pathlib import Path

import numpy as np


def test_split(run: Path, split: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, y (N,), patient (N,)) of RUN's evaluated ``split`` (RUN/eval/SPLIT/predictions.csv)."""
    from lungxray.runcard import RunCard

    pos = RunCard.read(run).positive_class
    with (run / "eval" / split / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (
        [r["path"] for r in rows],
        np.array([r["true_label"] == pos for r in rows], dtype=int),
        np.array([r["patient"] for r in rows]),
    )


def _score(predictor, model, images: np.ndarray) -> np.ndarray:
    """P(positive) (N,) of ``model`` (the predictor's, or an adapted copy) on model-ready images."""
    from lungxray.inference import TorchBackend

    backend = TorchBackend(model, "binary", predictor.card.preprocessing, predictor.device, features=False)
    return backend.run(images, batch_size=128)[0][:, -1].astype(np.float64)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def evaluate_run(run: Path, repeats: int, n_labeled: int, strategy: str, n_boot: int, split: str = "test") -> dict:
    from lungxray.adapt import adapt_batchnorm
    from lungxray.evaluation.metrics import choose_threshold
    from lungxray.predict import Predictor
    from lungxray.resampling import grouped_folds, stratified_subsample
    from lungxray.site import rates_with_cis

    pred = Predictor.load(run)
    paths, y, g = test_split(run, split)
    images = np.stack([pred.preprocess_path(p) for p in paths])
    base = _score(pred, pred.model, images)
    prep = pred.card.preprocessing
    arms = ("labeled", "half", "ceiling")
    dec = {(a, m): np.zeros((repeats, len(y)), bool) for a in arms for m in ("plain", "adapted")}
    aucs: dict[str, list[float]] = {"plain": [], "adapted": []}
    thresholds: dict[str, list[list[float]]] = {"plain": [], "adapted": []}
    t0 = time.perf_counter()
    for r in range(repeats):
        fold = grouped_folds(y, g, folds=2, seed=r)
        rng = np.random.default_rng([r, 1])
        rows: dict[str, list[float]] = {"plain": [], "adapted": []}
        for f in range(2):
            held = fold == f
            cal = np.flatnonzero(~held)
            lab = stratified_subsample(y, cal, n_labeled, rng)
            model = adapt_batchnorm(copy.deepcopy(pred.model), images[cal], normalization=prep.normalization,
                                    in_chans=prep.in_chans, device=pred.device)  # fmt: skip
            adapted = np.empty_like(base)
            adapted[cal] = _score(pred, model, images[cal])
            adapted[held] = _score(pred, model, images[held])
            for m, p in (("plain", base), ("adapted", adapted)):
                t_lab = choose_threshold(y[lab], p[lab], strategy)
                t_half = choose_threshold(y[cal], p[cal], strategy)
                t_best = choose_threshold(y[held], p[held], strategy, finite_sample=False)
                dec["labeled", m][r, held] = p[held] >= t_lab
                dec["half", m][r, held] = p[held] >= t_half
                dec["ceiling", m][r, held] = p[held] >= t_best
                aucs[m].append(_auc(y[held], p[held]))
                rows[m].append(float(t_lab))
        for m in rows:
            thresholds[m].append(rows[m])
        print(f"{run} repeat {r}: {time.perf_counter() - t0:.0f} s", flush=True)
    out: dict = {"split": split, "n": len(y), "n_pos": int(y.sum()), "repeats": repeats, "n_labeled": n_labeled,
                 "strategy": strategy, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    for m in ("plain", "adapted"):
        out[m] = {
            "held_out_auc": {"mean": float(np.mean(aucs[m])), "min": float(np.min(aucs[m])),
                             "max": float(np.max(aucs[m]))},  # fmt: skip
            "thresholds": thresholds[m],
            **{a: rates_with_cis(y, dec[a, m], g, n_boot, 0, 0.95) for a in arms},
            "per_repeat_labeled": [
                {"sensitivity": float(d[y == 1].mean()), "specificity": float((~d[y == 0]).mean())}
                for d in dec["labeled", m]
            ],
        }
    return out


def _c(d: dict) -> str:
    return f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def table(results: dict) -> str:
    """Markdown: per run, held-out AUC and the 100-label / half-labeled / ceiling figures, plain vs adapted,
    and the paired per-repeat specificity difference (adapted - plain) at 100 labeled images."""
    out = ["| run | held-out AUC (plain / adapted) | 100 labeled: sens / spec, plain | 100 labeled: sens / spec, adapted "
           "| paired spec. difference (mean; repeats up / down) | half labeled: spec (plain / adapted) "
           "| ceiling spec. (plain / adapted) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for run, r in results.items():
        name = "/".join(Path(run).parts[-2:])
        pl, ad = r["plain"], r["adapted"]
        diff = [a["specificity"] - p["specificity"] for a, p in zip(ad["per_repeat_labeled"], pl["per_repeat_labeled"], strict=True)]
        out.append(
            f"| {name} | {pl['held_out_auc']['mean']:.3f} / {ad['held_out_auc']['mean']:.3f} "
            f"| {pl['labeled']['sensitivity']['value']:.3f} / {_c(pl['labeled']['specificity'])} "
            f"| {ad['labeled']['sensitivity']['value']:.3f} / {_c(ad['labeled']['specificity'])} "
            f"| {np.mean(diff):+.3f} ({sum(d > 0 for d in diff)} / {sum(d < 0 for d in diff)} of {len(diff)}) "
            f"| {pl['half']['specificity']['value']:.3f} / {ad['half']['specificity']['value']:.3f} "
            f"| {pl['ceiling']['specificity']['value']:.3f} / {ad['ceiling']['specificity']['value']:.3f} |"
        )  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    import sys

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--table":  # --table JSON [JSON ...]: print the markdown table
        merged: dict = {}
        for f in argv[1:]:
            merged.update(json.loads(Path(f).read_text()))
        print(table(merged))
        return
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--strategy", default="sensitivity>=0.95")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", default="test", help="the evaluated set: RUN/eval/SPLIT/predictions.csv")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {}
    for run in a.runs:
        res = evaluate_run(run, a.repeats, a.labeled, a.strategy, a.n_boot, a.split)
        out[str(run)] = res
        for m in ("plain", "adapted"):
            r = res[m]
            print(f"{run} {m:8s} AUC {r['held_out_auc']['mean']:.3f}  "
                  + "  ".join(f"{arm} sens {r[arm]['sensitivity']['value']:.3f} spec {r[arm]['specificity']['value']:.3f}"
                              for arm in ("labeled", "half", "ceiling")), flush=True)  # fmt: skip
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

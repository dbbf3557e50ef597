"""Site calibration, label shift and set-level shift figures for a trained binary run (issue 15).

Usage, from the repository root::

    PYTHONPATH=src python benchmarks/site_calibration.py RUN DATA_ROOT \
        [--out benchmarks/results/site_calibration.json] [--strategy sensitivity>=0.95] [--seeds 10]

RUN is a run directory trained on DATA_ROOT/chest_xray (its splits.csv lists the val and test images);
DATA_ROOT holds the external sets (lung_masks/images, hannover_covid19/images, nih_sample/images).
Every image is predicted once with ``Predictor`` (score and OOD distance); then:

1. prevalence of the unlabeled test and val splits: EM on raw posteriors (prior = the effective
   training prior), EM after bias-corrected temperature scaling fitted on val (for val itself:
   2-fold patient cross-fitting inside val), and BBSE; patient-bootstrap CIs.
2. site calibration on the test split: 2-fold patient-grouped cross-fitting over seeds, before
   (the run's validation threshold) / after / ceiling, and the curve against labeled images.
3. set-level shift test: random 100-image subsets of val (against the rest of val) and 100-image
   samples of the external sets and of the test split, against all of val; a drift stream check.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from lungxray.evaluation.metrics import choose_threshold
from lungxray.evaluation.shift import DriftMonitor, shift_test
from lungxray.prevalence import bbse_prevalence, bootstrap_prevalence, em_prevalence
from lungxray.resampling import grouped_folds
from lungxray.runcard import RunCard
from lungxray.site import (
    apply_temperature,
    compare_operating_points,
    crossfit_site_calibration,
    fit_temperature,
    labeled_size_curve,
    to_logits,
)

EXTERNAL = ("lung_masks/images", "hannover_covid19/images", "nih_sample/images")


def predict(run: Path, paths: list[str]) -> dict[str, np.ndarray]:
    """Score (P(positive)), OOD distance and OOD flag per path (failed images dropped, counted)."""
    from lungxray.predict import Predictor

    pred = Predictor.load(run)
    rows = [r for r in pred.predict_paths(paths) if r.error is None]
    return {
        "path": np.array([r.path for r in rows]),
        "score": np.array([r.score for r in rows], dtype=np.float64),
        "ood": np.array([np.nan if r.ood_score is None else r.ood_score for r in rows], dtype=np.float64),
        "flag": np.array([bool(r.ood) for r in rows]),
        "failed": len(paths) - len(rows),
    }


def read_split(run: Path, split: str, positive: str) -> dict[str, np.ndarray]:
    with open(run / "splits.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return {
        "path": np.array([r["path"] for r in rows]),
        "patient": np.array([r["patient"] for r in rows]),
        "y": np.array([int(r["label"] == positive) for r in rows]),
    }


def _triple(t) -> dict[str, float]:
    return {
        "estimate": float(np.ravel(t[0])[-1]),
        "low": float(np.ravel(t[1])[-1]),
        "high": float(np.ravel(t[2])[-1]),
    }


def prevalence_figures(val, test, threshold, train_prior, n_boot) -> dict:
    """EM raw / EM after val-fitted BCTS / BBSE on test; the same, cross-fitted inside val, on val."""
    out: dict = {"train_prior_effective": train_prior, "val_prevalence": float(val["y"].mean())}
    t_val, b_val = fit_temperature(to_logits(val["score"]), val["y"], bias=True)
    out["bcts_on_val"] = {"temperature": t_val, "bias": b_val}
    pi_val = float(val["y"].mean())
    p_test_cal = apply_temperature(test["score"], t_val, b_val)
    g = test["patient"]
    out["test"] = {
        "true": float(test["y"].mean()),
        "em_raw": _triple(
            bootstrap_prevalence(
                test["score"], lambda a: em_prevalence(a, train_prior), groups=g, n_boot=n_boot
            )
        ),
        "em_bcts": _triple(
            bootstrap_prevalence(p_test_cal, lambda a: em_prevalence(a, pi_val), groups=g, n_boot=n_boot)
        ),
        "bbse": _triple(
            bootstrap_prevalence(
                (test["score"] >= threshold).astype(int),
                lambda a: bbse_prevalence(val["y"], val["score"] >= threshold, a, 2),
                groups=g,
                n_boot=n_boot,
            )
        ),
    }
    # val: calibrate on one patient half, estimate on the other (nothing fitted on what is estimated)
    fold = grouped_folds(val["y"], val["patient"], folds=2, seed=0)
    params = []
    for f in (0, 1):
        cal = fold != f
        t, b = fit_temperature(to_logits(val["score"][cal]), val["y"][cal], bias=True)
        params.append((t, b, float(val["y"][cal].mean()), cal))
    site = np.stack([val["score"], fold], 1)

    def em_cross(a):
        est = [
            em_prevalence(apply_temperature(a[a[:, 1] == f, 0], t, b), pi)
            for f, (t, b, pi, _) in enumerate(params)
            if (a[:, 1] == f).any()
        ]
        w = [(a[:, 1] == f).sum() for f in (0, 1) if (a[:, 1] == f).any()]
        return float(np.average(est, weights=w))

    def bbse_cross(a):
        est, w = [], []
        for f, (_, _, _, cal) in enumerate(params):
            m = a[:, 1] == f
            if m.any():
                est.append(
                    bbse_prevalence(val["y"][cal], val["score"][cal] >= threshold, a[m, 0] >= threshold, 2)[1]
                )
                w.append(m.sum())
        return float(np.average(est, weights=w))

    gv = val["patient"]
    out["val"] = {
        "true": float(val["y"].mean()),
        "em_raw": _triple(
            bootstrap_prevalence(
                val["score"], lambda a: em_prevalence(a, train_prior), groups=gv, n_boot=n_boot
            )
        ),
        "em_bcts_crossfit": _triple(bootstrap_prevalence(site, em_cross, groups=gv, n_boot=n_boot)),
        "bbse_crossfit": _triple(bootstrap_prevalence(site, bbse_cross, groups=gv, n_boot=n_boot)),
    }
    return out


def shift_figures(run, data_root, val, test, n_sample, n_null, rng_seed) -> dict:
    ref = np.stack([val["ood"], val["score"]], 1)
    rng = np.random.default_rng(rng_seed)
    out: dict = {"reference": "val", "n_ref": len(ref), "n_sample": n_sample}
    nulls = []
    for _ in range(n_null):
        idx = rng.choice(len(ref), n_sample, replace=False)
        nulls.append(shift_test(ref, ref[idx], exclude=idx).p_value)
    nulls = np.array(nulls)
    out["val_subsets"] = {
        "n_subsets": n_null,
        "alpha": 0.01,
        "false_alarm_rate": float((nulls < 0.01).mean()),
        "first_20_fired": int((nulls[:20] < 0.01).sum()),
        "false_alarm_rate_alpha_0.05": float((nulls < 0.05).mean()),
        "median_p": float(np.median(nulls)),
    }
    t_ps = [
        shift_test(
            ref,
            np.stack([test["ood"], test["score"]], 1)[rng.choice(len(test["ood"]), n_sample, replace=False)],
        ).p_value
        for _ in range(20)
    ]
    out["test_split_subsets"] = {
        "n_subsets": 20,
        "fired": int((np.array(t_ps) < 0.01).sum()),
        "median_p": float(np.median(t_ps)),
    }
    out["external"] = {}
    for rel in EXTERNAL:
        folder = Path(data_root) / rel
        if not folder.is_dir():
            continue
        files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        pick = list(np.random.default_rng(0).choice(files, min(n_sample, len(files)), replace=False))
        ext = predict(run, pick)
        r = shift_test(ref, np.stack([ext["ood"], ext["score"]], 1))
        out["external"][rel.split("/")[0]] = {
            **r.to_dict(),
            "per_image_ood_rate": float(ext["flag"].mean()),
            "failed": ext["failed"],
            "_features": ext,
        }
    # drift stream: reference = one patient half of val; stream the other half, then the NIH images
    fold = grouped_folds(val["y"], val["patient"], folds=2, seed=1)
    quiet = DriftMonitor(ref[fold == 0], window=200, min_samples=50)
    stream = ref[fold == 1]
    for d, s in stream[np.random.default_rng(2).permutation(len(stream))[:200]]:  # arrival order: random
        quiet.update(d, s)
    loud = DriftMonitor(ref[fold == 0], window=200, min_samples=50)
    nih = out["external"].get("nih_sample", {}).get("_features")
    if nih is not None:
        for d, s in zip(nih["ood"], nih["score"], strict=True):
            loud.update(d, s)
    out["drift_stream"] = {
        "val_stream": quiet.check().to_dict(),
        "nih_stream": None if nih is None else loud.check().to_dict(),
    }
    for v in out["external"].values():
        v.pop("_features")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data_root", type=Path, help="folder holding chest_xray/ and the external sets")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/site_calibration.json"))
    ap.add_argument("--strategy", default="sensitivity>=0.95")
    ap.add_argument("--seeds", type=int, default=10, help="cross-fitting repeats")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    args = ap.parse_args(argv)
    t0 = time.time()
    card = RunCard.read(args.run)
    if card.task != "binary":
        sys.exit(f"{args.run}: this benchmark handles binary runs only (task {card.task}).")
    positive = card.positive_class
    val, test = read_split(args.run, "val", positive), read_split(args.run, "test", positive)
    for split in (val, test):
        got = predict(args.run, list(split["path"]))
        if got["failed"]:
            keep = np.isin(split["path"], got["path"])
            for k in ("path", "patient", "y"):
                split[k] = split[k][keep]
        split.update(score=got["score"], ood=got["ood"], flag=got["flag"])
    import yaml

    cfg = yaml.safe_load((args.run / "config.yaml").read_text()) or {}
    balance = (cfg.get("train") or {}).get("balance", "none")
    counts = card.training.counts.get("train", {})
    train_prev = counts.get(positive, 0) / max(1, sum(counts.values()))
    train_prior = 0.5 if balance in ("weights", "sampler") else train_prev
    threshold = float(card.threshold)
    res: dict = {
        "run": str(args.run),
        "model": card.architecture,
        "val_threshold": threshold,
        "val_strategy": card.threshold_strategy,
        "strategy": args.strategy,
        "balance": balance,
        "train_prevalence": train_prev,
        "n_val": len(val["y"]),
        "n_test": len(test["y"]),
    }
    res["prevalence"] = prevalence_figures(val, test, threshold, train_prior, min(args.n_boot, 300))
    seeds = tuple(range(args.seeds))
    t_val_strategy = choose_threshold(val["y"], val["score"], args.strategy)
    # before: the run's threshold and the same strategy chosen on validation, both applied to test
    res["before"] = compare_operating_points(
        test["y"], test["score"], threshold, t_val_strategy, test["patient"], n_boot=args.n_boot
    )
    res["site"] = crossfit_site_calibration(
        test["y"],
        test["score"],
        test["patient"],
        args.strategy,
        seeds=seeds,
        reference_threshold=threshold,
        n_boot=args.n_boot,
    )
    res["site_youden"] = crossfit_site_calibration(
        test["y"],
        test["score"],
        test["patient"],
        "youden",
        seeds=seeds,
        reference_threshold=threshold,
        n_boot=args.n_boot,
    )
    res["curve"] = labeled_size_curve(
        test["y"],
        test["score"],
        test["patient"],
        args.strategy,
        tuple(args.sizes),
        repeats=args.seeds,
        n_boot=min(args.n_boot, 500),
    )
    res["shift"] = shift_figures(args.run, args.data_root, val, test, 100, 200, 0)
    res["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({k: res[k] for k in ("prevalence", "shift")}, indent=1, default=float)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The literature table by one command: each recipe x data set x seed, trained, evaluated, tabulated.

    PYTHONPATH=src python benchmarks/quality.py [--recipes cnn-64-elu,...,cpu-default] [--seeds 0,1,2]
        [--datasets chest_xray,covid19,nih_sample] [--data ../shared/data] [--runs runs/quality]
        [--max-epochs N] [--lungs runs/lungs] [--adopt /tmp/cpu-seed0=chest_xray/cpu-default/seed0]
        [--out-json benchmarks/results/quality.json] [--doc docs/benchmarks.md] [--render-only]

Resumable and incremental: run S of recipe R on data set D lives in ``RUNS/D/R/seedS``. A finished
run (model.json) is reused, never retrained; an interrupted one (checkpoint.pt) resumes. Each run's
figures are cached as JSON in ``RUN/quality/`` (``result.json`` and its parts), and the table is
re-rendered from every result found under ``RUNS``. Nothing is chosen on the test split: checkpoint
and threshold come from the run (validation), the test split is evaluated once
(``RUN/eval/test/metrics.json``), and the duplicate-free covid19 figures are the same predictions
with the duplicated test rows left out.

Per run: test metrics with patient-bootstrap CIs; the test rows duplicated (exact or near, ``lungxray
audit``) in train/val, and the metrics without them; for binary chest_xray runs the shortcut audit
(``--lungs``) and the external films (lung_masks' normal films: specificity; hannover_covid19, all
COVID-19 pneumonia: sensitivity; both with their OOD-flag rates). Recipes that cannot run on a data
set leave ``RUN/quality/error.json`` and a line under the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_table as qt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEGACY = ("cnn-64-elu", "cnn-150-relu", "cnn-2x2-stride", "cnn-224-small", "mlp")
DEFAULT_RECIPES = (*LEGACY, "cpu-default", "pneumonia-best")  # pneumonia-best only once it exists
DATASETS: dict[str, dict[str, Any]] = {
    "chest_xray": {},
    "covid19": {"data.population": None},
    "nih_sample": {"data.csv": "labels.csv", "data.binary_negative": "No Finding", "data.population": None},
}
NO_LUNGS = ("no lung-field run given: pass `--lungs RUN` (train one with "
            "`lungxray train-lungs DATA/lung_masks --out runs/lungs`)")  # fmt: skip


# ------------------------------------------------------------------------------------ recipes


def resolve_recipe(text: str) -> tuple[str, Path]:
    """A recipe name (configs/<name>.yaml) or a YAML path -> (name, path)."""
    p = Path(text)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise SystemExit(f"recipe file {text!r} does not exist.")
        return p.stem, p
    path = REPO / "configs" / f"{text}.yaml"
    if not path.is_file():
        raise SystemExit(
            f"no recipe {text!r}: {path} does not exist (give a name in configs/ or a .yaml path)."
        )
    return text, path


def run_config(recipe: Path, dataset: str, data_root: Path, run_dir: Path, seed: int, max_epochs: int | None,
               overrides: dict[str, Any]) -> Any:  # fmt: skip
    """The recipe's config for one data set and seed, epochs capped at ``max_epochs``."""
    from lungxray.config import load_config

    epochs = load_config(recipe).train.epochs
    over = {"data.path": str(data_root / dataset), **DATASETS[dataset], "out": str(run_dir), "train.seed": seed,
            "train.epochs": min(epochs, max_epochs) if max_epochs else epochs, **overrides}  # fmt: skip
    return load_config(recipe, over)


IGNORED = {"out", "name", "data.cache_dir", "data.population", "train.threads", "train.device", "train.track"}


def config_diff(have: Any, want: Any) -> dict[str, list[Any]]:
    """{field: [run's value, asked value]} for the settings that differ (paths compared resolved)."""
    from lungxray.config import to_dict

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("kwargs", "label_map"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    a, b = flat(to_dict(have)), flat(to_dict(want))
    for d in (a, b):
        if d.get("data.path"):
            d["data.path"] = str(Path(d["data.path"]).resolve())
    return {
        k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if k not in IGNORED and a.get(k) != b.get(k)
    }


def adopt(spec: str, runs: Path) -> None:
    """``SRC=dataset/recipe/seedS``: copy a finished compatible run into ``RUNS/dataset/recipe/seedS``."""
    from lungxray.config import load_config

    src_text, _, dest_text = spec.partition("=")
    src, parts = Path(src_text), dest_text.strip("/").split("/")
    if len(parts) != 3 or not parts[2].startswith("seed") or parts[0] not in DATASETS:
        raise SystemExit(
            f"--adopt {spec!r}: expected RUN=dataset/recipe/seedS with dataset in {list(DATASETS)}."
        )
    dataset, recipe, seed = parts[0], parts[1], int(parts[2][4:])
    dest = runs / dataset / recipe / f"seed{seed}"
    if (dest / "model.json").is_file():
        print(f"adopt: {dest} already holds a run; {src} not copied")
        return
    if not (src / "model.json").is_file() or not (src / "config.yaml").is_file():
        raise SystemExit(f"--adopt: {src} is not a finished run (model.json and config.yaml needed).")
    have, want = load_config(src / "config.yaml"), load_config(resolve_recipe(recipe)[1])
    checks = {
        "model.name": (have.model.name, want.model.name), "model.kwargs": (have.model.kwargs, want.model.kwargs),
        "data.size": (have.data.size, want.data.size), "train.seed": (have.train.seed, seed),
        "train.optimizer": (have.train.optimizer, want.train.optimizer), "train.lr": (have.train.lr, want.train.lr),
        "data.max_images": (have.data.max_images, None), "data folder": (Path(have.data.path).name, dataset),
    }  # fmt: skip
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    if bad:
        raise SystemExit(f"--adopt: {src} is not a {recipe} seed-{seed} run on {dataset}: "
                         + ", ".join(f"{k} {a!r} (expected {b!r})" for k, (a, b) in bad.items()))  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoint.pt", "quality"))
    print(f"adopt: copied {src} -> {dest}")


# ------------------------------------------------------------------------------------ one run


def _cache(path: Path, make, key: dict[str, Any] | None = None) -> Any:
    """The JSON at ``path`` when it exists with the same ``key``; else ``make()``, written there."""
    if path.is_file():
        doc = json.loads(path.read_text())
        if doc.get("key") == key:
            return doc["value"]
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "value": value}, indent=1) + "\n")
    return value


def compact_metrics(body: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json body -> the table's figures (each ``{value, ci_low, ci_high}``), n, n_patients."""
    out: dict[str, Any] = {"n": body.get("n"), "n_patients": body.get("n_patients")}
    if body["task"] == "binary":
        out.update({k: body[k] for k in ("auc", "accuracy", "sensitivity", "specificity", "f1")})
        at05 = body.get("at_0.5", body)  # the threshold is 0.5 itself when at_0.5 is absent
        out.update({f"{k}_at05": at05[k] for k in ("accuracy", "sensitivity", "specificity")})
        out["threshold"] = body["threshold"]
    elif body["task"] == "multiclass":
        out.update({k: body[k] for k in ("accuracy", "macro_f1", "macro_auc", "macro_recall")})
        out["recall"] = {c: v["recall"] for c, v in body["per_class"].items()}
    else:
        out.update({k: body[k] for k in ("macro_auc", "macro_average_precision")})
    return out


def test_duplicates(run: Path, card: Any, cache_dir: str | None) -> list[str]:
    """Test rows of the run that are exact or near duplicates of one of its train/val images."""
    from lungxray.data.audit import audit
    from lungxray.data.manifest import Manifest

    m = Manifest.from_splits_csv(run / "splits.csv", classes=list(card.classes), task=card.task)
    split = dict(zip(m.paths, m.splits, strict=True))
    rep = audit(m, cache_dir=cache_dir, progress=False)
    return sorted({b if split[b] == "test" else a for a, b, _ in rep["duplicates_across_splits"]
                   if (split[a] == "test") != (split[b] == "test")})  # fmt: skip


def metrics_without(run: Path, card: Any, drop: set[str], n_boot: int, seed: int) -> dict[str, Any]:
    """The test metrics recomputed from predictions.csv without the rows in ``drop`` (same predictions)."""
    import csv

    from lungxray.evaluation.metrics import evaluate_predictions

    with (run / "eval" / "test" / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["path"] not in drop]
    classes = list(card.classes)
    prob = np.array([[float(r[f"score_{c}"]) for c in classes] for r in rows])
    y = np.array([classes.index(r["true_label"]) for r in rows])
    body = evaluate_predictions(card.task, y, prob[:, 1] if card.task == "binary" else prob, classes,
                                threshold=card.threshold, groups=[r["patient"] for r in rows], n_boot=n_boot,
                                seed=seed)  # fmt: skip
    return {**compact_metrics(body), "n_patients": len({r["patient"] for r in rows}), "n_removed": len(drop)}


def shortcut_part(run: Path, lungs: str, n_boot: int) -> dict[str, Any]:
    """The shortcut audit on the run's test split (``load_audit_set`` + ``audit_shortcuts``), in brief."""
    from lungxray.evaluation.shortcut import audit_shortcuts, load_audit_set

    x, y, paths, _ = load_audit_set(run, None, "test")
    doc = audit_shortcuts(run, lungs, x, y, paths, n_boot=n_boot)["shortcut"]
    cm, oc = doc.get("cam_mass", {}), doc.get("occlusion", {})
    out: dict[str, Any] = {"n": doc.get("n"), "lung_area": doc.get("lung_area"), "lungs": lungs,
                           "cam_in_lungs": cm.get("lungs", {}).get("mass"),
                           "cam_bottom_ratio": cm.get("bottom", {}).get("ratio")}  # fmt: skip
    for c in ("plain", "lungs_blanked", "only_lungs"):
        e = oc.get(c, {})
        ci = e.get("ci") or [None, None]
        out[f"auc_{c}"] = {"value": e.get("auc"), "ci_low": ci[0], "ci_high": ci[1]}
    return qt_clean(out)


def qt_clean(x: Any) -> Any:
    """JSON-safe copy (NaN -> None)."""
    from lungxray.evaluation.metrics.summary import _clean

    return _clean(x)


def external_sets(data_root: Path, max_images: int | None) -> dict[str, tuple[list[str], list[str], int]]:
    """{name: (image paths, patient ids, label)}: lung_masks' normal films (0) and hannover_covid19 (1)."""
    import csv

    out = {}
    lm, hv = data_root / "lung_masks", data_root / "hannover_covid19"
    if (lm / "index.csv").is_file():
        with (lm / "index.csv").open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["finding"] == "normal"]
        out["lung_masks"] = ([str(lm / r["image"]) for r in rows], [Path(r["image"]).stem for r in rows], 0)
    if (hv / "data.csv").is_file():
        with (hv / "data.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        out["hannover_covid19"] = ([str(hv / "images" / f"{r['image_id']}.png") for r in rows],
                                   [r["patient_id"] for r in rows], 1)  # fmt: skip
    if max_images:
        rng = np.random.default_rng(0)
        for k, (p, g, y) in out.items():
            keep = np.sort(rng.choice(len(p), min(max_images, len(p)), replace=False))
            out[k] = ([p[i] for i in keep], [g[i] for i in keep], y)
    return out


def _gate_sha1(run: Path) -> str | None:
    """The sha1 of the population gate attached to ``run`` (None without one): part of a cache key."""
    record = run / "gate" / "gate.json"
    return json.loads(record.read_text()).get("sha1") if record.is_file() else None


def external_part(run: Path, card: Any, data_root: Path, n_boot: int, max_images: int | None,
                  cache_dir: str | None) -> dict[str, Any]:  # fmt: skip
    """Specificity on lung_masks' normal films and sensitivity on hannover_covid19 at the stored threshold,
    with patient-bootstrap CIs and the share of films the run's OOD check flags."""
    from lungxray.data.cache import cache_images
    from lungxray.evaluation.metrics.bootstrap import bootstrap_ci
    from lungxray.focus import Preprocessor
    from lungxray.predict import Predictor

    if card.task != "binary" or [c.upper() for c in card.classes] != ["NORMAL", "PNEUMONIA"]:
        return {
            "skipped": f"external films are scored for NORMAL/PNEUMONIA runs; this one has {list(card.classes)}"
        }
    predictor = Predictor.load(run)
    pre = Preprocessor.for_run(card, run)  # the run's own pipeline (CLAHE, lung crop, ...), as predict applies it
    out: dict[str, Any] = {}
    for name, (paths, groups, label) in external_sets(data_root, max_images).items():
        cached = cache_images(paths, card.input_size, resize=card.resize, cache_dir=cache_dir, progress=False,
                              preprocessor=pre)  # fmt: skip
        ok = np.flatnonzero(cached.ok)
        prob, dist = predictor.predict_images(np.asarray(cached.images)[ok])
        hit = (card.decide(prob) == label).astype(float)  # called NORMAL on normals, PNEUMONIA on pneumonia
        lo, hi = bootstrap_ci(np.mean, hit, groups=np.asarray(groups)[ok], n=n_boot, seed=0)
        t_ood = None if card.ood is None else card.ood.threshold
        metric = "specificity" if label == 0 else "sensitivity"
        ood = None if dist is None or t_ood is None else dist > t_ood
        out[name] = {metric: {"value": float(hit.mean()), "ci_low": lo, "ci_high": hi}, "n": len(ok),
                     "n_patients": len(set(np.asarray(groups)[ok])), "unreadable": len(paths) - len(ok),
                     "ood_rate": None if ood is None else float(np.mean(ood))}  # fmt: skip
        if predictor.gate is not None:  # the attached population gate (lungxray.gate), on the same films
            gate = predictor.gate
            gated = gate.flags(gate.scores_of_paths([paths[i] for i in ok], cache_dir)[0])
            either = gated | (ood if ood is not None else False)
            out[name].update({"gate_rate": float(gated.mean()), "flagged_rate": float(either.mean()),
                              f"{metric}_unflagged": float(hit[~either].mean()) if (~either).any() else None,
                              "n_unflagged": int((~either).sum())})  # fmt: skip
    return qt_clean(out)


def run_one(dataset: str, recipe: str, recipe_path: Path, seed: int, a: argparse.Namespace,
            overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Train (unless finished), evaluate (unless evaluated) and measure one run; its per-run result."""
    from lungxray.config import load_config
    from lungxray.evaluation.evaluate import evaluate_run
    from lungxray.runcard import RunCard
    from lungxray.training import train

    run = a.runs / dataset / recipe / f"seed{seed}"
    cfg = run_config(recipe_path, dataset, a.data, run, seed, a.max_epochs, overrides)
    reused = (run / "model.json").is_file()
    if not reused:
        # started: an interrupted run resumes (a k-fold run at its first unfinished fold)
        resume = (run / ("splits.csv" if cfg.train.folds >= 2 else "checkpoint.pt")).is_file()
        print(f"{'resuming' if resume else 'training'} {run} ({cfg.train.epochs} epochs)", flush=True)
        train(cfg, resume=resume, progress=False)
    have = load_config(run / "config.yaml")
    differs = config_diff(have, cfg)
    if reused and differs:
        print(
            f"note: reusing {run}, which differs from what was asked: {differs}; delete it to retrain",
            flush=True,
        )
    card = RunCard.read(run)
    n_boot = a.n_boot if a.n_boot is not None else have.eval.bootstrap
    metrics_path = run / "eval" / "test" / "metrics.json"
    if not metrics_path.is_file():
        evaluate_run(run, n_boot=n_boot, progress=False)
    body = json.loads(metrics_path.read_text())
    q = run / "quality"
    dups = _cache(q / "duplicates.json", lambda: test_duplicates(run, card, have.data.cache_dir))
    test = compact_metrics(body)
    dedup = _cache(q / "test_dedup.json", lambda: metrics_without(run, card, set(dups), n_boot, have.train.seed),
                   {"n_boot": n_boot, "n": len(dups)}) if dups else test  # fmt: skip
    if card.task != "binary":
        shortcut = {"skipped": f"the occlusion audit is for binary runs; this one is {card.task}"}
    elif not a.lungs:
        shortcut = {"skipped": NO_LUNGS}
    else:
        key = {"lungs": str(Path(a.lungs).resolve()), "n_boot": a.shortcut_boot}
        shortcut = _cache(q / "shortcut.json", lambda: shortcut_part(run, a.lungs, a.shortcut_boot), key)
    if dataset == "chest_xray":
        key = {"data": str(a.data.resolve()), "max_images": a.max_external, "n_boot": n_boot,
               "gate": _gate_sha1(run)}  # fmt: skip
        external = _cache(q / "external.json", lambda: external_part(run, card, a.data, n_boot, a.max_external,
                                                                      have.data.cache_dir), key)  # fmt: skip
    else:
        external = {"skipped": "external films are scored for chest_xray runs"}
    result = {
        "dataset": dataset, "recipe": recipe, "seed": seed, "run": str(run), "task": card.task,
        "classes": list(card.classes), "epochs": (card.training.epochs_run or 0) // max(have.train.folds, 1) or None,
        "folds": have.train.folds, "threshold_chosen_on": card.calibration.split, "epochs_config": have.train.epochs,
        "epochs_recipe": load_config(recipe_path).train.epochs, "best_epoch": card.training.best_epoch,
        "training_seconds": card.training.seconds, "parameters": card.training.parameters,
        "bf16": bool(have.train.amp and (have.train.cpu_fast_paths or str(card.training.device).startswith("cuda"))),
        "threshold_strategy": card.threshold_strategy, "n_boot": n_boot, "test": test,
        "differs_from_asked": differs, "n_test_duplicates": len(dups), "test_dedup": dedup, "shortcut": shortcut,
        "external": external,
    }  # fmt: skip
    q.mkdir(parents=True, exist_ok=True)
    (q / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (q / "error.json").unlink(missing_ok=True)
    return {**result, "reused": reused}


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="names in configs/ or YAML paths")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--runs", type=Path, default=Path("runs/quality"))
    ap.add_argument(
        "--max-epochs", type=int, default=None, help="cap each recipe's epochs (rows marked capped)"
    )
    ap.add_argument("--lungs", default=None, help="lung-field run for the shortcut audit")
    ap.add_argument(
        "--adopt", action="append", default=[], help="RUN=dataset/recipe/seedS: reuse a finished run"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every run")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default the run's)")
    ap.add_argument("--shortcut-boot", type=int, default=200)
    ap.add_argument("--max-external", type=int, default=None, help="seeded subsample of each external set")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out-json", type=Path, default=REPO / "benchmarks" / "results" / "quality.json")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--render-only", action="store_true", help="no training: re-render from the runs found")
    return ap.parse_args(argv)


def render(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Aggregate every result under ``--runs``, write ``--out-json`` and the block in ``--doc``."""
    found = qt.load_results(a.runs)
    results = [r for r in found if "error" not in r]
    errors = [r for r in found if "error" in r]
    rows = qt.aggregate(results)
    block = qt.render_markdown(rows, errors)
    a.out_json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "runs_root": str(a.runs),
           "rows": rows + qt.published_rows(), "errors": errors}  # fmt: skip
    a.out_json.write_text(json.dumps(doc, indent=1) + "\n")
    text = a.doc.read_text() if a.doc.is_file() else "# Measured figures\n"
    a.doc.write_text(qt.splice(text, block))
    print(f"wrote {a.out_json} ({len(rows)} rows) and the quality block of {a.doc}")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run what is missing, then render; returns {"rows": [...], "runs": [{run, reused, error?}]}."""
    a = parse_args(argv)
    if a.render_only:
        return {"rows": render(a), "runs": []}
    from lungxray.config import parse_overrides

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    overrides = parse_overrides(a.overrides)
    if a.threads:
        overrides["train.threads"] = a.threads
    datasets = [d for d in a.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; choose from {list(DATASETS)}.")
    recipes = []
    for text in a.recipes.split(","):
        if (
            text == "pneumonia-best"
            and a.recipes == ",".join(DEFAULT_RECIPES)
            and not (REPO / "configs" / "pneumonia-best.yaml").is_file()
        ):
            print("pneumonia-best: configs/pneumonia-best.yaml does not exist yet; left out")
            continue
        recipes.append(resolve_recipe(text))  # fmt: skip
    for spec in a.adopt:
        adopt(spec, a.runs)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    done = []
    for dataset in datasets:
        for name, path in recipes:
            for seed in seeds:
                t = time.perf_counter()
                try:
                    r = run_one(dataset, name, path, seed, a, overrides)
                    done.append({"run": r["run"], "reused": r["reused"]})
                    print(f"{dataset}/{name}/seed{seed}: {'reused' if r['reused'] else 'trained'}, "
                          f"{time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
                except Exception as exc:  # one recipe failing on one data set must not stop the table
                    traceback.print_exc()
                    err = {
                        "dataset": dataset,
                        "recipe": name,
                        "seed": seed,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                    q = a.runs / dataset / name / f"seed{seed}" / "quality"
                    q.mkdir(parents=True, exist_ok=True)
                    (q / "error.json").write_text(json.dumps(err, indent=1) + "\n")
                    (q / "result.json").unlink(missing_ok=True)
                    done.append({"run": str(q.parent), "reused": False, "error": err["error"]})
    return {"rows": render(a), "runs": done}


if __name__ == "__main__":
    main()

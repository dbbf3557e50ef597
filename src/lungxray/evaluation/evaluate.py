"""Evaluate a trained run on one split: metrics with patient-bootstrap CIs, predictions, figures, report.

The operating threshold is the one STORED in model.json (chosen on the validation split at training
time); it is never re-chosen on the evaluated data. By default the evaluated rows are exactly the rows
recorded in the run's splits.csv for that split; ``data=`` evaluates another data set (e.g. an external
test set) with the run's data settings.

Writes ``<run>/eval/<name>/``: metrics.json, predictions.csv, figures/*.png and report.html, where
``<name>`` is the split (``test``) for the run's own data and ``<folder>-<split>`` (or ``<folder>-all``)
for another data set.

Example::

    result = evaluate_run("runs/cpu-default")          # the test split recorded at training
    result.metrics["auc"]                              # {"value": 0.95, "ci_low": ..., "ci_high": ...}
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lungxray import DISCLAIMER, __version__
from lungxray.config import Config, load_config
from lungxray.data.cache import cache_images
from lungxray.data.imageio import read_image
from lungxray.data.manifest import SPLITS, Manifest
from lungxray.data.readers import load_manifest
from lungxray.data.rows import take_rows
from lungxray.errors import DataError, ImageReadError, RunError, check_option
from lungxray.evaluation import plots
from lungxray.evaluation.metrics import evaluate_predictions
from lungxray.evaluation.overlap import overlap_with_run
from lungxray.evaluation.report import build_report, headline_rows
from lungxray.focus import Preprocessor
from lungxray.inference import predict_batches, probabilities_to_scores, resolve_device
from lungxray.io import atomic_path, atomic_write_text, csv_cell
from lungxray.runcard import RunCard
from lungxray.rundir import load_run

__all__ = ["EvalResult", "evaluate_run", "render_summary"]

GALLERY_SIZE = 12  # most confident errors shown
GALLERY_SIDE = 192  # pixels of each gallery image (re-read from the original file when possible)


@dataclass
class EvalResult:
    """What ``evaluate_run`` wrote: the metrics.json body and where the files are."""

    run_dir: Path
    split: str  # the split asked for ("test", "val", "train")
    out_dir: Path  # <run>/eval/<name>
    metrics: dict[str, Any]  # the metrics.json body
    report_path: Path
    seconds: float  # wall time of the whole evaluation, figures and report included


# ----------------------------------------------------------------------------------------- data


def _run_config(run_dir: Path) -> Config:
    """The run's resolved config (config.yaml), or the defaults for a run copied without it."""
    path = run_dir / "config.yaml"
    return load_config(path) if path.is_file() else load_config(None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "data"


def _norm_class(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def _align_classes(m: Manifest, classes: list[str], task: str, source: str) -> Manifest:
    """Re-express ``m``'s labels in the run's class order (names matched case-insensitively)."""
    lookup = {_norm_class(c): k for k, c in enumerate(classes)}
    unknown = [c for c in m.classes if _norm_class(c) not in lookup]
    if unknown or (task == "binary" and len(m.classes) > 2):
        raise DataError(
            f"{source}: its classes {list(m.classes)} do not match the run's classes {classes}; "
            "name the class folders (or label values) like the run's classes."
        )
    fill = np.nan if task == "multilabel" else 0.0  # a label the source does not know is unknown
    labels = np.full((len(m), len(classes)), fill, dtype=np.float32)
    for j, c in enumerate(m.classes):
        labels[:, lookup[_norm_class(c)]] = m.labels[:, j]
    if task != "multilabel" and np.any(labels.sum(axis=1) != 1):
        raise DataError(f"{source}: some images have no or several labels, but the run is {task}.")
    return replace(m, labels=labels, classes=tuple(classes), task=task)


def _external_manifest(data: str | Path, cfg: Config, classes: list[str], task: str) -> Manifest:
    """Manifest of another data set (folder, or label CSV) read with the run's data settings."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"evaluation data {str(p)!r} does not exist; give a folder of class folders.")
    d = replace(cfg.data, task=None, max_images=None, sources=[])
    if p.is_file():
        d = replace(d, path=str(p.parent), csv=str(p))
    elif d.csv and (p / Path(d.csv).name).is_file():
        d = replace(d, path=str(p), csv=Path(d.csv).name)
    else:
        d = replace(d, path=str(p), csv=None)
    # one class folder is enough here: a site's normal films alone measure specificity (the run has the classes)
    return _align_classes(load_manifest(d, min_classes=1), classes, task, str(p))


def _eval_manifest(
    run_dir: Path, card: RunCard, cfg: Config, data: str | Path | None, split: str
) -> tuple[Manifest, str, str]:
    """(rows to evaluate, data source for reports, eval folder name)."""
    check_option(split, SPLITS, "split")
    classes, task = list(card.classes), card.task
    if data is None:
        path = run_dir / "splits.csv"
        if not path.is_file():
            raise RunError(f"{run_dir} has no splits.csv; pass the data to evaluate with --data.")
        m = Manifest.from_splits_csv(path, classes=classes, task=task)
        part = m.split(split)
        if len(part) == 0:
            counts = {s: len(m.split(s)) for s in SPLITS}
            raise DataError(
                f"the {split} split of {run_dir} is empty (splits.csv: {counts}); "
                "choose another --split or evaluate on another data set with --data."
            )
        source = card.training.data or cfg.data.path or "sources: " + ", ".join(
            s.source_name for s in cfg.data.sources
        )
        return part, str(source), split
    m = _external_manifest(data, cfg, classes, task)
    part = m.split(split)
    tag = split
    if len(part) == 0:  # no split folders of that name: every image is the evaluation set
        part, tag = m.with_splits([split] * len(m)), "all"
    return part, str(data), f"{_slug(Path(data).resolve().name)}-{tag}"


# ----------------------------------------------------------------------------------------- outputs


def _write_predictions(path: Path, m: Manifest, prob: np.ndarray, pred: np.ndarray) -> None:
    """predictions.csv: path, patient, true_label, score_<class>..., predicted_label, correct (and source
    for a multi-source run)."""
    scores = probabilities_to_scores(prob, m.task)
    classes = list(m.classes)
    true = m.label_strings()
    if m.task == "multilabel":
        known = ~np.isnan(m.labels)
        correct = np.all((pred == (m.labels == 1)) | ~known, axis=1)
        pred_str = ["|".join(c for c, v in zip(classes, row, strict=True) if v) for row in pred]
    else:
        target = m.targets
        correct = pred == target
        pred_str = [classes[int(k)] for k in pred]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [csv_cell(c) for c in ["path", "patient", "true_label", *[f"score_{c}" for c in classes],
                                   "predicted_label", "correct", *(["source"] if m.sources else [])]]
        )  # fmt: skip
        for i in range(len(m)):
            w.writerow([*map(csv_cell, (m.paths[i], m.patients[i], true[i])), *[f"{v:.6f}" for v in scores[i]],
                        csv_cell(pred_str[i]), int(correct[i]), *([csv_cell(m.sources[i])] if m.sources else [])])  # fmt: skip


def _error_rows(m: Manifest, prob: np.ndarray, pred: np.ndarray, card: RunCard) -> list[tuple[int, str]]:
    """The most confident errors, false negatives (missed findings) first: [(row, caption)]."""
    classes, out = list(m.classes), []
    if m.task == "binary":
        y, p = m.targets, prob[:, 0]
        fn = np.flatnonzero((y == 1) & (pred == 0))
        fp = np.flatnonzero((y == 0) & (pred == 1))
        # false negatives first, but keep up to a third of the gallery for false positives
        n_fn = min(len(fn), GALLERY_SIZE - min(len(fp), GALLERY_SIZE // 3))
        fn, fp = fn[np.argsort(p[fn], kind="stable")][:n_fn], fp[np.argsort(-p[fp], kind="stable")]
        for rows, kind in ((fn, "false negative"), (fp, "false positive")):
            out += [(int(i), f"{kind}\ntrue {classes[y[i]]}, p({classes[1]}) = {p[i]:.2f}") for i in rows]
    elif m.task == "multiclass":
        y = m.targets
        wrong = np.flatnonzero(pred != y)
        conf = prob[wrong, pred[wrong]]
        missed = pred[wrong] == 0  # predicted the first (normal-like) class: a missed finding
        order = wrong[np.lexsort((-conf, ~missed))]
        out = [
            (int(i), f"true {classes[y[i]]}\npred {classes[pred[i]]} ({prob[i, pred[i]]:.2f})") for i in order
        ]
    else:
        y = m.labels
        t = np.asarray(card.thresholds)
        fn = np.argwhere((y == 1) & ~pred)
        fp = np.argwhere((y == 0) & pred)
        fn = fn[np.argsort(prob[fn[:, 0], fn[:, 1]] - t[fn[:, 1]])] if len(fn) else fn
        fp = fp[np.argsort(-(prob[fp[:, 0], fp[:, 1]] - t[fp[:, 1]]))] if len(fp) else fp
        seen: set[int] = set()
        for pairs, kind in ((fn, "missed"), (fp, "false")):
            for i, k in pairs:
                if int(i) not in seen:
                    seen.add(int(i))
                    out.append((int(i), f"{kind} {classes[k]}\np = {prob[i, k]:.2f} (t = {t[k]:.2f})"))
    return out[:GALLERY_SIZE]


def _gallery_image(path: str, fallback: np.ndarray, pre: Any) -> np.ndarray:
    """The original file at GALLERY_SIDE px (sharper than the model input) through the run's pipeline
    ``pre`` (a ``focus.Preprocessor``: same crop / mask / window), else the cached input."""
    try:
        return pre(read_image(path), GALLERY_SIDE)
    except (ImageReadError, OSError):
        return np.asarray(fallback)


def _fold_best_epoch(fold_dir: Path) -> int | None:
    """The best epoch a k-fold member recorded in its fold.json summary, or None."""
    try:
        return int(json.loads((fold_dir / "fold.json").read_text())["summary"]["best_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_figures(
    folder: Path, m: Manifest, prob: np.ndarray, pred: np.ndarray, body: dict, card: RunCard,
    run_dir: Path, images: np.ndarray,
) -> list[Path]:  # fmt: skip
    """Every figure of the evaluation as PNG under ``folder``; returns the paths written."""
    from lungxray.rundir import read_history

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a re-evaluation must not keep figures of another task
        old.unlink()
    classes, task, out = list(m.classes), m.task, []

    def save(fig, name: str) -> None:
        out.append(plots.save_figure(fig, folder / name))

    if task == "binary":
        y, p, t = m.targets, prob[:, 0], float(body["threshold"])
        save(plots.confusion_matrix(body["confusion"], classes, title=f"threshold {t:.3g}"), "confusion.png")
        if 0 < y.sum() < len(y):  # curves need both classes
            save(plots.roc_curve(y, p, threshold=t), "roc.png")
            save(plots.pr_curve(y, p, threshold=t), "pr.png")
        save(plots.calibration_diagram(y, p), "calibration.png")
        save(plots.score_histograms(y, p, classes, threshold=t), "score_histograms.png")
    elif task == "multiclass":
        save(plots.confusion_matrix(body["confusion"]["matrix"], classes), "confusion.png")
        save(plots.multiclass_roc(m.targets, prob, classes), "roc_multiclass.png")
    else:
        aucs = [body["per_class"][c]["auc"] for c in classes]
        save(plots.per_label_auc_bars(classes, aucs), "auc_per_label.png")
    history = read_history(run_dir)
    # a k-fold ensemble has no history of its own, one per member instead
    folds = [] if history else sorted(f.parent for f in run_dir.glob("folds/fold-*/history.csv"))
    fold_histories = [read_history(f) for f in folds]
    if len(history) >= 2:  # one epoch draws no curve
        best = card.training.best_epoch
        save(plots.learning_curves(history, best_epoch=best), "learning_curves.png")
    elif fold_histories and all(len(h) >= 2 for h in fold_histories):
        best_epochs = [_fold_best_epoch(f) for f in folds]
        save(plots.fold_learning_curves(fold_histories, best_epochs), "learning_curves.png")
    errors = _error_rows(m, prob, pred, card)
    if errors:
        pre = Preprocessor.for_run(card, run_dir)
        imgs = np.stack([_gallery_image(m.paths[i], images[i], pre) for i, _ in errors])
        titles = [f"{cap}\n{Path(m.paths[i]).name[:28]}" for i, cap in errors]
        fig = plots.error_gallery(imgs, titles, title_colors=["#b00020"] * len(errors))
        save(fig, "error_gallery.png")
    return out


# ----------------------------------------------------------------------------------------- main


def evaluate_run(
    run: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    n_boot: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    *,
    device: str = "auto",
    console: Console | None = None,
    lungs: str | Path | None = None,
) -> EvalResult:
    """Evaluate a run on a split at its stored threshold and write metrics, predictions, figures, report.

    Args:
        run: run directory (model.json + model.safetensors; weights only, never unpickled).
        data: None = the run's own data, rows of ``split`` in its splits.csv; or another folder / label
            CSV (its ``split`` rows if it has split folders, else all its images).
        split: "test" | "val" | "train".
        n_boot: bootstrap resamples for the CIs (by patient); default the run's ``eval.bootstrap``.
        progress: show progress bars. ``cache_dir``: image cache (default the run's ``data.cache_dir``).
        device: "auto" (CUDA if available), "cpu", "cuda:N".
        lungs: a lung-field run (``lungxray train-lungs``) for the shortcut audit (Grad-CAM mass in
            and outside the lungs, AUC with the lungs blanked / only the lungs kept); None records
            the audit as skipped with a note on how to enable it.

    Returns:
        EvalResult; ``metrics`` is the metrics.json body (``evaluate_predictions`` plus run, data,
        split, threshold_strategy, n_patients, unreadable, seconds, images_per_s, timing).

    Raises:
        RunError: not a run directory. DataError: empty split, no readable image, classes that differ
        from the run's. ConfigError: unknown split.
    """
    t0 = time.perf_counter()
    console = console or Console(stderr=True)
    run_dir = Path(run)
    loaded = load_run(run_dir)
    card, task, classes = loaded.card, loaded.task, loaded.classes
    cfg = _run_config(run_dir)
    m, source, name = _eval_manifest(run_dir, card, cfg, data, split)
    out_dir = run_dir / "eval" / name

    pre = Preprocessor.for_run(card, run_dir)  # RunError when RUN/lungs/ is missing
    cache = {"resize": card.resize, "cache_dir": cache_dir or cfg.data.cache_dir, "preprocessor": pre}
    cached = cache_images(m.paths, card.input_size, progress=progress, **cache)
    # another data set may hold this run's own films under other names (evaluation.overlap)
    overlap = (overlap_with_run(run_dir, m.paths, cached, size=card.input_size, **cache) if data is not None
               else {"training": 0, "test": 0, "examples": [], "by": None})  # fmt: skip
    unreadable = [{"path": p, "reason": r} for p, r in cached.errors.items()]
    if unreadable:
        console.print(f"[yellow]{len(unreadable)} unreadable image(s) skipped:[/]")
        for row in unreadable[:10]:
            console.print(f"  {escape(row['path'])}: {escape(row['reason'])}")
    if not cached.ok.any():
        raise DataError(
            f"none of the {len(m)} images of {source} ({split}) could be read (e.g. "
            f"{unreadable[0]['path']}: {unreadable[0]['reason']}); if the data moved, pass it with --data."
        )
    keep = np.flatnonzero(cached.ok)
    images = take_rows(cached.images, keep)  # readable rows, read per batch (writable batch copies)
    m = m.subset(keep)
    t_decode = time.perf_counter()

    dev = resolve_device(device)
    model = loaded.model.to(dev)
    prob, feat = predict_batches(
        model, images, task=task, normalization=card.normalization, device=dev, in_chans=card.in_chans,
        features=True,
    )  # fmt: skip
    t_predict = time.perf_counter()

    n_boot = cfg.eval.bootstrap if n_boot is None else int(n_boot)
    y = m.labels if task == "multilabel" else m.targets
    body = evaluate_predictions(
        task, y, prob[:, 0] if task == "binary" else prob, classes,
        threshold=card.threshold, thresholds=card.thresholds,
        groups=np.asarray(m.patients), n_boot=n_boot, ci=cfg.eval.ci, seed=cfg.train.seed,
    )  # fmt: skip
    if len(set(m.source_names)) > 1:  # multi-source run: the per-source (subgroup) table
        from lungxray.evaluation.subgroups import metrics_by_source

        body["by_source"] = metrics_by_source(
            task, y, prob[:, 0] if task == "binary" else prob, classes, m.source_names,
            groups=m.patients, threshold=card.threshold, thresholds=card.thresholds,
            n_boot=n_boot, ci=cfg.eval.ci, seed=cfg.train.seed,
        )  # fmt: skip
    t_metrics = time.perf_counter()
    if overlap["training"]:
        console.print(
            f"[yellow]warning: {overlap['training']} of the evaluated images are train/val images of this run "
            "(the same file, or a copy of it); these metrics are optimistic.[/]"
        )
    if overlap["test"]:
        console.print(
            f"[yellow]warning: {overlap['test']} of the evaluated images are copies of this run's own test "
            "split; this set is not independent of it.[/]"
        )
    seconds = t_metrics - t0
    body.update(
        run=str(run_dir),
        model=card.name,
        architecture=card.architecture,
        split=split,
        eval_name=name,
        data=source,
        external=data is not None,
        threshold_strategy=card.threshold_strategy,
        threshold_chosen_on="validation" if card.calibration.split == "val" else card.calibration.split,
        calibration=card.calibration.to_dict(),
        n_patients=len(set(m.patients)),
        unreadable=unreadable,
        overlap_with_training=overlap["training"],
        overlap_with_test=overlap["test"],
        overlap_examples=overlap["examples"],
        overlap_by=overlap["by"],
        device=str(dev),
        seconds=round(seconds, 3),
        images_per_s=round(len(m) / seconds, 2) if seconds > 0 else None,
        timing={
            "decode_seconds": round(t_decode - t0, 3),
            "predict_seconds": round(t_predict - t_decode, 3),
            "metrics_seconds": round(t_metrics - t_predict, 3),
            "decoded": cached.decoded,
            "reused_from_cache": cached.reused,
        },
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        lungxray_version=__version__,
        disclaimer=DISCLAIMER,
    )

    from lungxray.evaluation.shortcut import audit_shortcuts
    from lungxray.gate import flagged_summary
    from lungxray.ood import mahalanobis

    y_audit = m.targets if task == "binary" else np.zeros(len(m), int)
    dist = mahalanobis(feat, loaded.ood["mean"], loaded.ood["precision"]) if "mean" in loaded.ood else None
    body["shift"] = _shift(run_dir, loaded, dist, prob, task)
    if card.ood is not None and dist is not None:  # the per-image OOD flag's share of this set
        body["ood_flagged"] = float((dist > card.ood.threshold).mean())
    body["population_gate"] = flagged_summary(run_dir, m.paths, cache_dir or cfg.data.cache_dir)
    body.update(audit_shortcuts(run_dir, lungs, images, y_audit, list(m.paths), seed=cfg.train.seed))
    pred = card.decide(prob)
    _write_predictions(out_dir / "predictions.csv", m, prob, pred)
    _write_figures(out_dir / "figures", m, prob, pred, body, card, run_dir, images)
    atomic_write_text(out_dir / "metrics.json", json.dumps(body, indent=2, allow_nan=False))

    report = build_report(run_dir, name)
    return EvalResult(run_dir, split, out_dir, body, report, time.perf_counter() - t0)


def _shift(run_dir: Path, loaded: Any, dist: np.ndarray | None, prob: np.ndarray, task: str) -> dict[str, Any]:
    """The set-level shift test of the evaluated images (their OOD distances ``dist`` and scores) against
    the run's validation reference."""
    from lungxray.calibrate import set_scores, set_shift

    if dist is None:
        return {"skipped": "the run has no OOD statistics, so no reference to compare with"}
    result = set_shift(run_dir, loaded, dist, set_scores(task, prob))
    if result is None:
        return {"skipped": "no validation reference (no splits.csv) or fewer than 5 images"}
    return result.to_dict()


# ----------------------------------------------------------------------------------------- summary


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _cell(entry: Any, pct: bool = False) -> str:
    """``{"value", "ci_low", "ci_high"}`` -> "0.912 [0.880, 0.940]"."""
    if not isinstance(entry, dict):
        return _fmt(entry, pct)
    text = _fmt(entry.get("value"), pct)
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f"  [{_fmt(entry['ci_low'], pct)}, {_fmt(entry['ci_high'], pct)}]"
    return text


def render_summary(result: EvalResult, console: Console) -> None:
    """Print the headline metrics with CIs, the threshold and how it was chosen, and the report path."""
    body = result.metrics
    ci = int(round(100 * body.get("bootstrap", {}).get("ci", 0.95)))
    binary = body.get("task") == "binary"
    table = Table(title=escape(f"{body.get('model', result.run_dir.name)} on {body.get('eval_name', result.split)} "
                  f"({body.get('n')} images, {body.get('n_patients')} patients)"))  # fmt: skip
    table.add_column("Metric")
    threshold = body.get("threshold")
    table.add_column(
        f"at threshold {threshold:.3g} [{ci}% CI]" if binary else f"value [{ci}% CI]", justify="right"
    )
    has05 = binary and "at_0.5" in body
    if has05:
        table.add_column(f"at 0.5 [{ci}% CI]", justify="right")
    for label, value, at05 in headline_rows(body):
        table.add_row(escape(label), _cell(value), *([_cell(at05) if at05 is not None else "-"] if has05 else []))
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in body.get("class_counts", {}).items())
    console.print(f"class counts: {escape(counts)}")
    for source, g in body.get("by_source", {}).items():
        line = ", ".join(f"{k} {_cell(g.get(k))}" for k in ("auc", "sensitivity", "specificity") if k in g)
        console.print(f"source {escape(source)} ({g.get('n')} images): {escape(line or g.get('error', ''))}")
    boot = body.get("bootstrap", {})
    console.print(f"CIs: percentile bootstrap over {boot.get('unit', 'patient')}s, {boot.get('n')} resamples")
    if binary:
        console.print(
            f"threshold {threshold:.4g}: chosen on the validation split with strategy "
            f"'{body.get('threshold_strategy')}' (never on the evaluated data)"
        )
    elif body.get("task") == "multilabel":
        console.print(
            f"per-label thresholds chosen on the validation split ('{body.get('threshold_strategy')}')"
        )
    if body.get("unreadable"):
        console.print(
            f"[yellow]{len(body['unreadable'])} unreadable image(s) skipped (listed in metrics.json)[/]"
        )
    if body.get("overlap_with_training"):
        console.print(
            f"[yellow]{body['overlap_with_training']} evaluated images were used in training/validation[/]"
        )
    if body.get("overlap_with_test"):
        console.print(
            f"[yellow]{body['overlap_with_test']} evaluated images are copies of the run's test split[/]"
        )
    console.print(
        f"{body.get('seconds', 0):.1f} s, {body.get('images_per_s') or 0:.0f} images/s on {body.get('device')}"
    )
    shift = body.get("shift") or {}
    if "summary" in shift:
        colour = "yellow" if shift.get("fired") else "dim"
        console.print(
            f"[{colour}]set-level shift test (KS on OOD distance and score vs validation, statistic "
            f"{shift['statistic']:.3f}): {shift['summary']}[/]"
        )
    elif shift:
        console.print(f"[dim]set-level shift test skipped: {shift['skipped']}[/]")
    gate = body.get("population_gate") or {}
    if gate.get("n"):
        console.print(f"[{'yellow' if gate['flagged'] else 'dim'}]population gate: {gate['flagged']} of {gate['n']} "
                      f"images ({100 * gate['share']:.1f}%) unlike the training population[/]")  # fmt: skip
    console.print(f"report: [bold]{escape(str(result.report_path))}[/]")
    console.print(f"[italic]{DISCLAIMER}[/]")

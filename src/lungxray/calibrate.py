"""Calibrate: turn a trained model's validation outputs into the run's operating point and OOD check.

The stage after the training loop (``lungxray.training`` calls ``calibrate`` at the end of a full run;
tuning trials skip it) and a stage of its own on a finished run (``calibrate_run``):

* ``choose_thresholds``: the binary threshold or per-label multilabel thresholds on validation
  (``lungxray.evaluation.metrics.choose_threshold``); multiclass uses argmax and needs none.
* ``fit_ood``: Mahalanobis statistics of penultimate training features, threshold at a quantile of
  validation distances (``lungxray.ood``).
* ``fit_temperature``: temperature scaling (a pure function; not applied by default).
* ``calibrate`` = predictions + the above -> ``Calibrated``; ``training_card`` assembles the RunCard.
* ``calibrate_run(run, strategy=...)``: a new operating point for a finished run, APPENDED to its
  calibration history (in place, or in a copy of the run when ``out`` is given); never replacing one.

Nothing here reads a test split.

Example::

    card = calibrate_run("runs/cpu-default", strategy="sensitivity>=0.95", out="runs/cpu-default-s95")
    card.calibrations[-1].threshold     # the new operating point; card.calibrations[0] is training's
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from lungxray.config import Config
from lungxray.data.manifest import Manifest
from lungxray.data.rows import take_rows
from lungxray.errors import DataError, RunError
from lungxray.evaluation.metrics import choose_threshold
from lungxray.focus import preprocessing_from_config
from lungxray.inference import DEFAULT_NORMALIZATION, predict_batches
from lungxray.ood import fit_gaussian, fit_threshold, mahalanobis
from lungxray.runcard import Calibration, OODSpec, RunCard, TrainingSummary

OOD_FIT_MAX = 5000  # training images whose features fit the OOD Gaussian (a seeded sample beyond that)


@dataclass(frozen=True)
class Calibrated:
    """What ``calibrate`` chose: the calibration entry and, when fitted, the OOD spec and its arrays."""

    calibration: Calibration
    ood: OODSpec | None = None
    ood_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # "mean" (D,), "precision" (D, D)


def choose_thresholds(
    task: str, y: np.ndarray, prob: np.ndarray, strategy: str
) -> tuple[float | None, tuple[float, ...] | None]:
    """(threshold, thresholds) chosen by ``strategy`` on validation labels ``y`` and probabilities ``prob``.

    Binary: ``prob`` (N, 1), ``y`` (N,) 0/1 -> (t, None). Multilabel: ``prob`` (N, C), ``y`` (N, C) with
    NaN unknown -> (None, one t per label; 0.5 where the known labels hold one class). Multiclass ->
    (None, None).
    """
    if task == "binary":
        return float(choose_threshold(y, prob[:, 0], strategy)), None
    if task != "multilabel":
        return None, None
    thresholds = []
    for j in range(prob.shape[1]):
        known = ~np.isnan(y[:, j])
        yj = y[known, j]
        two = len(np.unique(yj)) == 2
        thresholds.append(float(choose_threshold(yj, prob[known, j], strategy)) if two else 0.5)
    return None, tuple(thresholds)


def fit_ood(train_features: np.ndarray, val_features: np.ndarray, quantile: float = 0.99) -> Calibrated:
    """Gaussian of ``train_features`` (N, D); threshold = ``quantile`` of ``val_features`` distances.

    Returns a ``Calibrated`` with only ``ood`` / ``ood_arrays`` meaningful (use ``calibrate`` for both).
    """
    mean, precision = fit_gaussian(train_features)
    threshold = fit_threshold(mahalanobis(val_features, mean, precision), quantile)
    spec = OODSpec(
        threshold=threshold,
        dim=int(mean.shape[0]),
        quantile=quantile,
        fitted_on=f"{len(train_features)} train images; threshold on val",
    )
    return Calibrated(Calibration("0.5"), spec, {"mean": mean, "precision": precision})


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: str = "binary") -> float:
    """Temperature T > 0 minimising the validation NLL of ``logits / T`` (Guo et al. 2017).

    Binary: ``logits`` (N,) or (N, 1), ``y`` (N,) 0/1; multiclass: (N, C) and class indices (N,);
    multilabel: (N, C) and (N, C) 0/1 with NaN unknown (one temperature shared by every label: the
    known entries form one binary problem). Pure: nothing is applied or stored. The fit itself is
    ``lungxray.site.fit_temperature``'s (the one implementation, also used for site calibration).
    """
    from lungxray.site import fit_temperature as fit

    z = np.asarray(logits, np.float64)
    t = np.asarray(y, np.float64)
    if task == "multiclass":
        return fit(z, t)[0]
    known = ~np.isnan(t)
    return fit(z.reshape(t.shape)[known].reshape(-1), t[known].reshape(-1))[0]


def calibrate(
    model: torch.nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    task: str,
    val_rows: np.ndarray,
    strategy: str,
    train_rows: np.ndarray | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    in_chans: int = 1,
    amp: bool = False,
    channels_last: bool = False,
    name: str = "training",
) -> Calibrated:
    """Operating point (and, given ``train_rows``, the OOD statistics) of ``model`` on validation rows.

    Args:
        images: (N, S, S) uint8 (e.g. a cache memmap); ``targets`` (N,) or (N, C) as ``Manifest.targets``.
        val_rows / train_rows: row indices into ``images``; ``train_rows`` None skips the OOD fit.
        strategy: threshold strategy (``eval.threshold``). seed: draws the OOD fit sample beyond 5000.
    Returns:
        Calibrated: Calibration(split "val", strategy, threshold(s), n) and the OOD spec and arrays.
    """
    device = device or torch.device("cpu")

    def predict(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict_batches(
            model, take_rows(images, rows), task=task, normalization=DEFAULT_NORMALIZATION, device=device,
            in_chans=in_chans, features=True, amp=amp, channels_last=channels_last,
        )  # fmt: skip

    val_prob, val_feat = predict(val_rows)
    score = set_scores(task, val_prob)
    threshold, thresholds = choose_thresholds(task, np.asarray(targets)[val_rows], val_prob, strategy)
    cal = Calibration(strategy=strategy, split="val", threshold=threshold, thresholds=thresholds,
                      n=len(val_rows), name=name, created=_now())  # fmt: skip
    if train_rows is None:
        return Calibrated(cal)
    rng = np.random.default_rng(seed)
    fit_rows = (
        train_rows if len(train_rows) <= OOD_FIT_MAX else np.sort(rng.choice(train_rows, OOD_FIT_MAX, False))
    )
    _, train_feat = predict(fit_rows)
    ood = fit_ood(train_feat, val_feat)
    # the set-level shift test's reference: validation (OOD distance, score) pairs, kept in the
    # weights file next to the OOD statistics (``__ood__.ref_distance`` / ``__ood__.ref_score``)
    dist = mahalanobis(val_feat, ood.ood_arrays["mean"], ood.ood_arrays["precision"])
    arrays = {**ood.ood_arrays, "ref_distance": np.asarray(dist, np.float32), "ref_score": score}
    return Calibrated(cal, ood.ood, arrays)


def calibrate_oof(
    model: torch.nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    folds: np.ndarray,
    oof_prob: np.ndarray,
    *,
    task: str,
    strategy: str,
    seed: int = 0,
    device: torch.device | None = None,
    in_chans: int = 1,
    amp: bool = False,
    channels_last: bool = False,
) -> Calibrated:
    """The operating point of a k-fold ensemble, from its out-of-fold (OOF) predictions.

    Args:
        model: the ensemble (as it will predict: with its TTA wrapper, if any).
        images / targets: as ``calibrate``; ``folds`` (N,) the fold of each row, -1 for test rows.
        oof_prob: (N, K) each pooled row's probability from the member that did not train on it.
    Returns:
        Calibrated: Calibration(split "oof", threshold(s) by ``strategy`` on the pooled OOF rows,
        ``temperature`` fitted on the OOF logits (reported, not applied, as a site calibration's), n);
        OOD statistics of the ensemble's features: Gaussian on folds 0..K-2, threshold on the last
        fold (every pooled image trained K-1 members; no image is unseen by the whole ensemble). The
        shift test's reference scores are the last fold's OOF scores (held out, like a val split's).
    """
    from lungxray.site import to_logits

    targets = np.asarray(targets)
    pool = np.flatnonzero(folds >= 0)
    last = int(folds.max())
    y, prob = targets[pool], np.asarray(oof_prob, np.float64)[pool]
    threshold, thresholds = choose_thresholds(task, y, prob, strategy)
    logits = to_logits(prob[:, 0] if task == "binary" else prob, task)
    try:
        temperature = round(float(fit_temperature(logits, y, task)), 6)
    except DataError:  # one class only: no temperature
        temperature = 1.0
    fitted = calibrate(
        model, images, targets, task=task, val_rows=np.flatnonzero(folds == last), strategy=strategy,
        train_rows=np.flatnonzero((folds >= 0) & (folds < last)), seed=seed, device=device,
        in_chans=in_chans, amp=amp, channels_last=channels_last,
    )  # fmt: skip
    arrays = {**fitted.ood_arrays, "ref_score": set_scores(task, np.asarray(oof_prob)[folds == last])}
    n_fit = min(int(((folds >= 0) & (folds < last)).sum()), OOD_FIT_MAX)
    ood = replace(fitted.ood, fitted_on=f"{n_fit} images of folds 0-{last - 1}; threshold on fold {last}")
    cal = Calibration(
        strategy=strategy, split="oof", threshold=threshold, thresholds=thresholds, temperature=temperature,
        n=len(pool), name="training", created=_now(),
        notes=f"out-of-fold predictions of a {last + 1}-fold ensemble's members",
    )  # fmt: skip
    return Calibrated(cal, ood, arrays)


def oof_metrics(
    task: str, y: np.ndarray, prob: np.ndarray, patients: np.ndarray, *, n: int = 1000, ci: float = 0.95,
    seed: int = 0,
) -> dict:  # fmt: skip
    """{"oof_auc", "oof_auc_ci" [low, high] (patient-grouped bootstrap), "oof_n", "oof_patients"} of
    out-of-fold probabilities ``prob`` (N, K) and targets ``y``; the AUC as ``validation_scores``'s
    (binary ROC AUC, else the macro mean over classes / labels)."""
    from lungxray.evaluation.metrics import bootstrap_ci, validation_scores

    def auc(yy: np.ndarray, pp: np.ndarray) -> float:
        return float(validation_scores(task, yy, pp)["auc"])

    import warnings

    with warnings.catch_warnings():  # a resample holding one class has no AUC (skipped by bootstrap_ci)
        warnings.simplefilter("ignore")
        value = auc(y, prob)
        low, high = bootstrap_ci(auc, y, prob, groups=patients, n=n, ci=ci, seed=seed) if n else (np.nan, np.nan)
    return {
        "oof_auc": round(value, 6),
        "oof_auc_ci": [round(float(low), 6), round(float(high), 6)],
        "oof_n": int(len(y)),
        "oof_patients": int(len(set(np.asarray(patients).tolist()))),
    }


def set_scores(task: str, prob: np.ndarray) -> np.ndarray:
    """The per-image score of ``Prediction.score`` from model probabilities (N, K): binary P(positive),
    otherwise the largest class / label probability. The shift test's second column."""
    prob = np.asarray(prob, np.float32)
    return prob[:, 0] if task == "binary" else prob.max(axis=1)


def run_images(card: RunCard, run_dir, paths, *, cache_dir=None, progress: bool = False):
    """``CachedImages`` of image ``paths`` at a run's own preprocessing (its size, resize and lung-focused
    pipeline), read through the image cache in ``cache_dir`` (the run's is ``_cache_dir(run_dir)``)."""
    from lungxray.data.cache import cache_images
    from lungxray.focus import Preprocessor

    return cache_images(list(paths), card.input_size, resize=card.resize, cache_dir=cache_dir,
                        progress=progress, preprocessor=Preprocessor.for_run(card, Path(run_dir)))  # fmt: skip


def predict_images(loaded, paths, *, cache_dir=None, progress: bool = False):
    """(kept row indices, probabilities (N, K), OOD distances (N,) or None) of image ``paths`` through a
    loaded run at its own preprocessing (read through the image cache; unreadable images dropped)."""
    card = loaded.card
    cached = run_images(card, loaded.path, paths, cache_dir=cache_dir, progress=progress)
    keep = np.flatnonzero(cached.ok)
    if len(keep) == 0:
        raise DataError(f"none of the {len(paths)} images could be read.")
    prob, feat = predict_batches(
        loaded.model, np.array(cached.images[keep]), task=card.task, normalization=card.normalization,
        device=torch.device("cpu"), in_chans=card.in_chans, features=True,
    )  # fmt: skip
    mean, precision = loaded.ood.get("mean"), loaded.ood.get("precision")
    dist = None if mean is None else mahalanobis(feat, mean, precision)
    return keep, prob, dist


def shift_reference(run: str | os.PathLike, loaded=None, *, progress: bool = False) -> np.ndarray | None:
    """The run's validation (OOD distance, score) pairs (N, 2): the shift test's reference.

    Stored at training in model.safetensors (``__ood__.ref_*``); for runs trained before that, computed
    once from the val rows of splits.csv and cached as ``RUN/reference.csv``. None when the run has no
    OOD statistics or no splits.csv (the caller then skips the test with a note).
    """
    from lungxray.rundir import load_run

    run_dir = Path(run)
    loaded = loaded or load_run(run_dir)
    if "ref_distance" in loaded.ood and "ref_score" in loaded.ood:
        return np.stack([loaded.ood["ref_distance"], loaded.ood["ref_score"]], 1).astype(np.float64)
    cached = run_dir / "reference.csv"
    if cached.is_file():
        return np.loadtxt(cached, delimiter=",", skiprows=1, ndmin=2)
    splits = run_dir / "splits.csv"
    if "mean" not in loaded.ood or not splits.is_file():
        return None
    card = loaded.card
    val = Manifest.from_splits_csv(splits, classes=list(card.classes), task=card.task).split("val")
    if len(val) < 5:
        return None
    _, prob, dist = predict_images(loaded, val.paths, cache_dir=_cache_dir(run_dir), progress=progress)
    ref = np.stack([dist, set_scores(card.task, prob)], 1).astype(np.float64)
    with contextlib.suppress(OSError):  # a read-only run directory: use it without caching
        np.savetxt(cached, ref, delimiter=",", header="ood_distance,score", comments="", fmt="%.9g")
    return ref


def _cache_dir(run_dir: Path) -> str | None:
    from lungxray.config import load_config

    cfg = run_dir / "config.yaml"
    return load_config(cfg).data.cache_dir if cfg.is_file() else None


def set_shift(run: str | os.PathLike, loaded, ood: np.ndarray, score: np.ndarray):
    """The set-level shift test of images with OOD distances ``ood`` and scores ``score`` against the
    run's validation reference; None (with nothing raised) when the run has no reference, or fewer
    than 5 usable images. See ``lungxray.evaluation.shift.shift_test``."""
    from lungxray.evaluation.shift import shift_test

    sample = np.stack([np.asarray(ood, np.float64), np.asarray(score, np.float64)], 1)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if len(sample) < 5:
        return None
    ref = shift_reference(run, loaded)
    return None if ref is None else shift_test(ref, sample)


def training_card(
    cfg: Config,
    manifest: Manifest,
    fitted: Calibrated,
    *,
    in_chans: int,
    result,
    unreadable: int = 0,
    copies: int | None = None,
    device: str = "cpu",
    parameters: int | None = None,
    ensemble: dict | None = None,
) -> RunCard:
    """The RunCard of a freshly trained run: config, classes, preprocessing, OOD, training summary and
    the validation calibration as its first entry. ``result`` is the loop's TrainResult.

    ``ensemble`` (a k-fold run: {"k", "oof_auc", ...}) makes the architecture ``"ensemble"`` of K
    ``model.name`` members and is stored as ``training.folds``; ``eval.tta`` >= 2 is stored as ``tta``.
    """
    c = cfg
    arch, kwargs = c.model.name, dict(c.model.kwargs)
    best_val = {c.train.monitor: result.best_score}
    if ensemble is not None:
        arch, kwargs = "ensemble", {"member": arch, "member_kwargs": kwargs, "n": int(ensemble["k"])}
        best_val = {"oof_auc": ensemble["oof_auc"]}  # no single best epoch: see folds.per_fold
    return RunCard(
        name=c.name,
        architecture=arch,
        model_kwargs=kwargs,
        task=manifest.task,
        classes=tuple(manifest.classes),
        preprocessing=preprocessing_from_config(
            c.data, in_chans=in_chans, mean=DEFAULT_NORMALIZATION["mean"], std=DEFAULT_NORMALIZATION["std"]
        ),
        ood=fitted.ood,
        training=TrainingSummary(
            data=str(c.data.path),
            csv=c.data.csv,
            counts={s: manifest.class_counts(s) for s in ("train", "val", "test")},
            unreadable=unreadable,
            copies_across_splits=copies,
            epochs_run=result.epochs_run,
            best_epoch=None if ensemble is not None else result.best_epoch,
            best_val=best_val,
            seconds=round(result.seconds, 2),
            images_per_s=round(result.images_per_s, 1),
            device=device,
            parameters=parameters,
            folds=ensemble,
        ),
        calibrations=(fitted.calibration,),
        population=c.data.population,
        created=_now(),
        tta=int(c.eval.tta) if c.eval.tta > 1 else 0,
    )


def calibrate_run(
    run: str | os.PathLike,
    *,
    strategy: str | None = None,
    out: str | os.PathLike | None = None,
    name: str = "recalibration",
    progress: bool = False,
) -> RunCard:
    """A new operating point for a finished run, chosen on the val rows of its splits.csv.

    The val images are read through the cache (``data.cache_dir`` of the run's config.yaml) at the
    run's own preprocessing; the threshold(s) are chosen by ``strategy`` (default: the strategy in
    force) and APPENDED as a new calibration entry (split "val", ``name``): every earlier entry stays.
    The OOD statistics are kept as training fitted them.

    Args:
        out: None appends the entry to ``run``'s own model.json (nothing else changes); a path copies
            the run there first (without checkpoint.pt and eval/, which belong to the old operating
            point) and writes the new card in the copy, leaving ``run`` untouched. ``out`` must not exist.
    Returns:
        The new RunCard (as written).
    Raises:
        RunError: not a finished run, no splits.csv, ``out`` exists. DataError: no readable val image.

    A k-fold ensemble (``training.folds`` on the card) is re-calibrated on RUN/oof.csv instead: the
    out-of-fold probabilities its threshold was first chosen on (``oof_calibration``).
    """
    from lungxray.rundir import load_run

    src = Path(run)
    loaded = load_run(src)
    card = loaded.card
    strategy = strategy or card.threshold_strategy
    target = Path(out) if out is not None else src
    if out is not None and target.exists():
        raise RunError(f"{target} already exists; calibrate_run writes a NEW run directory there.")
    if card.training.folds:  # a k-fold ensemble: its val is the out-of-fold table, no images are read
        fitted = Calibrated(oof_calibration(src, card, strategy, name))
        new = card.with_calibration(fitted.calibration)
        if out is not None:
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("checkpoint.pt", "eval"))
        new.write(target)
        return new
    splits = src / "splits.csv"
    if not splits.is_file():
        raise RunError(f"{src} has no splits.csv: its validation rows are unknown.")
    val = Manifest.from_splits_csv(splits, classes=list(card.classes), task=card.task).split("val")
    cached = run_images(card, src, val.paths, cache_dir=_cache_dir(src), progress=progress)
    keep = np.flatnonzero(cached.ok)
    if len(keep) == 0:
        raise DataError(f"none of the {len(val)} val images of {src} could be read; did the data move?")
    val = val.subset(keep)
    images = np.array(cached.images[keep])
    fitted = calibrate(
        loaded.model, images, val.targets, task=card.task, val_rows=np.arange(len(val)), strategy=strategy,
        in_chans=card.in_chans, name=name,
    )  # fmt: skip
    new = card.with_calibration(fitted.calibration)
    if out is not None:
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("checkpoint.pt", "eval"))
    new.write(target)
    return new


def oof_calibration(run: Path, card: RunCard, strategy: str, name: str) -> Calibration:
    """A k-fold ensemble's new operating point: ``strategy`` on RUN/oof.csv (split "oof")."""
    from lungxray.oof import OOF_FILE, read_oof

    path = Path(run) / OOF_FILE
    if not path.is_file():
        raise RunError(f"{run} is a k-fold ensemble without {OOF_FILE}: its out-of-fold rows are unknown.")
    table = read_oof(path, card.classes, card.task)
    threshold, thresholds = choose_thresholds(card.task, table["y"], table["prob"], strategy)
    return Calibration(strategy=strategy, split="oof", threshold=threshold, thresholds=thresholds,
                       n=len(table["y"]), name=name, created=_now())  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

"""k-fold ensembles (``train.folds: K`` >= 2): K members, a threshold from out-of-fold predictions.

The train and val rows are pooled (the test split never takes part) and cut into K patient-grouped,
label-stratified folds (``data.splits.assign_folds``). Member j trains on the other K - 1 folds with
fold j as its validation split (checkpoint choice and early stopping on fold j), in its own run
directory ``RUN/folds/fold-j`` (config.yaml, splits.csv, history.csv, best.safetensors,
checkpoint.pt), seeded ``train.seed + j``. Its best weights then predict fold j: every non-test image
gets exactly one out-of-fold (OOF) probability, from the member that never trained on it.

At the end (``lungxray.calibrate.calibrate_oof``): the threshold is chosen by ``eval.threshold`` on
the pooled OOF probabilities (K times more images than a validation split), a temperature is fitted
on the OOF logits (reported, not applied), and the OOD statistics come from the ensemble's features
(Gaussian on folds 0..K-2, threshold on fold K-1). ``RUN/model.safetensors`` holds the members as one
``models.ensemble.Ensemble`` (architecture ``"ensemble"``), ``RUN/oof.csv`` the OOF table and the
card's ``training.folds`` the OOF AUC with its patient-bootstrap CI and a row per fold.

``--resume`` restarts at the first unfinished fold: a finished fold has ``fold.json`` (written last),
an interrupted one continues from its checkpoint.pt exactly as a single run does.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from lungxray.config import Config, apply_overrides, save_config
from lungxray.data.manifest import Manifest
from lungxray.data.splits import assign_folds
from lungxray.errors import RunError
from lungxray.inference import resolve_device, train_fast_paths
from lungxray.io import atomic_write_text
from lungxray.models.registry import model_spec
from lungxray.models.tta import unwrap_tta, with_tta
from lungxray.oof import OOF_FILE, write_oof
from lungxray.rundir import save_weights
from lungxray.training.callbacks import best_model, standard_callbacks
from lungxray.training.data import PreparedData
from lungxray.training.loop import Trainer
from lungxray.training.state import TrainResult

FOLDS_DIR = "folds"
FOLD_DONE = "fold.json"  # a finished member: its summary and out-of-fold probabilities


def pool_train_val(m: Manifest) -> Manifest:
    """The manifest with every val row moved to train (a k-fold run has no fixed validation split)."""
    return m.with_splits(["train" if s == "val" else s for s in m.splits])


def member_manifest(m: Manifest, folds: np.ndarray, j: int) -> Manifest:
    """Member ``j``'s splits: fold j -> val, the other folds -> train, every other row as it was (test)."""
    splits = np.where(folds == j, "val", np.where(folds >= 0, "train", np.asarray(m.splits, dtype=object)))
    return m.with_splits(splits.tolist())


def member_config(cfg: Config, j: int) -> Config:
    """Member ``j``'s recipe: ``cfg`` writing to RUN/folds/fold-j, seed + j, one model (folds 0)."""
    return apply_overrides(
        cfg,
        {
            "out": str(cfg.run_dir / FOLDS_DIR / f"fold-{j}"),
            "name": f"{cfg.name}-fold{j}",
            "train.folds": 0,
            "train.seed": cfg.train.seed + j,
        },
    )


def _train_member(
    cfg: Config, data: PreparedData, folds: np.ndarray, j: int, *, resume: bool, progress: bool,
    console: Console,
) -> tuple[dict[str, Any], np.ndarray]:  # fmt: skip
    """Train (or resume, or reuse a finished) member j; (its summary, OOF probabilities (n_j, K))."""
    mcfg = member_config(cfg, j)
    fold_dir = mcfg.run_dir
    done = fold_dir / FOLD_DONE
    if resume and done.is_file():
        record = json.loads(done.read_text())
        console.print(f"fold {j + 1}/{cfg.train.folds}: finished earlier, reused")
        return record["summary"], np.asarray(record["oof"], dtype=np.float32)
    mm = member_manifest(data.manifest, folds, j)
    again = resume and (fold_dir / "checkpoint.pt").is_file()
    if again:
        _check_member_splits(fold_dir, mm)
    console.print(f"fold {j + 1}/{cfg.train.folds}: {len(mm.split('train'))} train, {len(mm.split('val'))} val")
    callbacks = standard_callbacks(mcfg, progress=progress, calibrate=False)
    trainer = Trainer(mcfg, replace(data, manifest=mm), callbacks=callbacks, console=console, progress=progress)
    result = trainer.fit(resume=again)
    model = with_tta(best_model(trainer), cfg.eval.tta)
    prob = trainer.predict(model, trainer.val_idx)[0]
    summary = {
        "fold": j, "n_train": len(trainer.train_idx), "n_val": len(trainer.val_idx),
        "best_epoch": result.best_epoch, f"best_val_{cfg.train.monitor}": result.best_score,
        "epochs_run": result.epochs_run, "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_s, 1),
    }  # fmt: skip
    record = {"summary": summary, "oof": prob.tolist()}
    atomic_write_text(done, json.dumps(record) + "\n")
    return summary, prob


def _check_member_splits(fold_dir: Path, mm: Manifest) -> None:
    """RunError when an interrupted member's splits.csv is not the fold this run now assigns it."""
    saved = fold_dir / "splits.csv"
    if saved.is_file():
        old = Manifest.from_splits_csv(saved, classes=list(mm.classes), task=mm.task)
        if (old.paths, old.splits) != (mm.paths, mm.splits):
            raise RunError(f"cannot resume {fold_dir}: its splits.csv is not the fold this run assigns it.")


def load_members(cfg: Config, k: int, *, in_chans: int, num_classes: int, device: torch.device):
    """The K members' best weights (RUN/folds/fold-j/best.safetensors) as one ``Ensemble`` on ``device``."""
    from safetensors.torch import load_file

    from lungxray.models.factory import create_model

    ens = create_model(
        "ensemble", in_chans=in_chans, num_classes=num_classes, img_size=cfg.data.size,
        member=cfg.model.name, member_kwargs=dict(cfg.model.kwargs), n=k,
    )  # fmt: skip
    for j, member in enumerate(ens.members):
        best = cfg.run_dir / FOLDS_DIR / f"fold-{j}" / "best.safetensors"
        if not best.is_file():
            raise RunError(f"{best} is missing: fold {j} produced no finite validation score.")
        member.load_state_dict(load_file(str(best)))
    return ens.to(device).eval()


def train_kfold(
    cfg: Config, data: PreparedData, *, resume: bool = False, progress: bool = True,
    console: Console | None = None,
) -> TrainResult:  # fmt: skip
    """Train the K members of ``cfg`` (``train.folds``) on ``data`` and write the ensemble run.

    ``data.manifest`` holds train (train + val pooled, see ``pool_train_val``) and test rows. Writes
    RUN/config.yaml, splits.csv, folds/fold-j/..., oof.csv, model.safetensors and model.json. Returns
    a TrainResult whose ``best_score`` is the OOF AUC and ``history`` the members' epochs (with
    ``fold``). Raises RunError under torchrun (k-fold runs in one process).
    """
    from lungxray.calibrate import calibrate_oof, oof_metrics, training_card

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError("train.folds runs in one process; train it without --nproc / torchrun.")
    console = console or Console(quiet=not progress)
    k, run, m = int(cfg.train.folds), cfg.run_dir, data.manifest
    folds = assign_folds(m, k, cfg.train.seed)
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(cfg, run / "config.yaml")
        m.to_csv(run / "splits.csv")
    n_out = 1 if m.task == "binary" else len(m.classes)
    oof = np.full((len(m), n_out), np.nan, np.float32)
    per_fold = []
    for j in range(k):
        summary, prob = _train_member(cfg, data, folds, j, resume=resume, progress=progress, console=console)
        oof[folds == j] = prob
        per_fold.append(summary)
    write_oof(run / OOF_FILE, m, folds, oof)

    device = resolve_device(cfg.train.device)
    in_chans = model_spec(cfg.model.name).default_in_chans
    amp, channels_last = train_fast_paths(cfg.train, device)
    model = with_tta(load_members(cfg, k, in_chans=in_chans, num_classes=n_out, device=device), cfg.eval.tta)
    fitted = calibrate_oof(
        model, data.images, m.targets, folds, oof, task=m.task, strategy=cfg.eval.threshold,
        seed=cfg.train.seed, device=device, in_chans=in_chans, amp=amp,
        channels_last=channels_last,
    )  # fmt: skip
    save_weights(run / "model.safetensors", unwrap_tta(model).state_dict(), fitted.ood_arrays)
    pool = folds >= 0
    metrics = oof_metrics(
        m.task, m.targets[pool], oof[pool], np.asarray(m.patients, dtype=object)[pool],
        n=cfg.eval.bootstrap, ci=cfg.eval.ci, seed=cfg.train.seed,
    )  # fmt: skip
    cal = fitted.calibration
    seconds = float(sum(f["seconds"] for f in per_fold))
    result = TrainResult(
        run, best_epoch=0, best_score=metrics["oof_auc"], epochs_run=int(sum(f["epochs_run"] for f in per_fold)),
        seconds=seconds, images_per_s=float(np.mean([f["images_per_s"] for f in per_fold])),
        threshold=cal.threshold if cal.threshold is not None else _as_list(cal.thresholds), history=[],
    )  # fmt: skip
    card = training_card(
        cfg, m, fitted, in_chans=in_chans, unreadable=len(data.unreadable), copies=len(data.copies),
        result=result, device=str(device),
        parameters=int(sum(p.numel() for p in model.parameters())),
        ensemble={"k": k, **metrics, "temperature": cal.temperature, "per_fold": per_fold},
    )  # fmt: skip
    card.write(run)
    console.print(
        f"k-fold ensemble of {k}: OOF AUC {metrics['oof_auc']:.4f} "
        f"(CI {metrics['oof_auc_ci'][0]:.4f}-{metrics['oof_auc_ci'][1]:.4f}, {metrics['oof_n']} images)"
    )
    return result


def _as_list(values) -> list[float] | None:
    return None if values is None else list(values)

"""Train a model and write the run directory (config.yaml, model.safetensors, model.json, splits.csv, history.csv).

``train(cfg)`` = ``prepare_data`` (manifest -> patient-grouped splits -> uint8 cache) + ``Trainer.fit``.
The best checkpoint, the operating threshold and the OOD statistics are all chosen on the VALIDATION
split; the test split is never read here beyond being recorded in splits.csv.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lungxray.config import Config, save_config
from lungxray.data.augment import Augment
from lungxray.data.cache import cache_images
from lungxray.data.manifest import Manifest
from lungxray.data.readers import load_manifest
from lungxray.data.splits import assign_splits
from lungxray.errors import DataError, RunError
from lungxray.evaluation.metrics import choose_threshold, validation_scores
from lungxray.inference import (
    DEFAULT_NORMALIZATION,
    fast_paths,
    predict_batches,
    resolve_device,
    to_input,
)
from lungxray.models.factory import create_model
from lungxray.models.parts import freeze_backbone
from lungxray.models.registry import model_spec
from lungxray.ood import fit_gaussian, fit_threshold, mahalanobis
from lungxray.runcard import Calibration, OODSpec, Preprocessing, RunCard, TrainingSummary
from lungxray.rundir import save_weights, write_history

HISTORY_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_accuracy",
    "val_f1",
    "seconds",
    "images_per_s",
]


# ----------------------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    """A manifest with every split assigned and its images decoded: rows of failed files removed."""

    manifest: Manifest
    images: np.ndarray  # (N, S, S) uint8, aligned with manifest
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason (reported, skipped)
    cache_stats: dict[str, float] = field(default_factory=dict)


def _subsample(m: Manifest, max_images: int, seed: int) -> Manifest:
    """Seeded subsample of ``max_images`` rows, stratified by label and split (for smoke runs)."""
    if len(m) <= max_images:
        return m
    rng = np.random.default_rng(seed)
    strata = np.array([f"{s}|{lab}" for s, lab in zip(m.splits, m.label_strings(), strict=True)])
    keep: list[int] = []
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        k = max(1, round(len(rows) * max_images / len(m)))
        keep.extend(rng.choice(rows, size=min(k, len(rows)), replace=False).tolist())
    return m.subset(np.sort(np.array(keep)))


def prepare_data(cfg: Config, *, progress: bool = True, console: Console | None = None) -> PreparedData:
    """Manifest from ``cfg.data`` -> splits by patient -> cached (N, S, S) uint8 images."""
    d = cfg.data
    m = load_manifest(d)
    if d.max_images:
        # subsample before splitting so val/test fractions stay as asked
        m = _subsample(m, d.max_images, cfg.train.seed)
    m = assign_splits(m, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)
    cached = cache_images(m.paths, d.size, resize=d.resize, cache_dir=d.cache_dir, progress=progress)
    if not cached.ok.all():
        if console:
            console.print(f"[yellow]{int((~cached.ok).sum())} unreadable image(s) skipped:[/]")
            for path, reason in list(cached.errors.items())[:10]:
                console.print(f"  {path}: {reason}")
        keep = np.flatnonzero(cached.ok)
        m = m.subset(keep)
        images = np.asarray(cached.images)[keep]
    else:
        images = cached.images
    for split in ("train", "val"):
        if len(m.split(split)) == 0:
            raise DataError(f"the {split} split of {d.path} is empty; add images or lower data.val_fraction.")
    stats = {
        "seconds": cached.build_seconds,
        "built": cached.built,
        "reused": cached.reused,
        "images_per_s": cached.images_per_s,
    }
    return PreparedData(manifest=m, images=images, unreadable=dict(cached.errors), cache_stats=stats)


# ----------------------------------------------------------------------------------------- pieces
def lr_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """LR factor at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_optimizer(
    name: str, params, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def class_weights(m: Manifest) -> torch.Tensor:
    """Loss weights against imbalance: binary -> pos_weight (1,); multiclass -> (C,); multilabel -> pos_weight (C,)."""
    y = m.labels
    if m.task == "multiclass":
        counts = np.nansum(y, axis=0)
        w = len(y) / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32)
    pos = np.nansum(y, axis=0)
    known = np.sum(~np.isnan(y), axis=0)
    neg = known - pos
    w = np.clip(neg / np.maximum(pos, 1), 0.05, 50.0)
    return torch.tensor(w[1:] if m.task == "binary" else w, dtype=torch.float32)


def loss_fn(
    task: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float
) -> torch.Tensor:
    """Mean loss. target: binary (N,) 0/1; multiclass (N,) int; multilabel (N, C) with NaN = unknown (masked)."""
    logits = logits.float()
    if task == "multiclass":
        return F.cross_entropy(logits, target.long(), weight=weight, label_smoothing=smoothing)
    if task == "binary":
        logits, target = logits.reshape(-1), target.float().reshape(-1)
    mask = ~torch.isnan(target)
    t = torch.nan_to_num(target, nan=0.0)
    if smoothing:
        t = t * (1 - smoothing) + 0.5 * smoothing
    loss = F.binary_cross_entropy_with_logits(logits, t, pos_weight=weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


class EMA:
    """Exponential moving average of a model's parameters and buffers (decay per step)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


# ----------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    images_per_s: float
    threshold: float | list[float] | None
    history: list[dict[str, Any]]


class Trainer:
    """The training loop over a PreparedData; writes and resumes a run directory.

    ``Trainer(cfg, data).fit()`` trains ``cfg.train.epochs`` epochs, keeps the best epoch by the
    validation monitor, then writes model.safetensors / model.json with the threshold and OOD
    statistics chosen on validation. ``fit(resume=True)`` continues from ``checkpoint.pt`` exactly.
    """

    def __init__(
        self, cfg: Config, data: PreparedData, *, console: Console | None = None, progress: bool = True
    ):
        self.cfg = cfg
        self.data = data
        self.m = data.manifest
        self.console = console or Console(quiet=not progress)
        self.progress = progress
        self.run_dir = cfg.run_dir
        self.device = resolve_device(cfg.train.device)
        self.task = self.m.task
        self.num_outputs = 1 if self.task == "binary" else len(self.m.classes)
        self.train_idx = np.flatnonzero(np.array(self.m.splits) == "train")
        self.val_idx = np.flatnonzero(np.array(self.m.splits) == "val")
        tgt = self.m.targets
        self.targets = torch.as_tensor(np.asarray(tgt, dtype=np.float32))
        self.val_y = np.asarray(tgt)[self.val_idx]
        if self.task != "multilabel" and len(np.unique(np.asarray(tgt)[self.train_idx])) < 2:
            raise DataError("the train split holds a single class; a classifier needs at least two.")

    # -- setup --------------------------------------------------------------------------------
    def _build(self) -> None:
        c = self.cfg
        self.spec = model_spec(c.model.name)
        self.in_chans = self.spec.default_in_chans
        self.model = create_model(
            c.model.name,
            in_chans=self.in_chans,
            num_classes=self.num_outputs,
            weights=c.model.weights,
            img_size=c.data.size,
            **c.model.kwargs,
        )
        self.model.to(self.device)
        if c.train.channels_last and fast_paths(self.device):
            self.model.to(memory_format=torch.channels_last)
        self.weight = (
            class_weights(self.m.subset(self.train_idx)).to(self.device)
            if c.train.balance == "weights"
            else None
        )
        self.steps_per_epoch = math.ceil(len(self.train_idx) / c.train.batch_size)
        self.ema = EMA(self.model, c.train.ema) if c.train.ema else None
        self.augment = Augment(c.augment)
        self._set_phase(0)

    def _frozen_at(self, epoch: int) -> bool:
        t = self.cfg.model.transfer
        return t == "freeze" or (t == "freeze-then-finetune" and epoch < self.cfg.model.freeze_epochs)

    def _set_phase(self, epoch: int) -> None:
        """(Re)build optimizer and scheduler for the phase (frozen / all layers) that ``epoch`` is in."""
        c = self.cfg.train
        frozen = self._frozen_at(epoch)
        params = freeze_backbone(self.model, frozen)
        staged = self.cfg.model.transfer == "freeze-then-finetune"
        lr = c.lr * (self.cfg.model.finetune_lr_scale if staged and not frozen else 1.0)
        start = self.cfg.model.freeze_epochs if staged and not frozen else 0
        end = self.cfg.model.freeze_epochs if staged and frozen else c.epochs
        total = max(1, (end - start) * self.steps_per_epoch)
        self.frozen = frozen
        self.optimizer = make_optimizer(c.optimizer, params, lr, c.weight_decay, c.momentum)
        warmup = int(round(c.warmup_epochs * self.steps_per_epoch))
        # OneCycleLR needs > 1 step in each of its two phases (it divides by the phase length);
        # a phase shorter than 4 steps (a smoke run) uses warm-up + cosine instead.
        if c.schedule == "onecycle" and total >= 4:
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=lr,
                total_steps=total,
                pct_start=max(1.5 / total, min(0.5, max(0.01, warmup / total))),
                cycle_momentum=c.optimizer in ("sgd", "rmsprop"),
            )
        else:
            schedule = "cosine" if c.schedule == "onecycle" else c.schedule
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: lr_multiplier(s, total, warmup, schedule)
            )

    # -- batches ------------------------------------------------------------------------------
    def _epoch_order(self, g: torch.Generator) -> np.ndarray:
        """Train row indices for one epoch: a permutation, or class-balanced sampling with replacement."""
        n = len(self.train_idx)
        if self.cfg.train.balance == "sampler" and self.task != "multilabel":
            y = np.asarray(self.m.targets)[self.train_idx].astype(int)
            counts = np.bincount(y)
            w = torch.as_tensor(1.0 / counts[y], dtype=torch.float64)
            pick = torch.multinomial(w, n, replacement=True, generator=g).numpy()
        else:
            pick = torch.randperm(n, generator=g).numpy()
        return self.train_idx[pick]

    def _batch(self, rows: np.ndarray, g: torch.Generator) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.data.images[np.sort(rows)]))
        order = np.argsort(np.argsort(rows))  # undo the sort done for memmap locality
        return to_input(
            x[torch.as_tensor(order)],
            DEFAULT_NORMALIZATION,
            self.device,
            self.in_chans,
            self.cfg.train.channels_last,
            augment=lambda batch: self.augment(batch, g),
        )

    # -- loop ---------------------------------------------------------------------------------
    def _eval_model(self) -> torch.nn.Module:
        if self.ema is None:
            return self.model
        # a copy, not create_model: a fresh random init would draw from the global RNG (which dropout
        # uses) at a point that differs between an uninterrupted and a resumed run
        model = self._ema_model = getattr(self, "_ema_model", None) or copy.deepcopy(self.model)
        model.load_state_dict(self.ema.shadow)
        return model

    def _predict(self, model: torch.nn.Module, rows: np.ndarray, *, features: bool = False):
        """Probabilities (and penultimate features) of the given rows, through the shared inference path."""
        return predict_batches(
            model,
            self.data.images[rows],
            task=self.task,
            normalization=DEFAULT_NORMALIZATION,
            device=self.device,
            in_chans=self.in_chans,
            features=features,
            amp=self._amp,
            channels_last=self.cfg.train.channels_last,
        )

    def _validate(self) -> tuple[dict[str, float], np.ndarray]:
        model = self._eval_model()
        prob, _ = self._predict(model, self.val_idx)
        with torch.no_grad():
            logits = torch.as_tensor(_logit(prob, self.task))
            vloss = loss_fn(self.task, logits, self.targets[self.val_idx], None, 0.0).item()
        scores = validation_scores(self.task, self.val_y, prob)
        scores["loss"] = vloss
        return scores, prob

    @property
    def _amp(self) -> bool:
        return self.cfg.train.amp and fast_paths(self.device)

    def _better(self, score: float, best: float) -> bool:
        if math.isnan(score):
            return False
        if self.cfg.train.monitor == "loss":
            return math.isnan(best) or score < best
        return math.isnan(best) or score > best

    def fit(
        self,
        *,
        resume: bool = False,
        stop_after: int | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> TrainResult:
        """Train; write the run directory; return a summary.

        ``stop_after`` ends after that many epochs in this call (as an interruption would; resume with
        ``resume=True``). ``on_epoch(epoch, val_scores)`` is called after each validation (the tuner
        uses it to prune; it may raise to stop training).
        """
        c = self.cfg
        run = self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        ckpt_path = run / "checkpoint.pt"
        if resume and not ckpt_path.is_file():
            raise RunError(f"cannot resume: {ckpt_path} does not exist.")
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = c.train.deterministic
            torch.backends.cudnn.benchmark = not c.train.deterministic
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _tracking(c) as tracker:
            torch.manual_seed(c.train.seed)
            self._build()
            g = torch.Generator().manual_seed(c.train.seed + 1)
            state = {
                "epoch": 0,
                "best_score": float("nan"),
                "best_epoch": -1,
                "history": [],
                "seconds": 0.0,
                "bad_epochs": 0,
            }
            if resume:
                state = self._load_checkpoint(ckpt_path, g)
            else:
                save_config(c, run / "config.yaml")
                self.m.to_csv(run / "splits.csv")
            done_this_call = 0
            for epoch in range(state["epoch"], c.train.epochs):
                if self._frozen_at(epoch) != self.frozen:
                    self._set_phase(epoch)
                row = self._train_epoch(epoch, g)
                scores, _ = self._validate()
                row.update(
                    {
                        "val_loss": scores["loss"],
                        "val_auc": scores["auc"],
                        "val_accuracy": scores["accuracy"],
                        "val_f1": scores["f1"],
                    }
                )
                state["history"].append(row)
                state["seconds"] += row["seconds"]
                monitor = scores[c.train.monitor]
                if self._better(monitor, state["best_score"]):
                    state.update(best_score=monitor, best_epoch=epoch, bad_epochs=0)
                    save_weights(run / "best.safetensors", self._eval_model().state_dict())
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch + 1
                write_history(self.run_dir, state["history"], HISTORY_FIELDS)
                self._save_checkpoint(ckpt_path, state, g)
                if tracker:
                    tracker.log_epoch(row)
                if on_epoch:
                    on_epoch(epoch, scores)
                self.console.print(
                    f"epoch {epoch + 1}/{c.train.epochs}  loss {row['train_loss']:.4f}  "
                    f"val_loss {scores['loss']:.4f}  val_auc {scores['auc']:.4f}  "
                    f"{row['images_per_s']:.0f} img/s  {row['seconds']:.0f}s"
                )
                done_this_call += 1  # noqa: SIM113
                if c.train.early_stopping and state["bad_epochs"] >= c.train.early_stopping:
                    self.console.print(
                        f"early stopping: no val {c.train.monitor} gain in {c.train.early_stopping} epochs"
                    )
                    break
                if stop_after is not None and done_this_call >= stop_after:
                    return self._result(state, None)
            result = self._finish(state)
            if tracker:
                tracker.finish(result)
            return result

    def _train_epoch(self, epoch: int, g: torch.Generator) -> dict[str, Any]:
        c = self.cfg.train
        self.model.train()
        if self.frozen:  # frozen BatchNorm statistics stay fixed
            for mod in self.model.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in mod.parameters()
                ):
                    mod.eval()
        order = self._epoch_order(g)
        t0, total_loss, seen = time.perf_counter(), 0.0, 0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp)
        with self._progress_bar() as bar:
            task_id = bar.add_task(f"epoch {epoch + 1}", total=len(order), loss=float("nan"), rate=0.0)
            for start in range(0, len(order), c.batch_size):
                rows = order[start : start + c.batch_size]
                x = self._batch(rows, g)
                y = self.targets[rows].to(self.device)
                with autocast:
                    logits = self.model(x)
                loss = loss_fn(self.task, logits, y, self.weight, c.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                if self.ema:
                    self.ema.update(self.model)
                total_loss += loss.item() * len(rows)
                seen += len(rows)
                rate = seen / max(1e-9, time.perf_counter() - t0)
                bar.update(task_id, advance=len(rows), loss=total_loss / seen, rate=rate)
        seconds = time.perf_counter() - t0
        return {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": total_loss / seen,
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }

    def _progress_bar(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.0f} img/s"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.progress,
        )

    # -- persistence --------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path, state: dict, g: torch.Generator) -> None:
        """Everything needed to resume exactly, written atomically (our own file: plain tensors and numbers)."""
        blob = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.shadow if self.ema else None,
            "generator": g.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "frozen": self.frozen,
            "state": {k: v for k, v in state.items() if k != "history"},
            "history": [[r.get(f) for f in HISTORY_FIELDS] for r in state["history"]],
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)

    def _load_checkpoint(self, path: Path, g: torch.Generator) -> dict:
        try:
            # on the CPU: RNG states must stay CPU ByteTensors; load_state_dict moves the rest to the model
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-facing RunError
            raise RunError(f"cannot resume from {path}: {exc}") from None
        epoch = int(blob["state"]["epoch"])
        # the saved optimizer belongs to the phase of the last finished epoch; if the next epoch starts
        # a new phase, the loop then builds that phase's fresh optimizer, as an uninterrupted run does
        last = max(0, epoch - 1)
        if self._frozen_at(last) != self.frozen:
            self._set_phase(last)
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.ema and blob["ema"] is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in blob["ema"].items()}
        g.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        if blob["cuda_rng"] is not None:
            torch.cuda.set_rng_state(blob["cuda_rng"], self.device)
        state = dict(blob["state"])
        state["history"] = [dict(zip(HISTORY_FIELDS, r, strict=True)) for r in blob["history"]]
        return state

    def _result(self, state: dict, threshold) -> TrainResult:
        hist = state["history"]
        ips = float(np.mean([r["images_per_s"] for r in hist])) if hist else 0.0
        return TrainResult(
            self.run_dir,
            state["best_epoch"] + 1,
            state["best_score"],
            len(hist),
            state["seconds"],
            ips,
            threshold,
            hist,
        )

    def _finish(self, state: dict) -> TrainResult:
        """Best weights -> validation threshold(s) + OOD statistics -> model.safetensors + model.json."""
        from safetensors.torch import load_file

        c, run = self.cfg, self.run_dir
        best = run / "best.safetensors"
        if not best.is_file():
            raise RunError("no epoch produced a finite validation score; check the data and learning rate.")
        model = self._eval_model()
        model.load_state_dict(load_file(str(best), device=str(self.device)))
        val_prob, val_feat = self._predict(model, self.val_idx, features=True)
        threshold = thresholds = None
        if self.task == "binary":
            threshold = float(choose_threshold(self.val_y, val_prob[:, 0], c.eval.threshold))
        elif self.task == "multilabel":
            thresholds = []
            for j in range(val_prob.shape[1]):
                known = ~np.isnan(self.val_y[:, j])
                yj = self.val_y[known, j]
                thresholds.append(
                    float(choose_threshold(yj, val_prob[known, j], c.eval.threshold))
                    if len(np.unique(yj)) == 2
                    else 0.5
                )
        rng = np.random.default_rng(c.train.seed)
        fit_rows = (
            self.train_idx
            if len(self.train_idx) <= 5000
            else np.sort(rng.choice(self.train_idx, 5000, False))
        )
        _, train_feat = self._predict(model, fit_rows, features=True)
        mean, precision = fit_gaussian(train_feat)
        ood_threshold = fit_threshold(mahalanobis(val_feat, mean, precision))
        save_weights(run / "model.safetensors", model.state_dict(), {"mean": mean, "precision": precision})
        result = self._result(state, threshold if threshold is not None else thresholds)
        card = RunCard(
            name=c.name,
            architecture=c.model.name,
            model_kwargs=dict(c.model.kwargs),
            task=self.task,
            classes=tuple(self.m.classes),
            preprocessing=Preprocessing(
                input_size=c.data.size,
                resize=c.data.resize,
                in_chans=self.in_chans,
                mean=DEFAULT_NORMALIZATION["mean"],
                std=DEFAULT_NORMALIZATION["std"],
            ),
            ood=OODSpec(
                threshold=ood_threshold,
                dim=int(mean.shape[0]),
                quantile=0.99,
                fitted_on=f"{len(fit_rows)} train images; threshold on val",
            ),
            training=TrainingSummary(
                data=str(c.data.path),
                csv=c.data.csv,
                counts={s: self.m.class_counts(s) for s in ("train", "val", "test")},
                unreadable=len(self.data.unreadable),
                epochs_run=result.epochs_run,
                best_epoch=result.best_epoch,
                best_val={c.train.monitor: result.best_score},
                seconds=round(result.seconds, 2),
                images_per_s=round(result.images_per_s, 1),
                device=str(self.device),
                parameters=int(sum(p.numel() for p in model.parameters())),
            ),
            calibrations=(
                Calibration(
                    strategy=c.eval.threshold,
                    split="val",
                    threshold=threshold,
                    thresholds=None if thresholds is None else tuple(thresholds),
                    n=len(self.val_idx),
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            ),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        card.write(run)
        self._learning_curve_figure(state["history"])
        return result

    def _learning_curve_figure(self, history: list[dict]) -> None:
        from lungxray.evaluation.plots import learning_curves, save_figure

        save_figure(learning_curves(history), self.run_dir / "figures" / "learning_curves.png")


def _logit(prob: np.ndarray, task: str) -> np.ndarray:
    """Invert the output activation (for a validation loss from stored probabilities)."""
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) if task == "multiclass" else np.log(p / (1 - p))


class _Tracker:
    """Optional MLflow logging (``train.track: mlflow``): params, per-epoch metrics, the run directory.

    The store is ``$MLFLOW_TRACKING_URI`` if set, else ``./mlflow.db`` (SQLite) with artifacts under
    ``./mlruns``: MLflow 3 refuses a bare ``./mlruns`` file store unless told otherwise.
    """

    def __init__(self, cfg: Config):
        from lungxray.errors import check_option

        check_option(cfg.train.track, ["mlflow"], "train.track")
        try:
            import mlflow
        except ImportError:
            raise RunError('experiment tracking needs MLflow: pip install "lungxray[track]"') from None
        from lungxray.config import to_dict

        self.mlflow = mlflow
        for chatty in ("alembic", "mlflow.store.db.utils"):  # schema-migration lines on a new store
            logging.getLogger(chatty).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(
            os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
        )
        mlflow.start_run(run_name=cfg.name)
        flat = {}
        for section, values in to_dict(cfg).items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items()})
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})
        self.run_dir = cfg.run_dir
        self.finished = False

    def log_epoch(self, row: dict) -> None:
        self.mlflow.log_metrics(
            {
                k: float(v)
                for k, v in row.items()
                if k != "epoch" and v is not None and not (isinstance(v, float) and math.isnan(v))
            },
            step=int(row["epoch"]),
        )

    def finish(self, result: TrainResult) -> None:
        self.mlflow.log_artifacts(str(self.run_dir), artifact_path="run")
        self.mlflow.end_run()
        self.finished = True

    def __enter__(self) -> _Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """An error marks the MLflow run FAILED, an interruption (``stop_after``) KILLED."""
        if not self.finished:
            self.mlflow.end_run(status="FAILED" if exc_type else "KILLED")


def _tracking(cfg: Config) -> contextlib.AbstractContextManager[_Tracker | None]:
    """The experiment tracker a config asks for, as a context manager (None when tracking is off)."""
    return _Tracker(cfg) if cfg.train.track else contextlib.nullcontext()


def train(
    cfg: Config, *, resume: bool = False, progress: bool = True, console: Console | None = None
) -> TrainResult:
    """Prepare the data of ``cfg`` and train; the library twin of ``lungxray train``."""
    console = console or Console(quiet=not progress)
    cfg.validate()
    if resume and (cfg.run_dir / "config.yaml").is_file():
        from lungxray.config import load_config

        cfg = load_config(cfg.run_dir / "config.yaml")
    elif (cfg.run_dir / "model.json").exists() and not resume:
        raise RunError(f"{cfg.run_dir} already holds a finished run; choose another --out or delete it.")
    data = prepare_data(cfg, progress=progress, console=console)
    m = data.manifest
    console.print(
        f"data: {len(m)} images, task {m.task}, classes {list(m.classes)}; "
        + ", ".join(f"{s} {len(m.split(s))}" for s in ("train", "val", "test"))
    )
    return Trainer(cfg, data, console=console, progress=progress).fit(resume=resume)

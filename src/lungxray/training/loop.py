"""The training loop: ``Trainer(cfg, data, callbacks=...).fit()``.

The loop builds the model, optimizer and schedule, trains an epoch, validates, records the epoch in a
``TrainState`` and hands it to the callbacks (checkpoints, history, early stopping, tracking,
progress, calibration: see ``callbacks.py``). Everything it chooses is chosen on the VALIDATION split.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from lungxray.config import Config, save_config
from lungxray.data.augment import Augment
from lungxray.data.rows import take_rows
from lungxray.errors import DataError, RunError
from lungxray.evaluation.metrics import validation_scores
from lungxray.inference import (
    DEFAULT_NORMALIZATION,
    predict_batches,
    resolve_device,
    to_input,
    train_fast_paths,
)
from lungxray.models.factory import create_model
from lungxray.models.registry import model_spec
from lungxray.training import distributed
from lungxray.training.callbacks import Callback, OnEpoch, load_checkpoint, standard_callbacks
from lungxray.training.data import PreparedData, epoch_order
from lungxray.training.losses import class_weights, logit, loss_fn, mix_batch, mixup_lambda, mixup_loss
from lungxray.training.optim import EMA, frozen_at, phase_optimizer
from lungxray.training.state import TrainResult, TrainState


class Trainer:
    """Trains ``cfg.model`` on a PreparedData for ``cfg.train.epochs`` epochs into ``cfg.run_dir``.

    ``callbacks`` default to ``standard_callbacks(cfg)``: checkpoints, history, early stopping,
    tracking, progress, then calibration (threshold + OOD on validation, model.json) and the learning
    curves; a tuning trial passes a list without the last two. ``fit(resume=True)`` continues from
    ``checkpoint.pt`` exactly.

    Example::

        trainer = Trainer(cfg, prepare_data(cfg))
        result = trainer.fit()            # TrainResult: best_epoch, best_score, threshold, history
    """

    def __init__(self, cfg: Config, data: PreparedData, *, callbacks: Sequence[Callback] | None = None,
                 console: Console | None = None, progress: bool = True):  # fmt: skip
        self.cfg, self.data, self.m, self.progress = cfg, data, data.manifest, progress
        self.console = console or Console(quiet=not progress)
        self.callbacks = list(callbacks) if callbacks is not None else None
        self.run_dir: Path = cfg.run_dir
        self.dist, self.device = distributed.setup(resolve_device(cfg.train.device))  # dist: None alone
        self.task = self.m.task
        self.num_outputs = 1 if self.task == "binary" else len(self.m.classes)
        self.train_idx = np.flatnonzero(np.array(self.m.splits) == "train")
        self.val_idx = np.flatnonzero(np.array(self.m.splits) == "val")
        tgt = self.m.targets
        self.targets = torch.as_tensor(np.asarray(tgt, dtype=np.float32))
        self.val_y = np.asarray(tgt)[self.val_idx]
        if self.task != "multilabel" and len(np.unique(np.asarray(tgt)[self.train_idx])) < 2:
            raise DataError("the train split holds a single class; a classifier needs at least two.")

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, stop_after: int | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:  # fmt: skip
        """Train; write the run directory through the callbacks; return a summary.

        ``stop_after`` ends after that many epochs in this call (as an interruption would: no
        ``on_fit_end``; resume with ``resume=True``). ``on_epoch(epoch, val_scores)`` is called after
        each validation (it may raise to stop training).
        """
        c, run = self.cfg, self.run_dir
        run.mkdir(parents=True, exist_ok=True)
        if resume and not (run / "checkpoint.pt").is_file():
            raise RunError(f"cannot resume: {run / 'checkpoint.pt'} does not exist.")
        callbacks = standard_callbacks(c, progress=self.progress) if self.callbacks is None else self.callbacks
        callbacks = sorted([*callbacks, *([OnEpoch(on_epoch)] if on_epoch else [])], key=lambda cb: cb.order)
        callbacks = distributed.rank_callbacks(self.dist, callbacks)  # rank 0 alone writes
        _setup_torch(c, self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        state = TrainState()
        with torch.random.fork_rng(devices=devices):
            try:
                for cb in callbacks:
                    cb.on_fit_start(self, state)
                torch.manual_seed(c.train.seed)
                self._build()
                self.generator = g = torch.Generator().manual_seed(c.train.seed + 1)
                if resume:
                    state = load_checkpoint(self, run / "checkpoint.pt")
                elif not self.dist or self.dist.is_main:
                    save_config(c, run / "config.yaml")
                    self.m.to_csv(run / "splits.csv")
                first = state.epoch
                for epoch in range(first, c.train.epochs):
                    if self._frozen_at(epoch) != self.frozen:
                        self._set_phase(epoch)
                    row = self._train_epoch(epoch, g, callbacks, state)
                    scores = self.validate()
                    row.update({f"val_{k}": scores[k] for k in ("loss", "auc", "accuracy", "f1")})
                    state.history.append(row)
                    state.seconds += row["seconds"]
                    state.update_best(scores[c.train.monitor], epoch, c.train.monitor)
                    state.epoch = epoch + 1
                    for cb in callbacks:
                        cb.on_epoch_end(self, state, scores)
                    if state.stop or (stop_after is not None and epoch + 1 - first >= stop_after):
                        break
                else:
                    state.stop = True  # every epoch ran
                if state.stop:  # early stopping or the last epoch; not an interruption (stop_after)
                    for cb in callbacks:
                        cb.on_fit_end(self, state)
            except BaseException as exc:
                for cb in callbacks:
                    cb.on_fit_exit(self, state, exc)
                raise
            for cb in callbacks:
                cb.on_fit_exit(self, state, None)
        return TrainResult.from_state(run, state)

    def _train_epoch(self, epoch: int, g: torch.Generator, callbacks, state: TrainState) -> dict[str, Any]:
        c = self.cfg.train
        self.model.train()
        if self.frozen:
            _fix_frozen_batchnorm(self.model)
        order = self._epoch_order(g)
        for cb in callbacks:
            cb.on_epoch_start(self, state, epoch, len(order))
        t0, total_loss, seen = time.perf_counter(), 0.0, 0
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)
        for start in range(0, len(order), c.batch_size):
            rows = order[start : start + c.batch_size]  # under torchrun: this rank's shard of it
            rows, scale = self.dist.batch_rows(rows) if self.dist else (rows, 1.0)
            x = self._batch(rows, g)
            y = self.targets[rows].to(self.device)
            lam = mixup_lambda(c.mixup, g) if c.mixup else None  # off: no draw at all
            if lam is not None:
                x = mix_batch(x, lam)
            with autocast:
                logits = self.ddp(x)
            if lam is None:
                loss = loss_fn(self.task, logits, y, self.weight, c.label_smoothing)
            else:
                loss = mixup_loss(self.task, logits, y, self.weight, c.label_smoothing, lam)
            raw, loss = loss.item(), (loss * scale if scale != 1.0 else loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema:
                self.ema.update(self.model)
            total_loss += raw * len(rows)
            seen += len(rows)
            for cb in callbacks:
                cb.on_batch_end(self, state, len(rows), total_loss / seen)
        seconds = time.perf_counter() - t0
        lr = self.optimizer.param_groups[0]["lr"]
        return {"epoch": epoch + 1, "lr": lr, "train_loss": total_loss / seen, "seconds": seconds,
                "images_per_s": seen / seconds}  # fmt: skip

    # -- setup --------------------------------------------------------------------------------
    def _build(self) -> None:
        """Model (drawing its initial weights from the seeded global RNG), loss weights, EMA, augment, phase 0."""
        c = self.cfg
        self.in_chans = model_spec(c.model.name).default_in_chans
        self.model = create_model(
            c.model.name, in_chans=self.in_chans, num_classes=self.num_outputs, weights=c.model.weights,
            img_size=c.data.size, **c.model.kwargs,
        )  # fmt: skip
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        train_m = self.m.subset(self.train_idx)
        self.weight = class_weights(train_m).to(self.device) if c.train.balance == "weights" else None
        self.steps_per_epoch = math.ceil(len(self.train_idx) / c.train.batch_size)
        self.ema = EMA(self.model, c.train.ema) if c.train.ema else None
        self.augment = Augment(c.augment)
        self._set_phase(0)

    def _frozen_at(self, epoch: int) -> bool:
        return frozen_at(self.cfg.model, epoch)

    def _set_phase(self, epoch: int) -> None:
        """(Re)build optimizer and scheduler for the phase (frozen / all layers) that ``epoch`` is in."""
        self.frozen = self._frozen_at(epoch)
        self.optimizer, self.scheduler = phase_optimizer(self.model, self.cfg, epoch, self.steps_per_epoch)
        self.ddp = self.dist.wrap(self.model) if self.dist else self.model  # rebuilt: frozen params change

    # -- batches ------------------------------------------------------------------------------
    def _epoch_order(self, g: torch.Generator) -> np.ndarray:
        """Train row indices for one epoch: a permutation, or class-balanced sampling with replacement."""
        return epoch_order(self.m, self.train_idx, self.cfg.train.balance, g)

    def _batch(self, rows: np.ndarray, g: torch.Generator) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.data.images[np.sort(rows)]))
        order = np.argsort(np.argsort(rows))  # undo the sort done for memmap locality
        return to_input(
            x[torch.as_tensor(order)], DEFAULT_NORMALIZATION, self.device, self.in_chans,
            self.channels_last, augment=lambda batch: self.augment(batch, g),
        )  # fmt: skip

    # -- evaluation ---------------------------------------------------------------------------
    @property
    def amp(self) -> bool:
        """bf16 autocast, where the recipe asks for it and the device takes it (``train_fast_paths``)."""
        return train_fast_paths(self.cfg.train, self.device)[0]

    @property
    def channels_last(self) -> bool:
        """Channels-last memory, where the recipe asks for it and the device takes it."""
        return train_fast_paths(self.cfg.train, self.device)[1]

    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the model, or a copy holding its EMA."""
        if self.ema is None:
            return self.model
        # a copy, not create_model: a fresh random init would draw from the global RNG (which dropout
        # uses) at a point that differs between an uninterrupted and a resumed run
        model = self._ema_model = getattr(self, "_ema_model", None) or copy.deepcopy(self.model)
        model.load_state_dict(self.ema.shadow)
        return model

    def predict(self, model: torch.nn.Module, rows: np.ndarray, *, features: bool = False):
        """Probabilities (and penultimate features) of the given rows, through the shared inference path."""
        return predict_batches(
            model, take_rows(self.data.images, rows), task=self.task, normalization=DEFAULT_NORMALIZATION,
            device=self.device, in_chans=self.in_chans, features=features, amp=self.amp,
            channels_last=self.channels_last,
        )  # fmt: skip

    def validate(self) -> dict[str, float]:
        """Validation loss / auc / accuracy / f1 of ``eval_model()``."""
        model = self.eval_model()
        predict = lambda rows: self.predict(model, rows)[0]  # noqa: E731
        prob = self.dist.gather_rows(self.val_idx, predict) if self.dist else predict(self.val_idx)  # all of val
        with torch.no_grad():
            logits = torch.as_tensor(logit(prob, self.task))
            vloss = loss_fn(self.task, logits, self.targets[self.val_idx], None, 0.0).item()
        return {**validation_scores(self.task, self.val_y, prob), "loss": vloss}


def _setup_torch(cfg: Config, device: torch.device) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = cfg.train.deterministic
        torch.backends.cudnn.benchmark = not cfg.train.deterministic


def _fix_frozen_batchnorm(model: torch.nn.Module) -> None:
    """Frozen BatchNorm layers keep their running statistics (eval mode) while the rest trains."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in mod.parameters()
        ):
            mod.eval()

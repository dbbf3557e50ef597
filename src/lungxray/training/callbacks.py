"""Callbacks of the training loop: everything it does besides training and validating.

A callback subclasses ``Callback`` and overrides some hooks; the loop calls them, in ``order``, with
the Trainer and its ``TrainState``::

    on_fit_start(trainer, state)                 before the model is built (inside the seeded RNG fork)
    on_epoch_start(trainer, state, epoch, n)     0-based epoch, n training images in it
    on_batch_end(trainer, state, n, mean_loss)   after each optimizer step
    on_epoch_end(trainer, state, scores)         after validation: state.history[-1] is the epoch's row
    on_fit_end(trainer, state)                   training finished (all epochs or early stop); not
                                                 after an interruption (``stop_after``) or an error
    on_fit_exit(trainer, state, error)           always, last; ``error`` is the exception or None

``standard_callbacks(cfg)`` is what ``lungxray train`` runs; a tuning trial runs
``standard_callbacks(cfg, calibrate=False)`` plus ``OptunaPruning``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lungxray.config import Config
from lungxray.errors import RunError
from lungxray.io import atomic_write_with
from lungxray.rundir import save_weights, write_history
from lungxray.training.state import HISTORY_FIELDS, TrainResult, TrainState

# ``trainer`` below is a lungxray.training.loop.Trainer (not imported: the loop imports this module).
TrainerLike = Any


class Callback:
    """Base class: every hook does nothing. ``order`` sorts callbacks (lower runs first)."""

    order = 50

    def on_fit_start(self, trainer: TrainerLike, state: TrainState) -> None: ...

    def on_epoch_start(self, trainer: TrainerLike, state: TrainState, epoch: int, n: int) -> None: ...

    def on_batch_end(self, trainer: TrainerLike, state: TrainState, n: int, mean_loss: float) -> None: ...

    def on_epoch_end(self, trainer: TrainerLike, state: TrainState, scores: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: TrainerLike, state: TrainState) -> None: ...

    def on_fit_exit(self, trainer: TrainerLike, state: TrainState, error: BaseException | None) -> None: ...


class History(Callback):
    """history.csv (``HISTORY_FIELDS``), rewritten after every epoch."""

    order = 10

    def on_epoch_end(self, trainer, state, scores):
        write_history(trainer.run_dir, state.history, HISTORY_FIELDS)


class Checkpoint(Callback):
    """best.safetensors when the epoch improves the monitor; checkpoint.pt (to resume exactly) every epoch."""

    order = 20

    def on_epoch_end(self, trainer, state, scores):
        if state.improved:
            save_weights(trainer.run_dir / "best.safetensors", trainer.eval_model().state_dict())
        save_checkpoint(trainer, state, trainer.run_dir / "checkpoint.pt")


def save_checkpoint(trainer: TrainerLike, state: TrainState, path: Path) -> None:
    """Everything needed to resume exactly, written atomically (our own file: plain tensors and numbers)."""
    scalars, history = state.to_checkpoint()
    cuda = trainer.device.type == "cuda"
    blob = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "ema": trainer.ema.shadow if trainer.ema else None,
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(trainer.device) if cuda else None,
        "frozen": trainer.frozen,
        "state": scalars,
        "history": history,
    }
    # unique temp + fsync + rename: a crash mid-save leaves the previous checkpoint.pt whole
    atomic_write_with(path, lambda tmp: torch.save(blob, tmp))


def load_checkpoint(trainer: TrainerLike, path: Path) -> TrainState:
    """Restore model, optimizer, schedule, EMA and every RNG of a built ``trainer`` from ``path``."""
    try:
        # on the CPU: RNG states must stay CPU ByteTensors; load_state_dict moves the rest to the model
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-facing RunError
        raise RunError(f"cannot resume from {path}: {exc}") from None
    epoch = int(blob["state"]["epoch"])
    # the saved optimizer belongs to the phase of the last finished epoch; if the next epoch starts
    # a new phase, the loop then builds that phase's fresh optimizer, as an uninterrupted run does
    last = max(0, epoch - 1)
    if trainer._frozen_at(last) != trainer.frozen:
        trainer._set_phase(last)
    trainer.model.load_state_dict(blob["model"])
    trainer.optimizer.load_state_dict(blob["optimizer"])
    trainer.scheduler.load_state_dict(blob["scheduler"])
    if trainer.ema and blob["ema"] is not None:
        trainer.ema.shadow = {k: v.to(trainer.device) for k, v in blob["ema"].items()}
    trainer.generator.set_state(blob["generator"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] is not None:
        torch.cuda.set_rng_state(blob["cuda_rng"], trainer.device)
    return TrainState.from_checkpoint(blob["state"], blob["history"])


class EarlyStopping(Callback):
    """Stop when the validation monitor has not improved for ``patience`` epochs."""

    order = 60

    def __init__(self, patience: int, monitor: str):
        self.patience, self.monitor = patience, monitor

    def on_epoch_end(self, trainer, state, scores):
        if state.bad_epochs >= self.patience:
            trainer.console.print(f"early stopping: no val {self.monitor} gain in {self.patience} epochs")
            state.stop = True


class OnEpoch(Callback):
    """Calls ``fn(epoch, val_scores)`` (0-based epoch) after each validation; ``fn`` may raise to stop."""

    order = 40

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_epoch_end(self, trainer, state, scores):
        self.fn(state.epoch - 1, scores)


class OptunaPruning(Callback):
    """A tuning trial's pruning hook: report val ``metric`` each epoch, raise ``optuna.TrialPruned`` when told.

    ``report(epoch, value)`` (1-based epoch) is called first, e.g. to update a progress display.
    """

    order = 40

    def __init__(self, trial, metric: str, report: Callable[[int, float], None] | None = None):
        self.trial, self.metric, self.report = trial, metric, report

    def on_epoch_end(self, trainer, state, scores):
        import optuna

        value = scores[self.metric]
        if self.report:
            self.report(state.epoch, value)
        if math.isfinite(value):
            self.trial.report(value, state.epoch - 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {state.epoch}: val {self.metric} {value:.4f}")


class ProgressBar(Callback):
    """A transient rich bar per epoch (loss, img/s) and one console line per finished epoch."""

    order = 50

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar = enabled, None

    def on_epoch_start(self, trainer, state, epoch, n):
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.0f} img/s"),
            TimeElapsedColumn(), console=trainer.console, transient=True, disable=not self.enabled,
        )  # fmt: skip
        self.bar.start()
        self.task = self.bar.add_task(f"epoch {epoch + 1}", total=n, loss=float("nan"), rate=0.0)
        self.t0, self.seen, self.n = time.perf_counter(), 0, n

    def on_batch_end(self, trainer, state, n, mean_loss):
        self.seen += n
        rate = self.seen / max(1e-9, time.perf_counter() - self.t0)
        self.bar.update(self.task, advance=n, loss=mean_loss, rate=rate)
        if self.seen >= self.n:
            self._close()

    def on_epoch_end(self, trainer, state, scores):
        row, c = state.history[-1], trainer.cfg.train
        trainer.console.print(
            f"epoch {state.epoch}/{c.epochs}  loss {row['train_loss']:.4f}  "
            f"val_loss {scores['loss']:.4f}  val_auc {scores['auc']:.4f}  "
            f"{row['images_per_s']:.0f} img/s  {row['seconds']:.0f}s"
        )

    def on_fit_exit(self, trainer, state, error):
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class Calibrate(Callback):
    """The end of a full run: best weights -> ``lungxray.calibrate`` on validation (threshold(s), OOD)
    -> model.safetensors + model.json. Sets ``state.threshold``. Tuning trials leave it out."""

    order = 70

    def on_fit_end(self, trainer, state):
        from lungxray.calibrate import calibrate, training_card
        from lungxray.models.tta import unwrap_tta, with_tta

        c = trainer.cfg
        model = with_tta(best_model(trainer), c.eval.tta)  # calibrated as it will predict
        fitted = calibrate(
            model, trainer.data.images, trainer.m.targets, task=trainer.task, val_rows=trainer.val_idx,
            strategy=c.eval.threshold, train_rows=trainer.train_idx, seed=c.train.seed,
            device=trainer.device, in_chans=trainer.in_chans, amp=trainer.amp,
            channels_last=trainer.channels_last,
        )  # fmt: skip
        save_weights(trainer.run_dir / "model.safetensors", unwrap_tta(model).state_dict(), fitted.ood_arrays)
        cal = fitted.calibration
        state.threshold = cal.threshold if cal.threshold is not None else _as_list(cal.thresholds)
        result = TrainResult.from_state(trainer.run_dir, state)
        card = training_card(
            c, trainer.m, fitted, in_chans=trainer.in_chans, unreadable=len(trainer.data.unreadable),
            copies=len(trainer.data.copies), result=result, device=str(trainer.device),
            parameters=int(sum(p.numel() for p in model.parameters())),
        )  # fmt: skip
        card.write(trainer.run_dir)


def best_model(trainer: TrainerLike) -> torch.nn.Module:
    """The trainer's ``eval_model()`` loaded with best.safetensors (best epoch by the validation monitor)."""
    from safetensors.torch import load_file

    best = trainer.run_dir / "best.safetensors"
    if not best.is_file():
        raise RunError("no epoch produced a finite validation score; check the data and learning rate.")
    model = trainer.eval_model()
    model.load_state_dict(load_file(str(best), device=str(trainer.device)))
    return model


def _as_list(values) -> list[float] | None:
    return None if values is None else list(values)


class LearningCurves(Callback):
    """figures/learning_curves.png from the history, drawn once at the end of a full run."""

    order = 75

    def on_fit_end(self, trainer, state):
        from lungxray.evaluation.plots import learning_curves, save_figure

        save_figure(learning_curves(state.history), trainer.run_dir / "figures" / "learning_curves.png")


class Tracker(Callback):
    """Optional MLflow logging (``train.track: mlflow``): params, per-epoch metrics, the run directory.

    The store is ``$MLFLOW_TRACKING_URI`` if set, else ``./mlflow.db`` (SQLite) with artifacts under
    ``./mlruns``: MLflow 3 refuses a bare ``./mlruns`` file store unless told otherwise. An error marks
    the MLflow run FAILED, an interruption (``stop_after``) KILLED.
    """

    order = 30  # the artifacts are logged in on_fit_exit, after every on_fit_end wrote its files

    def __init__(self, cfg: Config):
        self.cfg, self.mlflow, self.finished = cfg, None, False

    def on_fit_start(self, trainer, state):
        from lungxray.errors import check_option

        check_option(self.cfg.train.track, ["mlflow"], "train.track")
        try:
            import mlflow
        except ImportError:
            raise RunError('experiment tracking needs MLflow: pip install "lungxray[track]"') from None
        from lungxray.config import to_dict

        for chatty in ("alembic", "mlflow.store.db.utils"):  # schema-migration lines on a new store
            logging.getLogger(chatty).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(
            os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
        )
        mlflow.start_run(run_name=self.cfg.name)
        self.mlflow = mlflow
        flat = {}
        for section, values in to_dict(self.cfg).items():
            if isinstance(values, dict):
                flat.update({f"{section}.{k}": v for k, v in values.items()})
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def on_epoch_end(self, trainer, state, scores):
        row = state.history[-1]
        self.mlflow.log_metrics(
            {
                k: float(v)
                for k, v in row.items()
                if k != "epoch" and v is not None and not (isinstance(v, float) and math.isnan(v))
            },
            step=int(row["epoch"]),
        )

    def on_fit_exit(self, trainer, state, error):
        if self.mlflow is None:
            return
        if error is None and state.stop:  # finished: the whole run directory, model.json included
            self.mlflow.log_artifacts(str(trainer.run_dir), artifact_path="run")
            self.mlflow.end_run()
        else:
            self.mlflow.end_run(status="FAILED" if error else "KILLED")
        self.mlflow = None


def standard_callbacks(cfg: Config, *, progress: bool = True, calibrate: bool = True) -> list[Callback]:
    """The callbacks of ``lungxray train``: history, checkpoints, tracking (``train.track``), progress,
    early stopping (``train.early_stopping``) and, with ``calibrate``, Calibrate + LearningCurves."""
    callbacks: list[Callback] = [History(), Checkpoint(), ProgressBar(progress)]
    if cfg.train.track:
        callbacks.append(Tracker(cfg))
    if cfg.train.early_stopping:
        callbacks.append(EarlyStopping(cfg.train.early_stopping, cfg.train.monitor))
    if calibrate:
        callbacks += [Calibrate(), LearningCurves()]
    return callbacks


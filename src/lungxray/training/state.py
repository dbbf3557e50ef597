"""What the training loop carries from epoch to epoch (``TrainState``) and what it returns (``TrainResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
# the scalar fields a resumable checkpoint stores (the history is stored as rows of HISTORY_FIELDS)
CHECKPOINT_FIELDS = ("epoch", "best_score", "best_epoch", "seconds", "bad_epochs")


@dataclass
class TrainState:
    """The loop's progress. ``epoch`` counts finished epochs; ``best_epoch`` is 0-based (-1: none yet).

    Callbacks read it; ``stop`` (set by EarlyStopping) ends training after the current epoch,
    ``improved`` says whether the epoch just finished is the new best by the validation monitor, and
    ``threshold`` is filled by the Calibrate callback at the end of a full run.
    """

    epoch: int = 0
    best_score: float = float("nan")
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    bad_epochs: int = 0
    improved: bool = False
    stop: bool = False
    threshold: float | list[float] | None = None

    def update_best(self, score: float, epoch: int, monitor: str) -> bool:
        """Record the monitor value of ``epoch`` (0-based); True when it beats the best so far (NaN never does)."""
        better = not math.isnan(score) and (
            math.isnan(self.best_score) or (score < self.best_score if monitor == "loss" else score > self.best_score)
        )
        if better:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        self.improved = better
        return better

    def to_checkpoint(self) -> tuple[dict[str, Any], list[list[Any]]]:
        """(scalars, history rows) as a resumable checkpoint stores them: plain numbers and lists."""
        scalars = {k: getattr(self, k) for k in CHECKPOINT_FIELDS}
        return scalars, [[r.get(f) for f in HISTORY_FIELDS] for r in self.history]

    @classmethod
    def from_checkpoint(cls, scalars: dict[str, Any], history: list[list[Any]]) -> TrainState:
        rows = [dict(zip(HISTORY_FIELDS, r, strict=True)) for r in history]
        return cls(**{k: scalars[k] for k in CHECKPOINT_FIELDS}, history=rows)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int  # 1-based
    best_score: float
    epochs_run: int
    seconds: float
    images_per_s: float
    threshold: float | list[float] | None  # None until calibrated (an interrupted or tuning run)
    history: list[dict[str, Any]]

    @classmethod
    def from_state(cls, run_dir: Path, state: TrainState) -> TrainResult:
        hist = state.history
        ips = float(np.mean([r["images_per_s"] for r in hist])) if hist else 0.0
        return cls(
            run_dir, state.best_epoch + 1, state.best_score, len(hist), state.seconds, ips, state.threshold, hist
        )

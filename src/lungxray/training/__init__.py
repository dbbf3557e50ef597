"""Training: a small loop (``Trainer``) with callbacks, then the calibrate stage.

``train(cfg)`` = ``prepare_data`` (manifest -> patient-grouped splits -> uint8 cache) +
``Trainer(cfg, data).fit()``, whose standard callbacks write the run directory (config.yaml,
splits.csv, history.csv, best.safetensors, checkpoint.pt) and, at the end, run
``lungxray.calibrate`` (threshold + OOD on VALIDATION -> model.safetensors, model.json) and draw the
learning curves. The test split is never read here beyond being recorded in splits.csv.

Modules: ``data`` (prepare_data), ``loop`` (Trainer), ``callbacks``, ``state`` (TrainState,
TrainResult), ``losses``, ``optim`` (optimizers, schedules, EMA), ``run`` (train).
"""

from lungxray.evaluation.metrics import validation_scores
from lungxray.training.callbacks import (
    Calibrate,
    Callback,
    Checkpoint,
    EarlyStopping,
    History,
    LearningCurves,
    OnEpoch,
    OptunaPruning,
    ProgressBar,
    Tracker,
    standard_callbacks,
)
from lungxray.training.data import PreparedData, prepare_data
from lungxray.training.loop import Trainer
from lungxray.training.losses import class_weights, loss_fn
from lungxray.training.optim import EMA, lr_multiplier, make_optimizer
from lungxray.training.run import train
from lungxray.training.state import HISTORY_FIELDS, TrainResult, TrainState

__all__ = [
    "EMA",
    "HISTORY_FIELDS",
    "Calibrate",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "History",
    "LearningCurves",
    "OnEpoch",
    "OptunaPruning",
    "PreparedData",
    "ProgressBar",
    "Tracker",
    "TrainResult",
    "TrainState",
    "Trainer",
    "class_weights",
    "loss_fn",
    "lr_multiplier",
    "make_optimizer",
    "prepare_data",
    "standard_callbacks",
    "train",
    "validation_scores",
]

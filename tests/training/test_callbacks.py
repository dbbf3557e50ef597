"""Callbacks of the training loop: checkpoint / exact resume, MLflow tracking, early stopping, history,
hook order, and the callbacks a tuning trial runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_training import (  # noqa: E402
    RUN_FILES,
    assert_same_weights,
    fit,
    make_cfg,
    weights_of,
)
from rich.console import Console

from lungxray.runcard import RunCard
from lungxray.rundir import read_history
from lungxray.training import (
    Callback,
    Checkpoint,
    EarlyStopping,
    History,
    Trainer,
    TrainState,
    prepare_data,
    standard_callbacks,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ resume
RESUME_CASES = {
    # 1 of 3 epochs, then resumed: EMA of weights, warm-up + cosine schedule
    "ema-cosine": {"train.epochs": 3, "train.ema": 0.9, "train.schedule": "cosine", "train.warmup_epochs": 1},
    # interrupted exactly where the frozen phase ends: one-cycle per phase, balanced sampler
    "freeze-then-finetune": {
        "train.epochs": 2,
        "model.transfer": "freeze-then-finetune",
        "model.freeze_epochs": 1,
        "train.balance": "sampler",
    },
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_exact(tmp_path, cache_dir, case):
    """Interrupted after epoch 1 and resumed by a NEW Trainer == the same run uninterrupted."""
    settings = {"train.batch_size": 8, "data.max_images": 40, **RESUME_CASES[case]}
    epochs = settings["train.epochs"]
    cfg_a = make_cfg(tmp_path / "a", cache_dir, **settings)
    fit(cfg_a)

    cfg_b = make_cfg(tmp_path / "b", cache_dir, **settings)
    _, partial = fit(cfg_b, stop_after=1)
    assert partial.epochs_run == 1
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    assert not (tmp_path / "b" / "model.json").exists()
    assert len(read_history(tmp_path / "b")) == 1
    _, result_b = fit(cfg_b, resume=True)
    assert result_b.epochs_run == epochs

    assert_same_weights(weights_of(tmp_path / "a"), weights_of(tmp_path / "b"), atol=1e-6)
    hist_a, hist_b = read_history(tmp_path / "a"), read_history(tmp_path / "b")
    assert len(hist_a) == len(hist_b) == epochs
    for column in ("train_loss", "lr", "val_loss"):
        assert [r[column] for r in hist_a] == [r[column] for r in hist_b], column
    card_a, card_b = RunCard.read(tmp_path / "a"), RunCard.read(tmp_path / "b")
    assert card_a.threshold == card_b.threshold
    assert card_a.training.best_epoch == card_b.training.best_epoch



# ------------------------------------------------------------------------------ experiment tracking
def mlflow_runs(db: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_mlflow_tracking_logs_params_metrics_and_the_run_dir(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store is ./mlflow.db with artifacts in ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(tmp_path / "tracked", cache_dir, **{"train.epochs": 2, "train.track": "mlflow"})
    fit(cfg)

    client, runs = mlflow_runs(tmp_path / "mlflow.db")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "tracked"
    assert r.data.params["train.epochs"] == "2" and r.data.params["model.name"] == "cnn-small"
    logged = client.get_metric_history(r.info.run_id, "val_auc")
    history = read_history(tmp_path / "tracked")
    assert [m.step for m in logged] == [1, 2]
    assert [m.value for m in logged] == pytest.approx([h["val_auc"] for h in history])
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "run")}
    assert {f"run/{f}" for f in RUN_FILES} <= artifacts


def test_mlflow_run_of_an_interrupted_or_failed_training_is_closed(tmp_path, cache_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    cfg = make_cfg(tmp_path / "cut", cache_dir, **{"train.epochs": 2, "train.track": "mlflow"})
    fit(cfg, stop_after=1)

    def boom(epoch, scores):
        raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):  # a second run in the same process can start
        fit(make_cfg(tmp_path / "failed", cache_dir, **{"train.track": "mlflow"}), on_epoch=boom)
    _, runs = mlflow_runs(tmp_path / "store.db")
    assert {r.info.run_name: r.info.status for r in runs} == {"cut": "KILLED", "failed": "FAILED"}
    assert not (tmp_path / "mlflow.db").exists()  # MLFLOW_TRACKING_URI was honoured


# ------------------------------------------------------------------------------ hooks, early stopping
class Recorder(Callback):
    """Records every hook call as (hook, epoch, extra)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_fit_start(self, trainer, state):
        self.calls.append(("fit_start", state.epoch, None))

    def on_epoch_start(self, trainer, state, epoch, n):
        self.calls.append(("epoch_start", epoch, n))

    def on_batch_end(self, trainer, state, n, mean_loss):
        self.calls.append(("batch_end", state.epoch, n))

    def on_epoch_end(self, trainer, state, scores):
        self.calls.append(("epoch_end", state.epoch, sorted(scores)))

    def on_fit_end(self, trainer, state):
        self.calls.append(("fit_end", state.epoch, None))

    def on_fit_exit(self, trainer, state, error):
        self.calls.append(("fit_exit", state.epoch, type(error).__name__ if error else None))


def hooks(rec: Recorder) -> list[str]:
    """Hook names in call order, runs of batch_end collapsed to one."""
    out: list[str] = []
    for name, *_ in rec.calls:
        if not (name == "batch_end" and out and out[-1] == "batch_end"):
            out.append(name)
    return out


def test_hooks_run_in_order_and_batches_cover_the_epoch(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"train.epochs": 2})
    data = prepare_data(cfg, progress=False)
    rec = Recorder()
    trainer = Trainer(cfg, data, callbacks=[History(), Checkpoint(), rec], progress=False)
    result = trainer.fit()
    assert hooks(rec) == ["fit_start"] + ["epoch_start", "batch_end", "epoch_end"] * 2 + ["fit_end", "fit_exit"]
    n_train = len(trainer.train_idx)
    assert [c[2] for c in rec.calls if c[0] == "epoch_start"] == [n_train, n_train]
    assert sum(c[2] for c in rec.calls if c[0] == "batch_end") == 2 * n_train
    assert rec.calls[-1] == ("fit_exit", 2, None)
    assert [c[2] for c in rec.calls if c[0] == "epoch_end"][0] == ["accuracy", "auc", "f1", "loss"]
    # without the Calibrate callback: the loop's files only, no model.json / weights / figure
    run = tmp_path / "r"
    assert {p.name for p in run.iterdir()} == {
        "config.yaml", "splits.csv", "history.csv", "best.safetensors", "checkpoint.pt"
    }  # fmt: skip
    assert result.threshold is None and result.epochs_run == 2
    assert len(read_history(run)) == 2


def test_interruption_and_error_skip_on_fit_end(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"train.epochs": 2})
    data = prepare_data(cfg, progress=False)
    rec = Recorder()
    Trainer(cfg, data, callbacks=[Checkpoint(), rec], progress=False).fit(stop_after=1)
    assert hooks(rec)[-2:] == ["epoch_end", "fit_exit"] and rec.calls[-1] == ("fit_exit", 1, None)

    def boom(epoch, scores):
        raise RuntimeError("stop")

    rec = Recorder()
    cfg = make_cfg(tmp_path / "e", cache_dir, **{"train.epochs": 2})
    with pytest.raises(RuntimeError, match="stop"):
        Trainer(cfg, data, callbacks=[rec], progress=False).fit(on_epoch=boom)
    assert "fit_end" not in hooks(rec) and rec.calls[-1] == ("fit_exit", 1, "RuntimeError")


def test_early_stopping_ends_after_patience_epochs_without_gain(tmp_path, cache_dir, monkeypatch):
    """A validation score that never moves: epoch 1 is the best, epoch 2 is one bad epoch -> stop."""
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"train.epochs": 4, "train.early_stopping": 1})
    trainer = Trainer(cfg, prepare_data(cfg, progress=False), progress=False)
    monkeypatch.setattr(trainer, "validate", lambda: {"auc": 0.5, "accuracy": 0.5, "f1": 0.5, "loss": 1.0})
    result = trainer.fit()
    assert result.epochs_run == 2 and result.best_epoch == 1
    assert len(read_history(tmp_path / "r")) == 2
    card = RunCard.read(tmp_path / "r")  # early stopping still finishes the run: calibrated, model.json
    assert card.training.epochs_run == 2 and card.training.best_epoch == 1


def test_early_stopping_callback_alone():
    class T:
        console = Console(quiet=True)

    stop = EarlyStopping(patience=2, monitor="auc")
    state = TrainState(bad_epochs=1)
    stop.on_epoch_end(T(), state, {})
    assert not state.stop
    state.bad_epochs = 2
    stop.on_epoch_end(T(), state, {})
    assert state.stop


@pytest.mark.parametrize(
    "monitor, scores, best, bad",
    [
        ("auc", [0.6, 0.7, 0.65, float("nan")], 0.7, 2),  # higher is better; NaN is never better
        ("loss", [0.9, 0.5, 0.5, 0.6], 0.5, 2),  # lower is better; a tie is not a gain
        ("auc", [float("nan"), 0.5], 0.5, 0),  # the first finite score is the first best
    ],
)
def test_train_state_tracks_the_best_epoch(monitor, scores, best, bad):
    state = TrainState()
    for epoch, s in enumerate(scores):
        state.update_best(s, epoch, monitor)
    assert state.best_score == best and state.bad_epochs == bad
    assert state.best_epoch == scores.index(best)


def test_standard_callbacks_calibrate_once_and_trial_callbacks_never(tmp_path, cache_dir, monkeypatch):
    """A full run calls the calibrate stage and draws the learning curves once; the callbacks a tuning
    trial uses (``calibrate=False``) do neither: no OOD fit, no threshold, no model.json, no figure."""
    import lungxray.calibrate
    import lungxray.evaluation.plots

    calls = {"calibrate": 0, "fit_gaussian": 0, "learning_curves": 0}

    def counting(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counting(lungxray.calibrate, "calibrate")
    counting(lungxray.calibrate, "fit_gaussian")
    counting(lungxray.evaluation.plots, "learning_curves")

    cfg = make_cfg(tmp_path / "full", cache_dir)
    data = prepare_data(cfg, progress=False)
    Trainer(cfg, data, progress=False).fit()
    assert calls == {"calibrate": 1, "fit_gaussian": 1, "learning_curves": 1}
    assert (tmp_path / "full" / "model.json").is_file()

    names = {type(cb).__name__ for cb in standard_callbacks(cfg, calibrate=False)}
    assert "Calibrate" not in names and "LearningCurves" not in names
    cfg = make_cfg(tmp_path / "trial", cache_dir)
    Trainer(cfg, data, callbacks=standard_callbacks(cfg, progress=False, calibrate=False), progress=False).fit()
    assert calls == {"calibrate": 1, "fit_gaussian": 1, "learning_curves": 1}  # unchanged
    files = {p.name for p in (tmp_path / "trial").iterdir()}
    assert not files & {"model.json", "model.safetensors", "figures"}
    assert {"best.safetensors", "history.csv", "config.yaml", "splits.csv"} <= files


def test_standard_callbacks_follow_the_config(tmp_path, cache_dir):
    cfg = make_cfg(tmp_path / "r", cache_dir, **{"train.early_stopping": 3, "train.track": "mlflow"})
    cbs = standard_callbacks(cfg)
    names = [type(cb).__name__ for cb in sorted(cbs, key=lambda cb: cb.order)]
    assert names == [
        "History", "Checkpoint", "Tracker", "ProgressBar", "EarlyStopping", "Calibrate", "LearningCurves"
    ]  # fmt: skip
    plain = {type(cb).__name__ for cb in standard_callbacks(make_cfg(tmp_path / "p", cache_dir))}
    assert "Tracker" not in plain and "EarlyStopping" not in plain

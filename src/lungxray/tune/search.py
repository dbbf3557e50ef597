"""Optuna search over config fields (the space itself: ``tune.space``), scored on the VALIDATION split only; test rows never reach a trial.

``tune(data, space=...)`` samples dotted config keys from a YAML search space (see ``parse_space``),
trains one run per trial under ``out/trials/trial_<n>`` (the training loop only: config.yaml, splits.csv,
history.csv and best.safetensors; no calibrate stage, so no threshold, OOD fit, model.json or figure), prunes poor trials from their per-epoch
validation score, and writes ``trials.csv``, ``best.yaml`` (ready for ``lungxray train --config``) and
figures. The study lives in SQLite (default ``out/study.db``), so an interrupted search resumes.
Optuna is imported inside functions: ``import lungxray`` never needs it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape

from lungxray.config import MONITORS, Config, apply_overrides, load_config, to_dict
from lungxray.data.rows import take_rows
from lungxray.errors import ConfigError, ModelError, RunError, check_option
from lungxray.tune.space import ParamSpec, parse_space, sample, trial_config

PRUNERS = ("median", "hyperband", "none")


def _without_test(data):
    """The PreparedData minus every test row: what a trial is allowed to see."""
    from lungxray.training import PreparedData

    keep = np.flatnonzero(np.array([s != "test" for s in data.manifest.splits], dtype=bool))
    return PreparedData(
        manifest=data.manifest.subset(keep),
        images=take_rows(data.images, keep),  # a lazy view: no copy of the cache
        unreadable=dict(data.unreadable),
        cache_stats=dict(data.cache_stats),
    )


def _make_pruner(name: str, epochs: int):
    import optuna

    check_option(name, PRUNERS, "pruner")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def _default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def tune(
    data: str | Path,
    *,
    config: str | Path | None = None,
    space: str | Path | dict[str, Any] = "configs/space-cpu.yaml",
    trials: int = 20,
    timeout: float | None = None,
    study_name: str = "lungxray",
    storage: str | None = None,
    out: str | Path = "tune",
    pruner: str = "median",
    metric: str = "auc",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Search ``space`` around the base ``config`` on ``data``; the library twin of ``lungxray tune``.

    Every trial trains on the train split and is scored on the validation split (``metric``: auc,
    accuracy, f1 maximised; loss minimised; the best epoch's value counts). Test rows are removed
    before a trial starts. The study persists in ``storage`` (default ``sqlite:///<out>/study.db``);
    calling again with the same study resumes it and runs only ``trials`` minus the trials already
    complete or pruned. Ctrl-C stops after writing the outputs of what finished.

    Args:
        overrides: dotted-key overrides of the base config (e.g. ``{"data.max_images": 600}``).
    Returns:
        dict with best_config (path of best.yaml), best_value, best_params, best_trial, n_trials,
        n_complete, n_pruned, n_failed, new_trials, interrupted, trials_csv, figures, storage.
    Raises:
        ConfigError: bad space, metric or pruner; RunError: no trial completed.
    """
    import optuna

    from lungxray.training import OptunaPruning, Trainer, prepare_data, standard_callbacks

    console = console or Console(quiet=not progress)
    check_option(metric, MONITORS, "tune metric")
    space_spec = parse_space(space)
    if trials < 1:
        raise ConfigError(f"trials must be at least 1, got {trials}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(config, {**(overrides or {}), "data.path": str(data), "train.monitor": metric})
    storage = storage or _default_storage(out)
    direction = "minimize" if metric == "loss" else "maximize"

    previous_level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction=direction,
            load_if_exists=True,
            pruner=_make_pruner(pruner, base.train.epochs),
        )
        if study.user_attrs.get("metric", metric) != metric:
            raise ConfigError(
                f"study {study_name!r} in {storage} optimises {study.user_attrs['metric']!r}, not {metric!r}; "
                "use the same --metric or another --study name."
            )
        study.set_user_attr("metric", metric)
        done = _finished(study)
        n_before = len(study.trials)
        remaining = max(0, trials - len(done))
        # a fresh seed per call: a resumed study must not replay the first call's random samples
        study.sampler = optuna.samplers.TPESampler(seed=base.train.seed + len(study.trials))
        if done:
            console.print(
                f"study {escape(repr(study_name))}: {len(done)} trial(s) already finished; running {remaining} more"
            )
        prepared: dict[str, Any] = {}
        quiet = Console(quiet=True)
        bar = _TrialProgress(console, remaining, progress)

        def objective(trial) -> float:
            values = sample(trial, space_spec, base)
            run_dir = out / "trials" / f"trial_{trial.number}"
            cfg = trial_config(base, values)
            cfg = apply_overrides(cfg, {"name": f"{study_name}-trial-{trial.number}", "out": str(run_dir)})
            if run_dir.exists():  # left by an interrupted trial or another study in this folder
                shutil.rmtree(run_dir)
            key = json.dumps([dataclasses.asdict(cfg.data), cfg.train.seed], sort_keys=True, default=str)
            if key not in prepared:
                prepared[key] = _without_test(prepare_data(cfg, progress=False, console=quiet))
            trial.set_user_attr("run_dir", str(run_dir))
            bar.start(trial.number, cfg.train.epochs)

            # the loop without the calibrate stage: no threshold, OOD fit, model.json or figure per trial
            callbacks = [
                *standard_callbacks(cfg, progress=False, calibrate=False),
                OptunaPruning(trial, metric, report=bar.epoch),
            ]
            try:
                result = Trainer(cfg, prepared[key], callbacks=callbacks, console=quiet, progress=False).fit()
            finally:  # a trial is never resumed: its resume checkpoint only costs disk
                (run_dir / "checkpoint.pt").unlink(missing_ok=True)
            trial.set_user_attr("best_epoch", result.best_epoch)
            return float(result.best_score)

        interrupted = False
        t0 = time.perf_counter()
        if remaining:
            with bar:
                try:
                    study.optimize(
                        objective,
                        n_trials=remaining,
                        timeout=timeout,
                        catch=(ModelError, RunError),
                        callbacks=[bar.finished],
                        gc_after_trial=True,
                    )
                except KeyboardInterrupt:
                    interrupted = True
        elapsed = time.perf_counter() - t0
        summary = _write_outputs(study, base, out, space_spec, console)
    finally:
        optuna.logging.set_verbosity(previous_level)

    summary.update(
        new_trials=summary["n_trials"] - n_before,
        interrupted=interrupted,
        storage=storage,
        seconds=round(elapsed, 1),
    )
    if summary["best_config"] is None:
        if interrupted:
            raise KeyboardInterrupt
        raise RunError(
            f"no trial of study {study_name!r} completed ({summary['n_pruned']} pruned, "
            f"{summary['n_failed']} failed); see {summary['trials_csv']}."
        )
    note = " (interrupted; run the same command again to resume)" if interrupted else ""
    console.print(
        f"best val {metric} {summary['best_value']:.4f} (trial {summary['best_trial']}); "
        f"{summary['n_complete']} complete, {summary['n_pruned']} pruned of {summary['n_trials']}{note}"
    )
    return summary


def _finished(study) -> list[int]:
    from optuna.trial import TrialState

    return [t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


class _TrialProgress:
    """A rich bar over this call's trials, plus one printed line per finished trial."""

    def __init__(self, console: Console, total: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task = self.bar.add_task("tuning", total=total, status="")
        self.trial = -1
        self.epochs = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> _TrialProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, number: int, epochs: int) -> None:
        self.trial, self.epochs, self.t0 = number, epochs, time.perf_counter()
        self.bar.update(self.task, description=f"trial {number}", status="")

    def epoch(self, epoch: int, value: float) -> None:
        self.bar.update(self.task, status=f"epoch {epoch}/{self.epochs}  val {value:.4f}")

    def finished(self, study, trial) -> None:
        from optuna.trial import TrialState

        value = "" if trial.value is None else f"value {trial.value:.4f}"
        if trial.state == TrialState.PRUNED:
            last = trial.last_step
            value = f"pruned after epoch {last + 1}" if last is not None else "pruned"
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "best -"
        params = "  ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.console.print(
            f"trial {trial.number:>3} {trial.state.name.lower():<8} {value:<24} {best}  {seconds:.0f}s  {escape(params)}"
        )
        self.bar.advance(self.task)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------- outputs
def _write_outputs(study, base: Config, out: Path, space: dict[str, ParamSpec], console: Console) -> dict:
    """trials.csv, best.yaml and figures from the study as it stands."""
    from optuna.trial import TrialState

    from lungxray.rundir import atomic_write_text

    trials = study.trials
    keys = list(space) + sorted({k for t in trials for k in t.params} - set(space))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["number", "state", "value", "duration_s", "best_epoch", *keys, "run_dir"])
    for t in trials:
        writer.writerow(
            [
                t.number,
                t.state.name,
                "" if t.value is None else f"{t.value:.6g}",
                "" if t.duration is None else f"{t.duration.total_seconds():.1f}",
                t.user_attrs.get("best_epoch", ""),
                *[_fmt(t.params[k]) if k in t.params else "" for k in keys],
                t.user_attrs.get("run_dir", ""),
            ]
        )
    trials_csv = out / "trials.csv"
    atomic_write_text(trials_csv, buf.getvalue())
    states = [t.state for t in trials]
    summary: dict[str, Any] = {
        "best_config": None,
        "best_value": None,
        "best_params": {},
        "best_trial": None,
        "n_trials": len(trials),
        "n_complete": states.count(TrialState.COMPLETE),
        "n_pruned": states.count(TrialState.PRUNED),
        "n_failed": states.count(TrialState.FAIL),
        "trials_csv": trials_csv,
        "figures": [],
    }
    if summary["n_complete"] == 0:
        return summary
    best = study.best_trial
    cfg = trial_config(base, best.params)
    cfg = apply_overrides(cfg, {"name": f"{study.study_name}-best"})
    cfg.out = None  # a tuned recipe trains to runs/<name>, not into a trial folder
    metric = study.user_attrs.get("metric", base.train.monitor)
    header = (
        f"# Best of Optuna study {study.study_name!r}: trial {best.number}, validation {metric} "
        f"{best.value:.6g} ({summary['n_complete']} complete, {summary['n_pruned']} pruned trials).\n"
        "# Chosen on the VALIDATION split only. Judge it on test once, at the end, over several seeds:\n"
        "#   lungxray train --config best.yaml --set train.seed=N  (N = 0, 1, 2), then evaluate.\n"
    )
    best_yaml = out / "best.yaml"
    atomic_write_text(best_yaml, header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    summary.update(
        best_config=best_yaml,
        best_value=float(best.value),
        best_params=dict(best.params),
        best_trial=best.number,
        figures=_figures(study, out / "figures", summary["n_complete"], console),
    )
    return summary


def _figures(study, folder: Path, n_complete: int, console: Console) -> list[Path]:
    """Optimization history, intermediate values and (with >= 2 complete trials) parameter importances."""
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from lungxray.evaluation.plots import save_figure

    made = []
    plots = [
        ("optimization_history.png", ovm.plot_optimization_history),
        ("intermediate_values.png", ovm.plot_intermediate_values),
        ("param_importances.png", ovm.plot_param_importances),
    ]
    for name, plot in plots:
        if plot is ovm.plot_param_importances and n_complete < 2:
            console.print(f"skipped {name}: importances need at least 2 complete trials")
            continue
        # optuna calls plt.style.use("ggplot"); rc_context restores the caller's rcParams afterwards
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                console.print(f"[yellow]skipped {name}: {escape(str(exc))}[/]")
                continue
            fig = ax.figure if not isinstance(ax, np.ndarray) else ax.flat[0].figure
            made.append(save_figure(fig, folder / name))
            plt.close(fig)
    return made

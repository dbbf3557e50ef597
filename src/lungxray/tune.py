"""Optuna search over config fields, scored on the VALIDATION split only; test rows never reach a trial.

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
import math
import shutil
import time
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from lungxray.config import MONITORS, Config, apply_overrides, load_config, to_dict
from lungxray.errors import ConfigError, ModelError, RunError, check_option

SPACE_TYPES = ("float", "int", "categorical")
SPEC_FIELDS = ("type", "low", "high", "step", "log", "choices", "when")
PRUNERS = ("median", "hyperband", "none")
KWARGS_PREFIX = "model.kwargs."

# Keys a search must not touch, and why (shown in the error).
FORBIDDEN_KEYS: dict[str, str] = {
    "name": "the tuner names each trial itself",
    "out": "each trial's run folder is out/trials/trial_<n>",
    "data.path": "the data folder is the tune argument",
    "data.csv": "the label table is part of the data, not a hyperparameter",
    "data.file_col": "columns are part of the data, not hyperparameters",
    "data.label_col": "columns are part of the data, not hyperparameters",
    "data.patient_col": "columns are part of the data, not hyperparameters",
    "data.split_col": "columns are part of the data, not hyperparameters",
    "data.label_sep": "label parsing is part of the data, not a hyperparameter",
    "data.binary_negative": "the label mapping defines the task; set it in the base config",
    "data.task": "the task is fixed by the data; set it in the base config",
    "data.val_fraction": "changing the validation set makes trial scores incomparable",
    "data.test_fraction": "the test split is never used while tuning",
    "data.cache_dir": "a storage location, not a hyperparameter",
    "model.weights": "a file path, not a hyperparameter; set it in the base config",
    "train.seed": "tuning the seed overfits validation noise; judge seeds afterwards",
    "train.monitor": "the objective is the tune metric option",
    "train.device": "hardware, not a hyperparameter",
    "train.threads": "hardware, not a hyperparameter",
    "train.track": "logging, not a hyperparameter",
}


@dataclass(frozen=True)
class ParamSpec:
    """One searched key: its distribution and an optional condition on earlier keys.

    ``when`` maps a dotted key to the values for which this key is sampled (``{"model.name":
    ("cnn-small",)}``); it is checked against values sampled earlier in the file, else the base config.
    """

    key: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    when: dict[str, tuple[Any, ...]] | None = None

    def distribution(self):
        """The equivalent ``optuna.distributions`` object."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        """Sample this key from an ``optuna.Trial``."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


# ------------------------------------------------------------------------------------- the space
def parse_space(space: str | Path | dict[str, Any]) -> dict[str, ParamSpec]:
    """Read and validate a search space: a YAML file (or dict) of dotted config keys -> distributions.

    Each value is ``{type: float|int, low, high, [log: true], [step]}`` or ``{type: categorical,
    choices: [...]}``, optionally with ``when: {other.key: value-or-list}``. Keys are checked against the
    Config dataclasses (``model.kwargs.<name>`` is free-form: it goes to the model factory); every bound
    and choice is checked by building a Config with it.

    Returns:
        ``{key: ParamSpec}`` in file order (conditions may only refer to keys above them).
    Raises:
        ConfigError: unreadable file, unknown key (with the closest valid one), bad type or bounds.
    """
    source = "search space"
    if isinstance(space, (str, Path)):
        path = Path(space)
        source = f"search space {path}"
        if not path.is_file():
            raise ConfigError(f"{source} does not exist; pass --space with a YAML file (see docs/tuning.md).")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    else:
        raw = space
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source} must be a non-empty mapping of dotted config keys to distributions.")
    out: dict[str, ParamSpec] = {}
    for key, entry in raw.items():
        key = str(key)
        try:
            out[key] = _parse_entry(key, entry, out)
        except ConfigError as exc:
            raise ConfigError(f"{source}, key {key!r}: {exc}") from None
    return out


def _field_type(key: str) -> Any:
    """The annotated type of a dotted config key (validated with suggestions); None for model.kwargs.*."""
    if key in FORBIDDEN_KEYS:
        raise ConfigError(f"{key} cannot be searched: {FORBIDDEN_KEYS[key]}.")
    parts = key.split(".")
    if key.startswith(KWARGS_PREFIX):
        if len(parts) != 3 or not parts[2].isidentifier():
            raise ConfigError("model.kwargs keys are model.kwargs.<argument>, e.g. model.kwargs.width.")
        return None
    cls: type = Config
    for i, part in enumerate(parts):
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            raise ConfigError(f"{'.'.join(parts[:i])} is a setting, not a section; remove '.{part}'.")
        hints = typing.get_type_hints(cls)
        where = ".".join(parts[:i]) or "top level"
        check_option(part, [f.name for f in dataclasses.fields(cls)], f"config key in {where}")
        cls = hints[part]
    if dataclasses.is_dataclass(cls):
        fields = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(cls))
        raise ConfigError(f"{key} is a section; search one of its settings: {fields}.")
    if key == "model.kwargs":
        raise ConfigError("search the model arguments one by one, e.g. model.kwargs.width.")
    args = [a for a in typing.get_args(cls) if a is not type(None)]
    return args[0] if args else cls


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be finite, got {value!r}.")
    return number


def _check_value(key: str, value: Any) -> None:
    """Build a Config with ``key = value`` so option strings, types and ranges are checked in one place."""
    if key.startswith(KWARGS_PREFIX):
        return
    apply_overrides(Config(), {key: value}).validate()


def _parse_entry(key: str, entry: Any, earlier: dict[str, ParamSpec]) -> ParamSpec:
    target = _field_type(key)
    if not isinstance(entry, dict):
        raise ConfigError(
            f"expected a mapping such as {{type: float, low: 0.001, high: 0.01}}, got {entry!r}."
        )
    for name in entry:
        check_option(str(name), SPEC_FIELDS, "distribution field")
    kind = check_option(str(entry.get("type", "")), SPACE_TYPES, "distribution type")
    when = _parse_when(entry.get("when"), key, earlier)
    if kind == "categorical":
        extra = sorted(set(entry) & {"low", "high", "step", "log"})
        if extra:
            raise ConfigError(f"a categorical distribution takes choices, not {', '.join(extra)}.")
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError("categorical needs a non-empty list: choices: [a, b].")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ConfigError(f"choice {choice!r} must be a number, string, boolean or null.")
            _check_value(key, choice)
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"choices {choices} repeat a value.")
        return ParamSpec(key, kind, choices=tuple(choices), when=when)
    if "choices" in entry:
        raise ConfigError(f"choices belong to type: categorical, not type: {kind}.")
    if target is not None and target not in (int, float):
        raise ConfigError(
            f"{key} is a {getattr(target, '__name__', target)} setting; use type: categorical with choices."
        )
    if kind == "float" and target is int:
        raise ConfigError(f"{key} is an integer setting; use type: int (or categorical).")
    for bound in ("low", "high"):
        if bound not in entry:
            raise ConfigError(f"type: {kind} needs both low and high.")
    low, high = _number(entry["low"], "low"), _number(entry["high"], "high")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"log must be true or false, got {log!r}.")
    step = None if entry.get("step") is None else _number(entry["step"], "step")
    if low >= high:
        raise ConfigError(
            f"low ({low:g}) must be below high ({high:g}); fix a setting in the base config instead."
        )
    if log and low <= 0:
        raise ConfigError(f"log: true needs low > 0, got low {low:g}.")
    if log and step is not None:
        raise ConfigError("step and log: true cannot be combined (Optuna does not support it).")
    if step is not None and step <= 0:
        raise ConfigError(f"step must be positive, got {step:g}.")
    if kind == "int":
        for name, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not float(value).is_integer():
                raise ConfigError(f"type: int needs integer {name}, got {value:g}.")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    for value in (low, high):
        _check_value(key, value)
    return ParamSpec(key, kind, low=low, high=high, step=step, log=log, when=when)


def _parse_when(when: Any, key: str, earlier: dict[str, ParamSpec]) -> dict[str, tuple[Any, ...]] | None:
    if when is None:
        return None
    if not isinstance(when, dict) or not when:
        raise ConfigError(
            "when must map a dotted key to a value or list, e.g. when: {model.name: cnn-small}."
        )
    out = {}
    for other, values in when.items():
        other = str(other)
        if other == key:
            raise ConfigError("a key cannot be conditional on itself.")
        if other not in earlier:
            _field_type_or_any(other)
        out[other] = tuple(values) if isinstance(values, list) else (values,)
    return out


def _field_type_or_any(key: str) -> None:
    """Validate a key named in ``when`` that is not searched (a fixed base-config value)."""
    if key.startswith(KWARGS_PREFIX):
        return
    parts = key.split(".")
    cls: Any = Config
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"condition key {key!r}: {'.'.join(parts[:i])} is not a section.")
        check_option(part, [f.name for f in dataclasses.fields(cls)], "condition key")
        cls = typing.get_type_hints(cls)[part]


def _base_value(cfg: Config, key: str) -> Any:
    node: Any = to_dict(cfg)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def sample(trial, space: dict[str, ParamSpec], base: Config) -> dict[str, Any]:
    """Sample every active key of ``space`` from ``trial`` -> ``{dotted key: value}`` overrides."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.when and not all(
            (values[k] if k in values else _base_value(base, k)) in allowed
            for k, allowed in spec.when.items()
        ):
            continue
        values[key] = spec.suggest(trial)
    return values


def trial_config(base: Config, overrides: dict[str, Any]) -> Config:
    """``base`` with sampled ``overrides`` applied; ``model.kwargs.*`` merge into the kwargs dict.

    When the search switches ``model.name`` away from the base architecture, the base kwargs are
    dropped (they belong to the base model's factory); only sampled kwargs apply.
    """
    kwargs = {k[len(KWARGS_PREFIX) :]: v for k, v in overrides.items() if k.startswith(KWARGS_PREFIX)}
    plain = {k: v for k, v in overrides.items() if not k.startswith(KWARGS_PREFIX)}
    name = plain.get("model.name", base.model.name)
    merged = dict(base.model.kwargs) if name == base.model.name else {}
    merged.update(kwargs)
    plain["model.kwargs"] = merged
    return apply_overrides(base, plain).validate()


# ------------------------------------------------------------------------------------- the search
def _without_test(data):
    """The PreparedData minus every test row: what a trial is allowed to see."""
    from lungxray.training import PreparedData

    keep = np.flatnonzero(np.array([s != "test" for s in data.manifest.splits], dtype=bool))
    return PreparedData(
        manifest=data.manifest.subset(keep),
        images=np.asarray(data.images[keep]),
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
                f"study {study_name!r}: {len(done)} trial(s) already finished; running {remaining} more"
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
            f"trial {trial.number:>3} {trial.state.name.lower():<8} {value:<24} {best}  {seconds:.0f}s  {params}"
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
                console.print(f"[yellow]skipped {name}: {exc}[/]")
                continue
            fig = ax.figure if not isinstance(ax, np.ndarray) else ax.flat[0].figure
            made.append(save_figure(fig, folder / name))
            plt.close(fig)
    return made

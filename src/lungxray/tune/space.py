"""The search space of ``lungxray tune``: YAML entries -> typed ``ParamSpec`` per dotted config key,
sampling one trial's values, and applying them to a base config.

A space file maps dotted config keys (``train.lr``, ``model.kwargs.width``) to ``{type: float|int|
categorical, low, high, step, log, choices, when}``; ``when`` makes a key conditional on earlier ones.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lungxray.config import Config, apply_overrides, to_dict
from lungxray.errors import ConfigError, check_option

SPACE_TYPES = ("float", "int", "categorical")
SPEC_FIELDS = ("type", "low", "high", "step", "log", "choices", "when")
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

"""Every setting as a dataclass; the single place for defaults; YAML in and out.

Precedence: dataclass defaults <- YAML file <- CLI overrides (``{"train.lr": 1e-3}``). The fully
resolved config is written to ``runs/<name>/config.yaml`` so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lungxray.errors import ConfigError, check_option

RESIZE_MODES = ("stretch", "pad")  # how an image becomes square: see data.preprocess.to_model_input
WINDOWS = ("none", "clahe", "percentile")  # intensity standardisation: see data.preprocess.apply_window
CROPS = ("none", "lungs")  # "lungs": crop to the lung fields' box (needs data.lungs); see lungxray.focus

TASKS = ("binary", "multiclass", "multilabel")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "onecycle")
BALANCE = ("none", "weights", "sampler", "source-sampler")
TRANSFER = ("finetune", "freeze", "freeze-then-finetune")
THRESHOLD_STRATEGIES = ("0.5", "youden", "max-f1", "sensitivity>=X", "specificity>=X")
MONITORS = ("auc", "loss", "accuracy", "f1")
MAX_TTA_VIEWS = 7  # len(lungxray.models.tta.VIEWS)


@dataclass
class SourceConfig:
    """One data source of a multi-source recipe (``data.sources``); see docs/multi-source.md."""

    path: str = ""
    csv: str | None = None  # label table; relative to `path` unless absolute
    name: str | None = None  # default: the folder name of `path` (or of the CSV's folder)
    # source label -> task class, or null to drop rows with that label; empty = labels kept as they are.
    # A row is class C if exactly one positive (non-normal) class is mapped from its labels; it is the
    # normal class only if every one of its labels maps to it; otherwise it is dropped.
    label_map: dict[str, Any] = field(default_factory=dict)
    file_col: str | None = None
    label_col: str | None = None
    patient_col: str | None = None
    split_col: str | None = None  # e.g. a column holding the source's own train/test split
    label_sep: str = "|"

    @property
    def source_name(self) -> str:
        """``name``, else the folder name of ``path`` (or of the CSV's folder)."""
        return self.name or Path(self.path).name or Path(self.csv or "").parent.name or "source"


@dataclass
class DataConfig:
    """Where the images are, how labels and patients are read, and how images are preprocessed."""

    path: str = ""
    csv: str | None = None  # label table; relative to `path` unless absolute
    file_col: str | None = None  # default: first of "Image Index", "path", "file", "filename"
    label_col: str | None = None  # default: first of "Finding Labels", "label", "labels", "class"
    patient_col: str | None = None  # default: "Patient ID" when present, else file-name rules
    split_col: str | None = None  # optional column holding train/val/test
    label_sep: str = "|"
    binary_negative: str | None = None  # e.g. "No Finding": that label -> normal, any other -> abnormal
    task: str | None = None  # binary | multiclass | multilabel; inferred when None
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # used only when the source has no test split
    size: int = 128  # square input side, pixels
    resize: str = "stretch"  # stretch | pad (keep aspect ratio, pad with black)
    cache_dir: str | None = None  # default ~/.cache/lungxray (or $LUNGXRAY_CACHE)
    # seeded subsample of every row (a predefined test split too), stratified by split and label: smoke
    # runs; evaluate a subsampled run on the whole test split with `lungxray evaluate RUN --data DATA`
    max_images: int | None = None
    # who the model is for, in words shown on the model card and checked against DICOM headers, e.g.
    # "pediatric, 1-5 years, one hospital in Guangzhou" (age rule: lungxray.data.dicom_header)
    population: str | None = None
    # several sources (folders / CSVs, each with its label mapping); empty = the single path/csv above
    sources: list[SourceConfig] = field(default_factory=list)
    # lung-focused preprocessing (lungxray.focus, docs/lungs.md); each switch on its own, all off by default
    window: str = "none"  # none | clahe | percentile (clip to the 1st..99th percentile, rescale)
    lungs: str | None = None  # a lung-field run (`lungxray train-lungs`): needed by crop / mask_outside
    crop: str = "none"  # none | lungs (crop to the lung fields' bounding box)
    crop_margin: float = 0.1  # fraction of the box's side added on every side
    mask_outside: bool = False  # blank (0) everything outside the dilated lung fields
    suppress_markers: bool = False  # replace small bright text / side markers by the local background


@dataclass
class ModelConfig:
    """Which architecture, and optional transfer learning from a local weights file."""

    name: str = "cnn-small"
    weights: str | None = None  # local .safetensors / state dict, or a run directory
    transfer: str = "finetune"  # finetune | freeze | freeze-then-finetune
    freeze_epochs: int = 0  # epochs frozen before unfreezing (freeze-then-finetune)
    finetune_lr_scale: float = 0.1  # LR multiplier once unfrozen
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments to the model factory


@dataclass
class AugmentConfig:
    """Batched, on-device augmentation strengths; 0 disables one. Defaults suit frontal CXRs."""

    rotate: float = 7.0  # max degrees
    shift: float = 0.05  # max fraction of the side
    zoom: float = 0.08  # max relative scale change
    shear: float = 3.0  # max degrees
    hflip: float = 0.0  # probability; off by default (the heart is on the left)
    brightness: float = 0.1  # max additive change, intensity units in [0, 1]
    contrast: float = 0.1  # max relative change
    gamma: float = 0.1  # max relative change of the gamma exponent


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: int = 8
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd / rmsprop
    schedule: str = "onecycle"  # constant | cosine | onecycle
    warmup_epochs: float = 0.5
    # none | weights (loss weights) | sampler (class-balanced sampling) | source-sampler (classes balanced
    # within each data source, each source keeping its share: a source's prevalence cannot be learned
    # as a prior, docs/multi-source.md)
    balance: str = "weights"
    label_smoothing: float = 0.0
    # mixup (Zhang et al. 2018): Beta(alpha, alpha) mixing weight of a batch with its reverse; 0 = off
    # (no extra random draws). Works with every task's loss and the class weights (docs/ensembles.md)
    mixup: float = 0.0
    # k-fold ensemble: >= 2 trains one member per patient-grouped fold of train+val and chooses the
    # threshold on the pooled out-of-fold predictions (docs/ensembles.md); 0 / 1 = one model
    folds: int = 0
    grad_clip: float | None = 5.0  # max global gradient norm
    ema: float | None = None  # EMA decay of weights, e.g. 0.999
    amp: bool = True  # bf16 autocast on CUDA; on CPU only with cpu_fast_paths
    channels_last: bool = True  # on CUDA; on CPU only with cpu_fast_paths
    # also take amp / channels_last on CPU: 2-3x faster training on CPUs with AVX512-BF16 or AMX
    # (docs/benchmarks.md, "Training throughput"), slower where bf16 is emulated; weights stay float32
    cpu_fast_paths: bool = False
    early_stopping: int | None = None  # patience in epochs on the validation monitor
    monitor: str = "auc"  # validation metric for best checkpoint: auc | loss | accuracy | f1
    seed: int = 0
    # CUDA: deterministic cuDNN kernels, so a seed repeats a run and --resume continues it bit for bit
    # (slower); off, cuDNN autotunes its kernels. CPU runs are deterministic either way.
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads; None = all cores
    track: str | None = None  # "mlflow" to log to a local MLflow store


@dataclass
class EvalConfig:
    """How the operating threshold is chosen (on validation) and how CIs are computed."""

    threshold: str = "youden"  # 0.5 | youden | max-f1 | sensitivity>=0.95 | specificity>=0.9
    bootstrap: int = 1000
    ci: float = 0.95
    # test-time augmentation: average the logits over the first N fixed views of
    # lungxray.models.tta.VIEWS (identity, zoom, shifts; never a flip); 0 / 1 = off. Recorded in
    # model.json, so calibration, predict, evaluate, serve and export all apply it
    tta: int = 0


@dataclass
class Config:
    """A complete, resolved recipe."""

    name: str = "run"
    out: str | None = None  # run directory; default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> Config:
        """Check option strings and ranges; raise ConfigError naming the field."""
        if self.data.task is not None:
            check_option(self.data.task, TASKS, "data.task")
        check_option(self.data.resize, RESIZE_MODES, "data.resize")
        check_option(self.data.window, WINDOWS, "data.window")
        check_option(self.data.crop, CROPS, "data.crop")
        if not 0.0 <= self.data.crop_margin <= 0.5:
            raise ConfigError(f"data.crop_margin must be in [0, 0.5], got {self.data.crop_margin}.")
        if (self.data.crop != "none" or self.data.mask_outside) and not self.data.lungs:
            raise ConfigError(
                "data.crop=lungs and data.mask_outside need data.lungs: a lung-field run directory. "
                "Train one with `lungxray train-lungs DATA/lung_masks --out runs/lungs`, then "
                "`--set data.lungs=runs/lungs`."
            )
        check_option(self.train.optimizer, OPTIMIZERS, "train.optimizer")
        check_option(self.train.schedule, SCHEDULES, "train.schedule")
        check_option(self.train.balance, BALANCE, "train.balance")
        check_option(self.train.monitor, MONITORS, "train.monitor")
        check_option(self.model.transfer, TRANSFER, "model.transfer")
        parse_threshold_strategy(self.eval.threshold)
        names = [s.source_name for s in self.data.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources need distinct names (set `name`), got {names}.")
        for name, value, lo, hi in [
            ("data.val_fraction", self.data.val_fraction, 0.0, 0.9),
            ("data.test_fraction", self.data.test_fraction, 0.0, 0.9),
            ("train.label_smoothing", self.train.label_smoothing, 0.0, 0.5),
        ]:
            if not lo <= value <= hi:
                raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}.")
        for name, value in [
            ("data.size", self.data.size),
            ("train.epochs", self.train.epochs),
            ("train.batch_size", self.train.batch_size),
        ]:
            if int(value) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}.")
        if not 0.0 <= self.train.mixup <= 10.0:
            raise ConfigError(f"train.mixup (Beta alpha) must be in [0, 10], got {self.train.mixup}.")
        if int(self.train.folds) < 0 or int(self.train.folds) > 20:
            raise ConfigError(f"train.folds must be 0 (off) or 2..20, got {self.train.folds}.")
        if not 0 <= int(self.eval.tta) <= MAX_TTA_VIEWS:
            raise ConfigError(f"eval.tta must be 0 (off) or up to {MAX_TTA_VIEWS} views, got {self.eval.tta}.")
        if self.train.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.train.lr}.")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name


def parse_threshold_strategy(text: str) -> tuple[str, float | None]:
    """``"sensitivity>=0.95"`` -> ``("sensitivity", 0.95)``; ``"youden"`` -> ``("youden", None)``."""
    text = str(text).strip()
    for kind in ("sensitivity", "specificity"):
        if text.startswith(kind + ">="):
            try:
                value = float(text[len(kind) + 2 :])
            except ValueError:
                value = -1.0
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"threshold {text!r}: the target after '>=' must be in (0, 1].")
            return kind, value
    if text in ("0.5", "youden", "max-f1"):
        return text, None
    check_option(text, THRESHOLD_STRATEGIES, "threshold strategy")
    raise AssertionError("unreachable")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from a nested dict, rejecting unknown keys with a suggestion."""
    return _build(Config, data or {}, "")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        check_option(key, names, f"config key in {prefix or 'top level'}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value or [], list):
                raise ConfigError(f"{prefix}{key} must be a list, got {type(value).__name__}.")
            item = typing.get_args(hint)[0]
            kwargs[key] = [_build(item, v or {}, f"{prefix}{key}[{i}].") for i, v in enumerate(value or [])]
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Coerce YAML/CLI scalars to the annotated type (``"1e-3"`` -> float) with a clear error."""
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType) else hint
    if typing.get_origin(target) is dict or target is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}.")
        return dict(value)
    try:
        if target is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if target is float:
            return float(value)
        if target is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {value!r} as {target.__name__}.") from None
    return value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML at ``path`` <- ``overrides`` (dotted keys). Returns a validated Config."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist.")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    cfg = from_dict(data)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg.validate()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "model.kwargs={width: 24}"]`` -> dotted overrides (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.001), got {item!r}.")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with dotted-key overrides applied (``{"train.lr": 0.01}``)."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"unknown config key {key!r}.")
            node = node[part]
        if parts[-1] not in node:
            check_option(parts[-1], list(node), f"config key in {'.'.join(parts[:-1]) or 'top level'}")
        node[parts[-1]] = value
    return from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    from lungxray.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

"""RunCard: the typed ``model.json`` of a run, and the one place its rules live.

A run directory is ``model.safetensors`` (weights, plus OOD statistics under ``__ood__.``) and
``model.json``, which this module reads and writes. Every stage that needs to know how a run
preprocesses an image, turns a probability into a label or chooses the class to explain asks the
card (``card.decide(prob)``, ``card.explain_target(prob)``), so those rules exist once.

Schema (``schema_version`` 2)::

    name, architecture, model_kwargs, task, classes,
    preprocessing {input_size, resize, in_chans, normalization {mean, std},
                   window, crop, crop_margin, mask_outside, suppress_markers, lungs_sha1},
    ood {method, dim, threshold, quantile, fitted_on} | null,
    training {data, csv, counts, unreadable, epochs_run, best_epoch, best_val, seconds, ...},
    calibrations [{name, created, split, strategy, threshold | thresholds, temperature, n, ...}, ...],
    population, created, lungxray_version, disclaimer, tta (only when >= 2: test-time views)

The operating point in force is the LAST calibration entry: training appends the validation one, a
later site calibration appends its own, and nothing is ever overwritten. Version-1 files (written
before the RunCard existed, flat keys) are upgraded in memory by ``upgrade_v1`` and on disk by
``lungxray upgrade-run RUN``.

Example::

    card = RunCard.read("runs/cpu-default")
    labels = card.decide(prob)          # prob (N, K) model probabilities -> (N,) class indices
    card.label_names(labels[0])         # -> "PNEUMONIA"
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lungxray import DISCLAIMER, __version__
from lungxray.errors import RunError, check_option

SCHEMA_VERSION = 2
FILENAME = "model.json"
# "segmentation": a lung-field model (lungxray.segmentation); classes ("lung",), its calibration
# threshold is the mask threshold on the per-pixel probability.
TASKS = ("binary", "multiclass", "multilabel", "segmentation")
# Keys a version-1 model.json must have to be upgraded.
_V1_REQUIRED = ("architecture", "classes", "task", "input_size", "in_chans", "normalization")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded (H, W) float image becomes the model's input; shared by every stage.

    ``input_size`` px square; ``resize`` "stretch" | "pad"; the uint8 image / 255 is standardised
    with ``mean`` / ``std`` and repeated to ``in_chans`` channels. The lung-focused options
    (``lungxray.focus``; absent from older model.json files = off): ``window`` "none" | "clahe" |
    "percentile"; ``crop`` "none" | "lungs" with ``crop_margin``; ``mask_outside``; ``suppress_markers``;
    ``lungs_sha1``: the sha1 of the lung model's weights, copied into ``RUN/lungs/`` (None when no
    option uses the lung model).
    """

    input_size: int
    resize: str = "stretch"
    in_chans: int = 1
    mean: float = 0.449
    std: float = 0.226
    window: str = "none"
    crop: str = "none"
    crop_margin: float = 0.1
    mask_outside: bool = False
    suppress_markers: bool = False
    lungs_sha1: str | None = None

    @property
    def normalization(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @property
    def uses_lungs(self) -> bool:
        """True when an option needs the lung-field model (crop, mask, or markers with known lungs)."""
        return self.lungs_sha1 is not None

    @property
    def is_default(self) -> bool:
        """True when the image pipeline is plain ``to_model_input`` (no lung-focused option on)."""
        return not (self.window != "none" or self.crop != "none" or self.mask_outside or self.suppress_markers
                    or self.uses_lungs)  # fmt: skip

    def focus_dict(self) -> dict[str, Any]:
        """The lung-focused options (what ``lungxray.focus`` applies after decoding)."""
        return {k: getattr(self, k) for k in _FOCUS_KEYS}

    def describe(self) -> str:
        """One line for the model card and the report, e.g. "128 x 128 px, resize stretch, window clahe"."""
        parts = [f"{self.input_size} x {self.input_size} px", f"resize {self.resize}"]
        parts += ["text/markers suppressed"] * self.suppress_markers
        parts += [f"cropped to the lung fields (margin {self.crop_margin:g})"] * (self.crop == "lungs")
        parts += ["outside the lung fields blanked"] * self.mask_outside
        parts += [f"intensity window {self.window}"] * (self.window != "none")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "resize": self.resize, "in_chans": self.in_chans,
                "normalization": self.normalization, **self.focus_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        norm = d.get("normalization") or {}
        sha1 = d.get("lungs_sha1")
        return cls(
            input_size=int(d["input_size"]), resize=str(d.get("resize", "stretch")),
            in_chans=int(d.get("in_chans", 1)), mean=float(norm.get("mean", 0.449)),
            std=float(norm.get("std", 0.226)), window=str(d.get("window", "none")),
            crop=str(d.get("crop", "none")), crop_margin=float(d.get("crop_margin", 0.1)),
            mask_outside=bool(d.get("mask_outside", False)), suppress_markers=bool(d.get("suppress_markers", False)),
            lungs_sha1=None if sha1 is None else str(sha1),
        )  # fmt: skip


_FOCUS_KEYS = ("window", "crop", "crop_margin", "mask_outside", "suppress_markers", "lungs_sha1")


@dataclass(frozen=True)
class OODSpec:
    """Out-of-distribution scoring: Mahalanobis distance to training features (mean / precision are
    stored in model.safetensors under ``__ood__.``); ``threshold`` is the ``quantile`` of validation
    distances."""

    threshold: float
    dim: int
    method: str = "mahalanobis"
    quantile: float | None = None
    fitted_on: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> OODSpec | None:
        if not d or d.get("threshold") is None:
            return None
        q = d.get("quantile")
        return cls(
            threshold=float(d["threshold"]),
            dim=int(d.get("dim", 0)),
            method=str(d.get("method", "mahalanobis")),
            quantile=None if q is None else float(q),
            fitted_on=d.get("fitted_on"),
        )


@dataclass(frozen=True)
class Calibration:
    """One operating point: how probabilities become decisions, where it came from and when.

    ``threshold`` (binary: positive when P(positive) >= threshold) or ``thresholds`` (multilabel, one
    per class); multiclass uses argmax and stores neither. ``temperature`` divides the logits before
    the activation (1.0 = none); ``bias`` (binary, bias-corrected temperature scaling) is then added to
    the logit: calibrated P = sigmoid(logit / temperature + bias). ``split`` names the data it was chosen on ("val" at training time,
    or a site's sample), ``n`` its size, ``fingerprint`` a hash of its files. ``adapted_on``: the
    number of site images the model's BatchNorm statistics were adapted on when this entry was made
    (``calibrate --adapt-bn``; the weights changed with it), None when the model was not adapted.
    """

    strategy: str
    split: str = "val"
    threshold: float | None = None
    thresholds: tuple[float, ...] | None = None
    temperature: float = 1.0
    bias: float | None = None
    name: str = "training"
    created: str = ""
    n: int | None = None
    fingerprint: str | None = None
    notes: str | None = None
    adapted_on: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.thresholds is not None:
            d["thresholds"] = list(self.thresholds)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        ts = d.get("thresholds")
        t = d.get("threshold")
        return cls(
            strategy=str(d.get("strategy", "0.5")),
            split=str(d.get("split", "val")),
            threshold=None if t is None else float(t),
            thresholds=None if ts is None else tuple(float(x) for x in ts),
            temperature=float(d.get("temperature", 1.0)),
            bias=None if d.get("bias") is None else float(d["bias"]),
            name=str(d.get("name", "training")),
            created=str(d.get("created", "")),
            n=None if d.get("n") is None else int(d["n"]),
            fingerprint=d.get("fingerprint"),
            notes=d.get("notes"),
            adapted_on=None if d.get("adapted_on") is None else int(d["adapted_on"]),
        )


@dataclass(frozen=True)
class TrainingSummary:
    """What training recorded about itself (for the report and the model card)."""

    data: str | None = None
    csv: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    unreadable: int = 0
    copies_across_splits: int | None = None  # images of a later split that copy an earlier split's (leakage)
    epochs_run: int | None = None
    best_epoch: int | None = None
    best_val: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    images_per_s: float | None = None
    device: str | None = None
    parameters: int | None = None
    # a k-fold ensemble (train.folds): k, oof_auc, oof_auc_ci, oof_n, temperature, per-fold rows
    folds: dict[str, Any] | None = None

    @property
    def n_images(self) -> int:
        """Images over all splits and classes (a multilabel image counts once per finding)."""
        return int(sum(sum(c.values()) for c in self.counts.values() if isinstance(c, dict)))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainingSummary:
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class RunCard:
    """The typed model.json (see the module docstring). Frozen: change it with ``with_calibration``
    or ``dataclasses.replace`` and write a new file."""

    name: str
    architecture: str
    task: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    calibrations: tuple[Calibration, ...]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    ood: OODSpec | None = None
    training: TrainingSummary = field(default_factory=TrainingSummary)
    population: str | None = None
    created: str = ""
    lungxray_version: str = __version__
    disclaimer: str = DISCLAIMER
    tta: int = 0  # test-time augmentation views (lungxray.models.tta); 0 / 1 = off

    def __post_init__(self) -> None:
        check_option(self.task, TASKS, "task")
        if self.task == "binary" and len(self.classes) != 2:
            raise RunError(f"a binary run needs 2 classes, got {list(self.classes)}.")
        if not self.calibrations:
            raise RunError("a run card needs at least one calibration entry (its operating point).")

    # ------------------------------------------------------------------------------- shorthands
    @property
    def calibration(self) -> Calibration:
        """The operating point in force: the last calibration entry."""
        return self.calibrations[-1]

    @property
    def threshold(self) -> float | None:
        """Binary: P(positive) at or above which the positive class is predicted; else None."""
        if self.task != "binary":
            return None
        t = self.calibration.threshold
        return 0.5 if t is None else float(t)

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """Multilabel: one threshold per class; else None."""
        if self.task != "multilabel":
            return None
        ts = self.calibration.thresholds
        return tuple(ts) if ts is not None else (0.5,) * len(self.classes)

    @property
    def threshold_strategy(self) -> str:
        return self.calibration.strategy

    @property
    def temperature(self) -> float:
        return float(self.calibration.temperature)

    @property
    def positive_class(self) -> str | None:
        return self.classes[1] if self.task == "binary" else None

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: 1 for binary (one logit), else the number of classes."""
        return 1 if self.task == "binary" else len(self.classes)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def in_chans(self) -> int:
        return self.preprocessing.in_chans

    @property
    def resize(self) -> str:
        return self.preprocessing.resize

    @property
    def normalization(self) -> dict[str, float]:
        return self.preprocessing.normalization

    def threshold_map(self) -> float | dict[str, float] | None:
        """The operating threshold(s) as shown to users: binary a float, multilabel {class: t}."""
        if self.task == "binary":
            return self.threshold
        if self.task == "multilabel":
            return dict(zip(self.classes, self.thresholds or (), strict=True))
        return None

    # ------------------------------------------------------------------------------------ rules
    def scores(self, prob: np.ndarray) -> np.ndarray:
        """Model probabilities (N, K) -> per-class scores (N, C): binary (N, 1) -> [1 - p, p]."""
        prob = np.asarray(prob, np.float32)
        if self.task == "binary":
            p = prob.reshape(len(prob), -1)[:, -1]
            return np.stack([1.0 - p, p], axis=1)
        return prob

    def decide(self, prob: np.ndarray) -> np.ndarray:
        """Model probabilities (N, K) -> decisions at the operating point in force.

        Binary: (N,) int, 1 when P(positive) >= threshold. Multiclass: (N,) int argmax.
        Multilabel: (N, C) bool, each label at or above its threshold.
        """
        prob = np.asarray(prob, np.float64)  # compared in float64: a float32 cast could move the threshold
        if prob.ndim == 1:
            prob = prob[:, None] if self.task == "binary" else prob[None, :]
        if self.task == "binary":
            return (prob[:, 0] >= self.threshold).astype(np.int64)
        if self.task == "multiclass":
            return prob.argmax(axis=1).astype(np.int64)
        return prob >= np.asarray(self.thresholds, np.float64)[None, :]

    def label_names(self, decision: Any) -> str | list[str]:
        """One row of ``decide`` -> its label(s): a class name, or the list of positive labels."""
        if self.task == "multilabel":
            return [c for c, on in zip(self.classes, np.asarray(decision), strict=True) if on]
        return self.classes[int(decision)]

    def explain_target(self, prob: np.ndarray) -> str:
        """The class a heatmap explains by default for one image's probabilities (K,): binary the
        positive class, otherwise the most likely class or label."""
        if self.task == "binary":
            return self.classes[1]
        return self.classes[int(np.argmax(np.asarray(prob).reshape(-1)))]

    def explain_targets(self, prob: np.ndarray) -> list[str]:
        """Every class worth a heatmap for one image (K,): multilabel each positive label (or the
        top one when none is), otherwise ``[explain_target(prob)]``."""
        if self.task == "multilabel":
            positive = self.label_names(self.decide(np.asarray(prob)[None, :])[0])
            return list(positive) or [self.explain_target(prob)]
        return [self.explain_target(prob)]

    # ------------------------------------------------------------------------------ calibration
    def with_calibration(self, cal: Calibration) -> RunCard:
        """A new card whose operating point is ``cal``, appended to the history (never replacing)."""
        if self.task == "binary" and cal.threshold is None:
            raise RunError("a binary calibration needs a threshold.")
        if self.task == "multilabel" and (cal.thresholds is None or len(cal.thresholds) != len(self.classes)):
            raise RunError(f"a multilabel calibration needs {len(self.classes)} thresholds.")
        if not cal.created:
            cal = replace(cal, created=_now())
        return replace(self, calibrations=(*self.calibrations, cal))

    # ------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return _card_to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = FILENAME) -> RunCard:
        """A card from a parsed model.json (version 1 is upgraded in memory); RunError if foreign."""
        return _card_from_dict(doc, source)

    @classmethod
    def from_json(cls, text: str, source: str = FILENAME) -> RunCard:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunError(f"{source} is not valid JSON ({exc}).") from None
        return cls.from_dict(doc, source)

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> RunCard:
        """The card of a run directory; RunError saying what is missing or wrong."""
        path = Path(run_dir)
        if not path.is_dir():
            raise RunError(
                f"{path} is not a run directory (it does not exist). Train one with `lungxray train`."
            )
        meta = path / FILENAME
        if not meta.is_file():
            raise RunError(f"{path} has no {FILENAME}: it is not a finished lungxray run.")
        return cls.from_json(meta.read_text(), str(meta))

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Write ``run_dir/model.json`` atomically."""
        from lungxray.io import atomic_write_text

        return atomic_write_text(Path(run_dir) / FILENAME, self.to_json())


def _card_to_dict(card: RunCard) -> dict[str, Any]:
    """model.json's dict of a card (schema_version first)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "name": card.name,
        "architecture": card.architecture,
        "model_kwargs": dict(card.model_kwargs),
        "task": card.task,
        "classes": list(card.classes),
        "positive_class": card.positive_class,
        "preprocessing": card.preprocessing.to_dict(),
        "ood": None if card.ood is None else {k: v for k, v in asdict(card.ood).items() if v is not None},
        "training": card.training.to_dict(),
        "calibrations": [c.to_dict() for c in card.calibrations],
        "population": card.population,
        "created": card.created or _now(),
        "lungxray_version": card.lungxray_version,
        "disclaimer": card.disclaimer,
        **({"tta": card.tta} if card.tta > 1 else {}),  # absent when off: older cards read the same
    }


def _card_from_dict(doc: dict[str, Any], source: str) -> RunCard:
    """A RunCard from model.json's dict (see ``RunCard.from_dict``)."""
    if not isinstance(doc, dict):
        raise RunError(f"{source} is not a lungxray model.json (not a JSON object).")
    version = doc.get("schema_version")
    if version is None and "format_version" in doc:
        doc = upgrade_v1(doc, source)
        version = SCHEMA_VERSION
    if version is None:
        raise RunError(f"{source} has no schema_version: it was not written by lungxray.")
    if int(version) > SCHEMA_VERSION:
        raise RunError(
            f"{source} has schema_version {version}, newer than this lungxray reads "
            f"({SCHEMA_VERSION}); upgrade lungxray."
        )
    try:
        return RunCard(
            name=str(doc.get("name") or "model"),
            architecture=str(doc["architecture"]),
            task=str(doc["task"]),
            classes=tuple(str(c) for c in doc["classes"]),
            preprocessing=Preprocessing.from_dict(doc["preprocessing"]),
            calibrations=tuple(Calibration.from_dict(c) for c in doc.get("calibrations") or ()),
            model_kwargs=dict(doc.get("model_kwargs") or {}),
            ood=OODSpec.from_dict(doc.get("ood")),
            training=TrainingSummary.from_dict(doc.get("training")),
            population=doc.get("population"),
            created=str(doc.get("created") or ""),
            lungxray_version=str(doc.get("lungxray_version") or "unknown"),
            disclaimer=str(doc.get("disclaimer") or DISCLAIMER),
            tta=int(doc.get("tta") or 0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(
            f"{source} is not a valid lungxray model.json ({type(exc).__name__}: {exc})."
        ) from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def upgrade_v1(doc: dict[str, Any], source: str = FILENAME) -> dict[str, Any]:
    """A version-1 model.json (flat keys: input_size, threshold, thresholds, ...) -> the version-2 dict.

    The single operating point of a v1 run becomes the first calibration entry (split "val", its
    ``threshold_strategy``); nothing else changes meaning.
    """
    if int(doc.get("format_version", 0)) != 1:
        raise RunError(
            f"{source} has format_version {doc.get('format_version')!r}; this lungxray reads 1 and 2."
        )
    missing = [k for k in _V1_REQUIRED if k not in doc]
    if missing:
        raise RunError(f"{source} lacks the key(s) {missing}; was it written by lungxray?")
    cal: dict[str, Any] = {
        "name": "training",
        "split": "val",
        "strategy": str(doc.get("threshold_strategy", "0.5")),
        "created": doc.get("created", ""),
    }
    if doc["task"] == "binary":
        t = doc.get("threshold")
        cal["threshold"] = 0.5 if t is None else float(t)
    elif doc["task"] == "multilabel":
        cal["thresholds"] = doc.get("thresholds") or [0.5] * len(doc["classes"])
    return {
        "schema_version": SCHEMA_VERSION,
        "name": doc.get("name"),
        "architecture": doc["architecture"],
        "model_kwargs": doc.get("model_kwargs") or {},
        "task": doc["task"],
        "classes": doc["classes"],
        "preprocessing": {
            "input_size": doc["input_size"],
            "resize": doc.get("resize", "stretch"),
            "in_chans": doc["in_chans"],
            "normalization": doc["normalization"],
        },
        "ood": doc.get("ood"),
        "training": doc.get("training") or {},
        "calibrations": [cal],
        "population": doc.get("population"),
        "created": doc.get("created", ""),
        "lungxray_version": doc.get("lungxray_version", "unknown"),
        "disclaimer": doc.get("disclaimer", DISCLAIMER),
    }


def upgrade_run(run_dir: str | os.PathLike) -> bool:
    """Rewrite a run's version-1 model.json as version 2 (the old file kept as model.v1.json).

    Returns False when it already is version 2. Raises RunError for a foreign or damaged file.
    """
    from lungxray.io import atomic_write_text

    path = Path(run_dir) / FILENAME
    card = RunCard.read(run_dir)
    doc = json.loads(path.read_text())
    if doc.get("schema_version") is not None:
        return False
    atomic_write_text(path.with_name("model.v1.json"), path.read_text())
    card.write(run_dir)
    return True

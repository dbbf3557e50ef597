"""Lung-focused preprocessing: the one image pipeline of a run, rebuilt from its card everywhere.

A ``Preprocessor`` turns a decoded (H, W) float [0, 1] image into the model's (S, S) uint8 input.
Its options live in ``runcard.Preprocessing`` (model.json) and come from ``data:`` in the config:

* ``suppress_markers``: burned-in text / side markers -> local background (``data.preprocess.suppress_markers``);
* ``crop: lungs``: crop to the lung fields' bounding box plus ``crop_margin`` (before resizing);
* ``window``: "clahe" or "percentile" intensity standardisation of the resized float content;
* ``mask_outside``: everything outside the (dilated) lung fields set to 0.

With every option off it IS ``data.preprocess.to_model_input`` (byte for byte), so default runs and
their caches are unchanged. The lung fields come from a lung-field run (``lungxray train-lungs``):
training copies its ``model.json`` + ``model.safetensors`` into ``RUN/lungs/`` and records the sha1
of the weights in the card (``lungs_sha1``); predict / serve / export / evaluate load it from there
(``Preprocessor.for_run``). A mask covering under 5% (or over 90%) of the image is implausible: the
image is then used whole (``Focused.lungs == "fallback"``), counted, never an error.

A ``Preprocessor`` pickles to its options and the lung run's path (not the network): a decoding
worker process rebuilds the lung model once, with one torch thread. Import direction: this module
imports ``data`` and ``segmentation``; neither imports it.

Example::

    pre = Preprocessor.for_run(card, "runs/focus")      # or Preprocessor.from_config(cfg.data)
    x = pre(img)                                        # (S, S) uint8
    f = pre.process(img); f.box, f.lungs                # crop box (fractions), "found" | "fallback"
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungxray.config import DataConfig
from lungxray.data import preprocess as _preprocess
from lungxray.data.preprocess import (
    Box,
    apply_window,
    crop_to_box,
    dilate,
    finish,
    lung_box,
    plausible_lungs,
    resize_content,
    resize_mask,
    suppress_markers,
    to_model_input,
)
from lungxray.errors import RunError
from lungxray.runcard import Preprocessing, RunCard

FOCUS_VERSION = 1  # bump when an operation changes what it outputs (invalidates lung-focused caches only)
LUNGS_DIR = "lungs"  # RUN/lungs/: the copy of the lung-field run a run's preprocessing needs
LUNG_FILES = ("model.json", "model.safetensors")
MASK_DILATE = 0.03  # the lung fields are grown by this fraction of the side before masking / protecting

NO_LUNGS_WARNING = (
    "no plausible lung fields found: the model saw the whole image, not the lung-focused input it was "
    "trained on; do not use this score (check the image: is it a frontal chest X-ray?)"
)

LungFinder = Callable[[np.ndarray], np.ndarray]  # (H, W) float [0, 1] -> (h, w) bool lung mask, any h, w


@dataclass(frozen=True)
class Focused:
    """One preprocessed image: ``image`` (S, S) uint8; ``box`` the crop applied, (top, left, bottom,
    right) fractions of the decoded image, None = whole image; ``lungs`` "found" | "fallback" (no
    plausible lung mask: whole image used) | None (no lung model in the pipeline); ``markers`` removed."""

    image: np.ndarray
    box: Box | None
    lungs: str | None
    markers: int = 0


def lungs_sha1(lung_dir: str | os.PathLike) -> str:
    """sha1 (hex) of a lung run's ``model.safetensors``; RunError when it is missing."""
    from lungxray.inference import file_sha1

    weights = Path(lung_dir) / LUNG_FILES[1]
    if not weights.is_file():
        raise RunError(
            f"{lung_dir} is not a lung-field run (no {LUNG_FILES[1]}); train one with "
            "`lungxray train-lungs DATA/lung_masks --out runs/lungs`."
        )
    return file_sha1(weights)


def _uses_lungs(d: DataConfig) -> bool:
    return bool(d.lungs) and (d.crop != "none" or d.mask_outside or d.suppress_markers)


def preprocessing_from_config(
    d: DataConfig, *, in_chans: int = 1, mean: float = 0.449, std: float = 0.226
) -> Preprocessing:
    """The card's ``Preprocessing`` of a training config (the lung model's sha1 read from ``d.lungs``
    when an option uses it)."""
    return Preprocessing(
        input_size=int(d.size), resize=d.resize, in_chans=in_chans, mean=mean, std=std,
        window=d.window, crop=d.crop, crop_margin=float(d.crop_margin), mask_outside=bool(d.mask_outside),
        suppress_markers=bool(d.suppress_markers), lungs_sha1=lungs_sha1(d.lungs) if _uses_lungs(d) else None,
    )  # fmt: skip


def install_lungs(lung_dir: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """Copy a lung run's model.json + model.safetensors into ``run_dir/lungs/`` (a run carries the lung
    model its preprocessing needs); returns the weights' sha1. Nothing is copied when an identical
    copy is already there; RunError when ``lung_dir`` is not a lung-field run."""
    from lungxray.io import atomic_write_bytes
    from lungxray.segmentation.model import load_lung_model

    load_lung_model(lung_dir)  # RunError unless it is a loadable lung run
    sha1 = lungs_sha1(lung_dir)
    dest = Path(run_dir) / LUNGS_DIR
    if dest.is_dir() and (dest / LUNG_FILES[1]).is_file() and lungs_sha1(dest) == sha1:
        return sha1
    dest.mkdir(parents=True, exist_ok=True)
    for name in LUNG_FILES:
        atomic_write_bytes(dest / name, (Path(lung_dir) / name).read_bytes())
    return sha1


def run_lungs(card: RunCard, run_dir: str | os.PathLike) -> Path | None:
    """``run_dir/lungs`` checked against the card's ``lungs_sha1`` (None when the card needs no lungs).

    Raises RunError when the copy is missing or differs from the one the run was trained with."""
    sha1 = card.preprocessing.lungs_sha1
    if sha1 is None:
        return None
    dest = Path(run_dir) / LUNGS_DIR
    if not all((dest / f).is_file() for f in LUNG_FILES):
        raise RunError(
            f"{run_dir} was trained with lung-focused preprocessing but has no {LUNGS_DIR}/ "
            f"({', '.join(LUNG_FILES)}); copy the run directory whole, or retrain it."
        )
    found = lungs_sha1(dest)
    if found != sha1:
        raise RunError(
            f"{dest / LUNG_FILES[1]} (sha1 {found[:12]}) is not the lung model this run was trained "
            f"with (sha1 {sha1[:12]}); restore it or retrain the run."
        )
    return dest


_LUNG_MODELS: dict[tuple[str, str], Any] = {}  # (path, sha1) -> LungModel, one per process
_LOAD_LOCK = threading.Lock()


class Preprocessor:
    """A run's image pipeline: ``pre(img)`` / ``pre.process(img)`` (see the module docstring).

    Args:
        prep: the options (``runcard.Preprocessing``); ``input_size`` / ``resize`` give the output.
        lungs: where the lung fields come from when an option needs them: a lung run directory, or a
            function (H, W) float [0, 1] -> (h, w) bool mask (any resolution; module-level, so it pickles).
    """

    def __init__(self, prep: Preprocessing, lungs: str | os.PathLike | LungFinder | None = None):
        self.prep = prep
        self._lungs = os.fspath(lungs) if isinstance(lungs, (str, os.PathLike)) else lungs
        if self.needs_lungs and self._lungs is None:
            raise RunError(
                "this preprocessing needs the lung fields (data.crop=lungs, mask_outside or "
                "suppress_markers with lungs) but no lung-field run was given."
            )
        self._worker = False

    # ------------------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, d: DataConfig) -> Preprocessor:
        """The pipeline of a training config (``data.window``, ``data.crop``, ... and ``data.lungs``)."""
        return cls(preprocessing_from_config(d), d.lungs if _uses_lungs(d) else None)

    @classmethod
    def for_run(cls, card: RunCard, run_dir: str | os.PathLike) -> Preprocessor:
        """The pipeline of a finished run, its lung model from ``run_dir/lungs`` (checked: RunError)."""
        return cls(card.preprocessing, run_lungs(card, run_dir))

    # -------------------------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        return self.prep.input_size

    @property
    def resize(self) -> str:
        return self.prep.resize

    @property
    def is_default(self) -> bool:
        return self.prep.is_default

    @property
    def needs_lungs(self) -> bool:
        p = self.prep
        return p.uses_lungs or p.crop != "none" or p.mask_outside

    def _lung_key(self) -> Any:
        if self._lungs is None:
            return None
        if callable(self._lungs):
            return f"{self._lungs.__module__}.{self._lungs.__qualname__}"
        card = RunCard.read(self._lungs)  # the mask threshold and input size change the masks too
        return [self.prep.lungs_sha1 or lungs_sha1(self._lungs), card.input_size, card.calibration.threshold]

    @property
    def cache_key(self) -> str | None:
        """None for the default pipeline (the cache keeps its ``{size}-{resize}`` store); else a 12-hex
        digest of every option and of the lung model (weights sha1, input size, mask threshold)."""
        if self.is_default:
            return None
        spec = {"focus": FOCUS_VERSION, **self.prep.focus_dict(), "lungs": self._lung_key()}
        if spec["crop"] == "none":
            spec.pop("crop_margin")
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    # ----------------------------------------------------------------------------------- lungs
    def _lung_model(self) -> Any:
        from lungxray.segmentation.model import load_lung_model

        key = (str(self._lungs), self.prep.lungs_sha1 or "")
        with _LOAD_LOCK:
            if key not in _LUNG_MODELS:
                if self._worker:  # a decoding worker: one thread each (they share the cores)
                    import torch

                    torch.set_num_threads(1)
                _LUNG_MODELS[key] = load_lung_model(self._lungs)
            return _LUNG_MODELS[key]

    def find_lungs(self, img: np.ndarray) -> np.ndarray:
        """(H, W) float [0, 1] -> the lung fields, (h, w) bool (the lung model's input size)."""
        if callable(self._lungs):
            return np.asarray(self._lungs(img), bool)
        from lungxray.segmentation.model import predict_lung_masks

        lm = self._lung_model()
        x = to_model_input(img, lm.input_size, "stretch")
        return predict_lung_masks(lm, x[None])[0]

    # ------------------------------------------------------------------------------- pipeline
    def process(self, img: np.ndarray, size: int | None = None) -> Focused:
        """(H, W) float [0, 1] -> ``Focused`` at ``size`` (default the run's input size; e.g. a larger
        display copy with the same crop and mask)."""
        p = self.prep
        size = int(size or p.input_size)
        if self.is_default:  # looked up on the module: THE function (and what tests count)
            return Focused(_preprocess.to_model_input(img, size, p.resize), None, None)
        x = np.asarray(img, np.float32)
        if x.ndim != 2 or min(x.shape) < 1:
            raise ValueError(f"expected a (H, W) image, got shape {x.shape}")
        mask, state = self._locate(x)
        grown = dilate(mask, MASK_DILATE) if mask is not None else None
        markers = 0
        if p.suppress_markers:
            x, markers = suppress_markers(x, None if grown is None else resize_mask(grown, x.shape))
        box = lung_box(mask, p.crop_margin) if p.crop == "lungs" and mask is not None else None
        content = apply_window(resize_content(crop_to_box(x, box), size, p.resize), p.window)
        if p.mask_outside and grown is not None:
            keep = resize_mask(crop_to_box(grown, box), content.shape)
            content = np.where(keep, content, np.float32(0.0))
        return Focused(finish(content, size, p.resize), box, state, markers)

    def _locate(self, x: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """The lung mask (h, w) bool and "found", or (None, "fallback"); (None, None) without a lung model."""
        if not (self.needs_lungs or self._lungs is not None):
            return None, None
        found = self.find_lungs(x)
        return (found, "found") if plausible_lungs(found) else (None, "fallback")

    def lung_fields(self, img: np.ndarray, size: int | None = None) -> np.ndarray | None:
        """(H, W) float [0, 1] -> the lung fields this pipeline finds on the decoded image, undilated and
        in the frame of its output (cropped and resized like the input): (size, size) bool; None when it
        falls back (no plausible lungs) or has no lung model. What the shortcut audit of a lung-focused
        run calls "the lungs": segmenting its masked or cropped input instead would miss part of them."""
        size = int(size or self.prep.input_size)
        x = np.asarray(img, np.float32)
        mask, _ = self._locate(x)
        if mask is None:
            return None
        box = lung_box(mask, self.prep.crop_margin) if self.prep.crop == "lungs" else None
        return to_model_input(crop_to_box(mask.astype(np.float32), box), size, self.prep.resize) >= 128

    def __call__(self, img: np.ndarray, size: int | None = None) -> np.ndarray:
        """(H, W) float [0, 1] -> (size, size) uint8 (``process(img, size).image``)."""
        return self.process(img, size).image

    # ------------------------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        return {"prep": self.prep, "lungs": self._lungs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.prep, self._lungs, self._worker = state["prep"], state["lungs"], True

    def __repr__(self) -> str:
        return f"Preprocessor({self.prep.describe()})"


"""The prediction pass: inputs (files, arrays, uploaded bytes) -> ``Record``s, each decoded ONCE.

``predict_records`` decodes each input with ``data.imageio`` (the reader of training), preprocesses it
with the run's ``focus.Preprocessor`` (what fills the training cache: ``data.preprocess.to_model_input``
unless lung-focused options are on), runs one batched
forward pass per ``batch_size`` inputs on the run's backend (``inference.TorchBackend`` or
``inference.OnnxBackend``, chosen once at load) and yields, in input order, one ``Record`` per input:
the decoded image, the model input ``x``, the probabilities, the out-of-distribution score and the
labelled ``Prediction`` (the RunCard's rules). Everything downstream consumes records: the CSV/JSON
writer and the terminal table (``predict_output``), the heatmap writer and ``explain_files``
(``explain``), and the web server; none decodes, preprocesses or runs the model again. A file that
cannot be read becomes a record with ``error`` set; the other inputs are still predicted.

Example::

    predictor = Predictor.load("runs/kermany")
    for rec in predictor.records(predictor.expand_inputs(["new_xrays/"])):
        print(rec.name, rec.prediction.label, rec.prediction.score, rec.prediction.ood, rec.error)
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungxray.data.dicom_header import header_warnings
from lungxray.errors import ConfigError, DataError, ImageReadError, check_option
from lungxray.focus import NO_LUNGS_WARNING, Focused
from lungxray.gate import Gate, gate_warning
from lungxray.inference import BACKENDS
from lungxray.predict_output import render_predictions, write_predictions

__all__ = [
    "BACKENDS",
    "Prediction",
    "Predictor",
    "Record",
    "Source",
    "make_prediction",
    "predict_records",
    "render_predictions",
    "write_predictions",
]


@dataclass
class Prediction:
    """The result for one input.

    Attributes:
        path: the file (or ``<array i>`` / the upload's name) this row is about.
        probabilities: class -> probability in [0, 1]; binary: both classes (``1 - p``, ``p``);
            multiclass: softmax (sums to 1); multilabel: independent sigmoids. Empty on error.
        label: binary / multiclass: the predicted class name; multilabel: the list of positive labels
            (each at or above its threshold; may be empty). None on error.
        score: binary: P(positive class); multiclass: probability of ``label``; multilabel: the
            largest label probability. None on error.
        threshold: binary: the run's operating threshold (positive if ``score >= threshold``);
            multilabel: {label: threshold}; multiclass: None (argmax).
        ood_score: Mahalanobis distance of the image's features to the training X-rays (standard
            deviations); None when the run has no OOD statistics or on error.
        ood: True when ``ood_score`` exceeds the run's threshold (the 99th percentile of validation
            X-rays): the input does not look like the training data, so the label is unreliable.
        error: why the input could not be predicted (e.g. "empty file (0 bytes)"), else None.
        warnings: what the input's DICOM header says against using the score (lateral view, not CR/DX,
            not chest, age outside the run's ``population``; ``lungxray.data.dicom_header``), and, for
            a lung-focused run, ``NO_LUNGS_WARNING`` when no plausible lung fields were found, and with a
            population gate attached (``lungxray.gate``), ``gate_warning`` when it flags the input; [] else.
    """

    path: str
    probabilities: dict[str, float] = field(default_factory=dict)
    label: str | list[str] | None = None
    score: float | None = None
    threshold: float | dict[str, float] | None = None
    ood_score: float | None = None
    ood: bool | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


@dataclass
class Record:
    """One input after the prediction pass (see the module docstring).

    Attributes:
        name: the file path, ``<array i>`` or the upload's name (= ``prediction.path``).
        prediction: the labelled result (``error`` set when the input could not be used).
        image: the decoded (H, W) float32 in [0, 1]; None on error or once a consumer dropped it.
        x: the model input (S, S) uint8, exactly what the training cache holds; None on error.
        prob: model probabilities (K,) float32 (K = 1 for binary); None on error.
        ood_score: Mahalanobis distance of the features; None without OOD statistics or on error.
        error: why the input could not be used, else None.
        gate_x: the attached population gate's input (S', S') uint8 when a worker made it, else None
            (then the gate reads ``image``).
        seconds: {"decode": decode + preprocess of this input, "predict": its batch's forward pass}.
    """

    name: str
    prediction: Prediction
    image: np.ndarray | None = None
    x: np.ndarray | None = None
    prob: np.ndarray | None = None
    ood_score: float | None = None
    error: str | None = None
    gate_x: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """One input to the pass: a name and how to decode it (called exactly once)."""

    name: str
    load: Callable[[], np.ndarray]
    raw: str | bytes | None = None  # the file path or upload bytes, for the DICOM header check

    @classmethod
    def path(cls, path: str | os.PathLike) -> Source:
        from lungxray.data import imageio  # looked up at call time: one reader for every stage

        return cls(str(path), lambda: imageio.read_image(path), str(path))

    @classmethod
    def array(cls, array: np.ndarray, name: str) -> Source:
        """A decoded image: float in [0, 1], uint8 (/255) or uint16 (/65535); ValueError if not one."""
        return cls(name, lambda: _as_unit_image(array))

    @classmethod
    def upload(cls, data: bytes, name: str = "<upload>") -> Source:
        from lungxray.data import imageio

        return cls(name, lambda: imageio.read_image_bytes(data, name=name), data)


def _as_source(item: Source | str | os.PathLike | np.ndarray, i: int) -> Source:
    if isinstance(item, Source):
        return item
    if isinstance(item, np.ndarray):
        return Source.array(item, f"<array {i}>")
    return Source.path(item)


def predict_records(
    predictor: Predictor, inputs: Iterable[Source | str | os.PathLike | np.ndarray], batch_size: int = 32
) -> Iterator[Record]:
    """The prediction pass: one ``Record`` per input, in order.

    Each input is decoded once and preprocessed once; ``batch_size`` model inputs go through one
    forward pass (``predictor.predict_images``). Only one batch of decoded images is held here: a
    record's ``image`` lives as long as its consumer keeps the record.

    Args:
        predictor: a loaded ``Predictor``.
        inputs: ``Source``s, file paths or (H, W) arrays (named ``<array i>``).
        batch_size: inputs per forward pass (>= 1).

    Raises:
        ConfigError: batch_size below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    pending: list[Record] = []
    n_ok = 0
    for i, item in enumerate(inputs):
        src = _as_source(item, i)
        rec = Record(name=src.name, prediction=Prediction(path=src.name))
        t0 = time.perf_counter()
        try:
            rec.image = src.load()
            focused = predictor.focus(rec.image)
            rec.x = focused.image
            rec.prediction.warnings = header_warnings(src.raw, predictor.card.population)
            if focused.lungs == "fallback":
                rec.prediction.warnings.append(NO_LUNGS_WARNING)
        except ImageReadError as exc:
            rec.error = exc.reason
        except ValueError as exc:  # an array that is not an image
            rec.error = str(exc)
        rec.seconds["decode"] = time.perf_counter() - t0
        if rec.error is not None:
            rec.image = rec.x = None
            rec.prediction.error = rec.error
        else:
            n_ok += 1
        pending.append(rec)
        if n_ok >= batch_size:
            yield from _forward(predictor, pending)
            pending, n_ok = [], 0
    yield from _forward(predictor, pending)


def _forward(predictor: Predictor, batch: list[Record]) -> Iterator[Record]:
    """One forward pass over the readable records of ``batch``; fills prob, OOD and the Prediction."""
    ok = [r for r in batch if r.error is None]
    if ok:
        t0 = time.perf_counter()
        prob, dist = predictor.predict_images(np.stack([r.x for r in ok]), batch_size=len(ok))
        gate = getattr(predictor, "gate", None)
        p_out = None
        if gate is not None and all(r.gate_x is not None for r in ok):
            p_out = gate.scores_of_inputs(np.stack([r.gate_x for r in ok]))
        elif gate is not None:
            p_out = gate.scores([r.image for r in ok])
        seconds = time.perf_counter() - t0
        for k, rec in enumerate(ok):
            rec.prob = prob[k]
            rec.ood_score = None if dist is None else float(dist[k])
            warns = rec.prediction.warnings
            rec.prediction = make_prediction(predictor.card, rec.name, rec.prob, rec.ood_score)
            if p_out is not None and p_out[k] >= gate.threshold:
                warns = [*warns, gate_warning(float(p_out[k]), gate.threshold)]
            rec.prediction.warnings = warns
            rec.seconds["predict"] = seconds
    yield from batch


def make_prediction(card: Any, name: str, prob: np.ndarray, ood_score: float | None) -> Prediction:
    """One row of model probabilities (K,) + OOD distance -> a labelled ``Prediction`` (card rules)."""
    row = np.asarray(prob, np.float32)[None, :]
    scores = card.scores(row)[0]
    label = card.label_names(card.decide(row)[0])
    if card.task == "binary":
        score = float(scores[1])
    elif card.task == "multiclass":
        score = float(scores[card.classes.index(label)])
    else:
        score = float(np.max(scores))
    t_ood = None if card.ood is None else card.ood.threshold
    return Prediction(
        path=name,
        probabilities={c: float(s) for c, s in zip(card.classes, scores, strict=True)},
        label=label,
        score=score,
        threshold=card.threshold_map(),
        ood_score=ood_score,
        ood=None if ood_score is None or t_ood is None else bool(ood_score > t_ood),
    )


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files and folders -> the files to predict, in the order given.

    A folder expands to its image files (by suffix, recursively, sorted); an explicit file is kept
    whatever its suffix or existence, so it gets a row with the reason it cannot be read.

    Raises:
        DataError: nothing to predict (no inputs, or only folders without image files).
    """
    from lungxray.data.imageio import is_image_path

    out: list[Path] = []
    empty: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not found:
                empty.append(str(p))
            out.extend(found)
        else:
            out.append(p)
    if not out:
        where = f" (no image files in {', '.join(empty)})" if empty else ""
        raise DataError(f"nothing to predict{where}. Give image files or folders that contain them.")
    return out


class Predictor:
    """A trained run ready to predict: model, backend, preprocessing, thresholds, OOD statistics.

    Build it with ``Predictor.load(run_dir)``. Thread-safe for prediction (no shared mutable state in
    the forward pass); hook-based work such as Grad-CAM goes through ``hooked_model()``, which hands
    out a private copy of the PyTorch model one caller at a time.
    """

    expand_inputs = staticmethod(expand_inputs)

    def __init__(self, loaded: Any, *, backend: str = "torch", device: str = "cpu"):
        from lungxray.focus import Preprocessor
        from lungxray.inference import load_backend, resolve_device

        self.run_dir = Path(loaded.path)
        self.card = loaded.card
        # the run's image pipeline (lung-focused options, its lung model from RUN/lungs/): RunError if missing
        self.preprocessor = Preprocessor.for_run(self.card, self.run_dir)
        self.model = loaded.model
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.gate = Gate.for_run(self.run_dir)  # the attached population gate (RUN/gate/), or None
        self._ood_mean = loaded.ood.get("mean")
        self._ood_precision = loaded.ood.get("precision")
        # chosen once: the forward path (predict_images) never asks which backend it has
        self.backend: Any = load_backend(backend, loaded, self.device, features=self.has_ood)
        self._hook_lock = threading.Lock()
        self._hook_model: Any = None

    @classmethod
    def load(cls, run: str | os.PathLike, backend: str = "torch", device: str = "cpu") -> Predictor:
        """Rebuild a run's model from model.json + model.safetensors (never unpickled).

        Args:
            run: the run directory.
            backend: ``"torch"``, or ``"onnx"`` to run RUN/model.onnx with ONNX Runtime (make it with
                ``lungxray export RUN``; the PyTorch model is still loaded for Grad-CAM).
            device: ``"cpu"`` (default), ``"cuda"``, ``"auto"``; torch backend only.

        Raises:
            RunError: not a run directory, weights missing or not matching, model.onnx missing/stale.
            ConfigError: unknown backend.
        """
        from lungxray.rundir import load_run

        check_option(backend, BACKENDS, "prediction backend")
        return cls(load_run(run), backend=backend, device=device)

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def resize(self) -> str:
        return self.card.resize

    @property
    def ood_threshold(self) -> float | None:
        return None if self.card.ood is None else self.card.ood.threshold

    @property
    def has_ood(self) -> bool:
        return self._ood_mean is not None and self._ood_precision is not None

    def focus(self, image: np.ndarray) -> Focused:
        """(H, W) float [0, 1] -> ``focus.Focused``: the model input plus what the lung step did
        (``lungs == "fallback"``: no plausible lung fields, the whole image was used)."""
        return self.preprocessor.process(image)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float [0, 1] -> the model-ready (S, S) uint8, exactly as the training cache holds it
        (the run's ``focus.Preprocessor``: plain ``to_model_input`` unless lung-focused options are on)."""
        return self.preprocessor(image)

    def preprocess_path(self, path: str | os.PathLike) -> np.ndarray:
        """Read one file and preprocess it: (S, S) uint8. Raises ImageReadError."""
        return self.preprocess(Source.path(path).load())

    def predict_images(
        self, images: np.ndarray, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model-ready uint8 (N, S, S) -> probabilities (N, K) float32 and OOD distances (N,) or None."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"expected uint8 (N, {self.input_size}, {self.input_size}), got {images.shape}")
        prob, feat = self.backend.run(images, batch_size)
        if not self.has_ood or feat is None:
            return prob, None
        from lungxray.ood import mahalanobis

        return prob, mahalanobis(feat, self._ood_mean, self._ood_precision)

    def records(
        self, inputs: Iterable[Source | str | os.PathLike | np.ndarray], batch_size: int = 32
    ) -> Iterator[Record]:
        """``predict_records(self, inputs, batch_size)``: the prediction pass as a stream of records."""
        return predict_records(self, inputs, batch_size)

    def predict_paths(self, paths: Sequence[str | os.PathLike], batch_size: int = 32) -> list[Prediction]:
        """Predict files, ``batch_size`` at a time (only one batch of decoded images is ever held).

        Returns one ``Prediction`` per path, in order; unreadable files get ``error`` (the reason from
        ``ImageReadError``) and do not stop the others.
        """
        return [r.prediction for r in self.records([Source.path(p) for p in paths], batch_size)]

    def predict_arrays(
        self,
        arrays: np.ndarray | Sequence[np.ndarray],
        batch_size: int = 32,
        names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Predict decoded images: a list of (H, W) arrays or one (N, H, W) array.

        Values are float in [0, 1] (uint8 is divided by 255, uint16 by 65535). Rows are named
        ``<array i>`` unless ``names`` is given; an unusable array (wrong shape, NaN, out of range)
        gets ``error`` and the others are still predicted.
        """
        if isinstance(arrays, np.ndarray) and arrays.ndim == 2:
            arrays = [arrays]
        names = list(names) if names is not None else [f"<array {i}>" for i in range(len(arrays))]
        if len(names) != len(arrays):
            raise ValueError(f"{len(names)} names for {len(arrays)} arrays")
        sources = [Source.array(a, n) for n, a in zip(names, arrays, strict=True)]
        return [r.prediction for r in self.records(sources, batch_size)]

    def predict_bytes(self, data: bytes, name: str = "<upload>") -> Prediction:
        """Predict one in-memory file (e.g. an upload); never raises for bad bytes: see ``error``."""
        return next(self.records([Source.upload(data, name)], 1)).prediction

    def make_prediction(self, name: str, prob: np.ndarray, ood_score: float | None) -> Prediction:
        """One row of model probabilities (K,) + OOD distance -> a labelled ``Prediction``."""
        return make_prediction(self.card, name, prob, ood_score)

    @contextlib.contextmanager
    def hooked_model(self) -> Iterator[Any]:
        """A private copy of the PyTorch model for hook-based work (Grad-CAM), one caller at a time.

        Hooks on the shared model would also fire during a concurrent ``predict_*`` call; the copy
        keeps predictions hook-free and unblocked.
        """
        with self._hook_lock:
            if self._hook_model is None:
                self._hook_model = copy.deepcopy(self.model).eval()
            yield self._hook_model


def _as_unit_image(a: np.ndarray) -> np.ndarray:
    """An array -> (H, W) float32 in [0, 1]; ValueError if it cannot be an image."""
    a = np.asarray(a)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"not a (H, W) image array (shape {a.shape})")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if not np.issubdtype(a.dtype, np.floating) and a.dtype != np.bool_:
        raise ValueError(f"array dtype {a.dtype} is not an image type (use float in [0, 1], uint8 or uint16)")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("array contains NaN or infinity")
    if a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise ValueError(f"float values must lie in [0, 1] (got {a.min():.3g}..{a.max():.3g})")
    return np.clip(a, 0.0, 1.0)

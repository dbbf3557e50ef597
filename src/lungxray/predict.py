"""Predict new X-rays with a trained run: files, folders, arrays or uploaded bytes -> ``Prediction`` rows.

One code path with training: every input is decoded by ``data.imageio`` and resized by
``data.cache.to_model_input`` (the function that fills the training cache), then scored by
``inference.predict_batches`` (or the run's ONNX export). Each result carries an out-of-distribution
score (Mahalanobis distance of the penultimate features to the training set), so a photo or a knee is
flagged instead of silently getting a confident label. A file that cannot be read becomes a row with
``error`` set; the other files of the same call are still predicted.

Example::

    predictor = Predictor.load("runs/kermany")
    for r in predictor.predict_paths(predictor.expand_inputs(["new_xrays/"])):
        print(r.path, r.label, r.score, r.ood, r.error)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungxray import DISCLAIMER
from lungxray.errors import ConfigError, DataError, ImageReadError, RunError, check_option

BACKENDS = ("torch", "onnx")
ONNX_INPUT = "image"  # uint8 (N, S, S): the model-ready images, exactly what the cache holds
ONNX_OUTPUTS = ("probabilities", "features")


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
    """

    path: str
    probabilities: dict[str, float] = field(default_factory=dict)
    label: str | list[str] | None = None
    score: float | None = None
    threshold: float | dict[str, float] | None = None
    ood_score: float | None = None
    ood: bool | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """A trained run ready to predict: model (torch or ONNX Runtime), preprocessing, thresholds, OOD.

    Build it with ``Predictor.load(run_dir)``. Thread-safe for prediction (no shared mutable state in
    the forward pass); hook-based work such as Grad-CAM goes through ``hooked_model()``, which hands
    out a private copy of the model one caller at a time.
    """

    def __init__(self, loaded: Any, *, backend: str = "torch", device: str = "cpu", session: Any = None):
        from lungxray.inference import resolve_device

        self.run_dir = Path(loaded.path)
        self.card = loaded.card
        self.model = loaded.model
        self.backend = backend
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self._session = session
        self._ood_mean = loaded.ood.get("mean")
        self._ood_precision = loaded.ood.get("precision")
        self._hook_lock = threading.Lock()
        self._hook_model: Any = None

    # ------------------------------------------------------------------------------------ loading

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
        loaded = load_run(run)
        session = _onnx_session(Path(run)) if backend == "onnx" else None
        return cls(loaded, backend=backend, device=device, session=session)

    # --------------------------------------------------------------------------------- properties

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

    # ------------------------------------------------------------------------------------- inputs

    @staticmethod
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

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float [0, 1] -> the model-ready (S, S) uint8, exactly as the training cache holds it."""
        from lungxray.data.preprocess import to_model_input

        return to_model_input(image, self.input_size, self.resize)

    def preprocess_path(self, path: str | os.PathLike) -> np.ndarray:
        """Read one file and preprocess it: (S, S) uint8. Raises ImageReadError."""
        from lungxray.data.imageio import read_image

        return self.preprocess(read_image(path))

    # -------------------------------------------------------------------------------- prediction

    def predict_images(
        self, images: np.ndarray, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Model-ready uint8 (N, S, S) -> probabilities (N, K) float32 and OOD distances (N,) or None."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"expected uint8 (N, {self.input_size}, {self.input_size}), got {images.shape}")
        if self.backend == "onnx":
            probs, feats = [], []
            for start in range(0, len(images), batch_size):
                p, f = self._session.run(
                    list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(images[start : start + batch_size])}
                )
                probs.append(p)
                feats.append(f)
            prob = np.concatenate(probs).astype(np.float32)
            feat = np.concatenate(feats).astype(np.float32)
        else:
            from lungxray.inference import predict_batches

            prob, feat = predict_batches(
                self.model,
                images.astype(np.uint8, copy=False),
                task=self.task,
                normalization=self.card.normalization,
                device=self.device,
                in_chans=self.card.in_chans,
                batch_size=batch_size,
                features=self.has_ood,
            )
        if not self.has_ood or feat is None:
            return prob, None
        from lungxray.ood import mahalanobis

        return prob, mahalanobis(feat, self._ood_mean, self._ood_precision)

    def predict_paths(self, paths: Sequence[str | os.PathLike], batch_size: int = 32) -> list[Prediction]:
        """Predict files, ``batch_size`` at a time (only one batch of decoded images is ever held).

        Returns one ``Prediction`` per path, in order; unreadable files get ``error`` (the reason from
        ``ImageReadError``) and do not stop the others.
        """
        from lungxray.data.imageio import read_image

        return list(self._predict_stream(((str(p), read_image, p) for p in paths), batch_size))

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
        return list(
            self._predict_stream(
                ((n, _as_unit_image, a) for n, a in zip(names, arrays, strict=True)), batch_size
            )
        )

    def predict_bytes(self, data: bytes, name: str = "<upload>") -> Prediction:
        """Predict one in-memory file (e.g. an upload); never raises for bad bytes: see ``error``."""
        from lungxray.data.imageio import read_image_bytes

        def load(blob: bytes) -> np.ndarray:
            return read_image_bytes(blob, name=name)

        return next(self._predict_stream([(name, load, data)], 1))

    def _predict_stream(self, items: Any, batch_size: int) -> Iterator[Prediction]:
        """(name, loader, source) items -> Predictions in order, decoding one batch at a time."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
        pending: list[tuple[str, np.ndarray | None, str | None]] = []
        for name, loader, source in items:
            try:
                pending.append((name, self.preprocess(loader(source)), None))
            except ImageReadError as exc:
                pending.append((name, None, exc.reason))
            except ValueError as exc:  # predict_arrays: not an image array
                pending.append((name, None, str(exc)))
            if sum(x is not None for _, x, _ in pending) >= batch_size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[str, np.ndarray | None, str | None]]) -> Iterator[Prediction]:
        ok = [x for _, x, _ in pending if x is not None]
        prob, dist = np.zeros((0, 0), np.float32), None
        if ok:
            prob, dist = self.predict_images(np.stack(ok), batch_size=max(len(ok), 1))
        k = 0
        for name, x, reason in pending:
            if x is None:
                yield Prediction(path=name, error=reason)
                continue
            yield self.make_prediction(name, prob[k], None if dist is None else float(dist[k]))
            k += 1

    def make_prediction(self, name: str, prob: np.ndarray, ood_score: float | None) -> Prediction:
        """One row of model probabilities (K,) + OOD distance -> a labelled ``Prediction``."""
        card = self.card
        row = np.asarray(prob, np.float32)[None, :]
        scores = card.scores(row)[0]
        probabilities = {c: float(s) for c, s in zip(card.classes, scores, strict=True)}
        label = card.label_names(card.decide(row)[0])
        if self.task == "binary":
            score = float(scores[1])
        elif self.task == "multiclass":
            score = float(scores[card.classes.index(label)])
        else:
            score = float(np.max(scores))
        threshold = card.threshold_map()
        t_ood = self.ood_threshold
        return Prediction(
            path=name,
            probabilities=probabilities,
            label=label,
            score=score,
            threshold=threshold,
            ood_score=ood_score,
            ood=None if ood_score is None or t_ood is None else bool(ood_score > t_ood),
        )

    # ------------------------------------------------------------------------------- hook access

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


def _onnx_session(run: Path) -> Any:
    """An ONNX Runtime session for RUN/model.onnx; RunError if missing or exported from other weights."""
    path = run / "model.onnx"
    if not path.is_file():
        raise RunError(f"{path} not found: export the run first with `lungxray export {run}`.")
    try:
        import onnxruntime as ort
    except ImportError:
        raise RunError('the ONNX backend needs onnxruntime: pip install "lungxray[onnx]"') from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    weights = run / "model.safetensors"
    if meta.get("weights_sha1") and weights.is_file() and meta["weights_sha1"] != _sha1(weights):
        raise RunError(
            f"{path} was exported from other weights than {weights}: re-run `lungxray export {run}`."
        )
    return session


# ------------------------------------------------------------------------------------------ output


def _flat_row(r: Prediction, classes: list[str]) -> dict[str, Any]:
    label = "|".join(r.label) if isinstance(r.label, list) else r.label
    threshold = r.threshold
    if isinstance(threshold, dict):
        threshold = "|".join(f"{c}={t:.4g}" for c, t in threshold.items())
    row = {
        "path": r.path,
        "label": label,
        "score": r.score,
        "threshold": threshold,
        "ood_score": r.ood_score,
        "ood": r.ood,
        "error": r.error,
    }
    row.update({f"p_{c}": r.probabilities.get(c) for c in classes})
    return row


def write_predictions(results: Sequence[Prediction], out: str | os.PathLike) -> Path:
    """Write results as CSV (one row per input, ``p_<class>`` columns) or JSON, chosen by suffix.

    The JSON document is ``{"disclaimer": ..., "predictions": [Prediction.to_dict(), ...]}``.

    Raises:
        ConfigError: the suffix is neither .csv nor .json.
    """
    from lungxray.rundir import atomic_write_text

    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(f"cannot write predictions to {path}: use a .csv or .json file name.")
    if suffix == ".json":
        doc = {"disclaimer": DISCLAIMER, "predictions": [r.to_dict() for r in results]}
        atomic_write_text(path, json.dumps(doc, indent=2))
        return path
    classes: list[str] = []
    for r in results:
        classes.extend(c for c in r.probabilities if c not in classes)
    buf = io.StringIO()
    fields = [
        "path",
        "label",
        "score",
        "threshold",
        "ood_score",
        "ood",
        "error",
        *(f"p_{c}" for c in classes),
    ]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if v is None else v) for k, v in _flat_row(r, classes).items()})
    atomic_write_text(path, buf.getvalue())
    return path


def render_predictions(results: Sequence[Prediction], console: Any) -> None:
    """Print a rich table: file, label, score vs threshold, OOD flag, error; then a summary line."""
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("file", "label", "score", "threshold", "OOD score", "note"):
        table.add_column(col, overflow="fold")
    for r in results:
        name = Path(r.path).name if os.sep in r.path else r.path
        if r.error:
            table.add_row(name, "-", "-", "-", "-", f"[red]error: {r.error}[/]")
            continue
        label = (", ".join(r.label) or "(none)") if isinstance(r.label, list) else str(r.label)
        thr = r.threshold
        thr_s = "argmax" if thr is None else (f"{thr:.3f}" if isinstance(thr, float) else "per label")
        ood_s = "-" if r.ood_score is None else f"{r.ood_score:.1f}"
        note = "[yellow]out of distribution: unreliable[/]" if r.ood else ""
        table.add_row(name, label, f"{r.score:.3f}", thr_s, ood_s, note)
    console.print(table)
    n_err = sum(1 for r in results if r.error)
    n_ood = sum(1 for r in results if r.ood)
    console.print(
        f"{len(results)} inputs: {len(results) - n_err} predicted, {n_err} failed, {n_ood} out of distribution."
    )

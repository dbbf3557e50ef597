"""Class-activation heatmaps (Grad-CAM, Grad-CAM++) and their overlays on the X-ray.

A heatmap shows which parts of the model-ready image raised the score of one class; it is a
plausibility check for a human reader (is the model looking at the lungs, or at a text marker?), not
a segmentation. Heatmaps are computed by pytorch-grad-cam on the layer that ``models.registry.
cam_target_layer`` names for the architecture; models without a spatial map (``mlp``) raise ModelError.

Targets: binary runs explain the positive class by default (the single logit; asking for the
negative class flips its sign); multiclass runs the predicted class; multilabel runs the most likely
label (``explain_files`` writes one heatmap per positive label). Pass ``target="<class>"`` to choose.
The rules are the RunCard's (``card.explain_target`` / ``card.explain_targets``).

Heatmaps consume prediction records (``predict.Record``): ``explain_record`` runs Grad-CAM on the
record's model input ``x`` with targets from its ``prob``, and ``HeatmapWriter`` writes the overlay
figures, so an image is never decoded, preprocessed or scored a second time for its heatmap (Grad-CAM's
own forward pass, with hooks on a private model copy, is the only other one).

Example::

    predictor = Predictor.load("runs/kermany")
    writer = HeatmapWriter(predictor, "maps")
    for rec in predictor.records(["chest.png"]):
        (target, heat), *_ = explain_record(predictor, rec).items()  # default class; (S, S) float32
        writer.write(rec)                                            # maps/chest_<class>_gradcam.png
    png = to_png_bytes(overlay(rec.x, heat))                          # (S, S, 3) uint8 -> PNG bytes
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lungxray.errors import DataError, check_option

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lungxray.predict import Predictor, Record

METHODS = ("gradcam", "gradcam++")
CMAP = "jet"
GRID_MAX = 36  # images shown in grid.png (the overlays of every image are written separately)
_DISPLAY_MAX = 512  # longest side of the X-ray in the file outputs


# ------------------------------------------------------------------------------------------- targets


class _SignedLogit:
    """Binary CAM target: the single logit (positive class) or its negative (negative class)."""

    def __init__(self, sign: float):
        self.sign = sign

    def __call__(self, model_output: Any) -> Any:
        return self.sign * model_output.reshape(-1)[0]


def _cam_target(predictor: Predictor, name: str) -> Any:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    j = predictor.classes.index(name)
    if predictor.task == "binary":
        return _SignedLogit(1.0 if j == 1 else -1.0)
    return ClassifierOutputTarget(j)


# ------------------------------------------------------------------------------------------ heatmaps


def heatmaps_for_inputs(
    predictor: Predictor,
    x: np.ndarray,
    targets: Sequence[str],
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """Model-ready uint8 (N, S, S) + a class name per image -> heatmaps (N, S, S) float32 in [0, 1].

    Each map is min-max normalised (all zeros when nothing raised the class score). Raises
    ModelError (no convolutional map, unknown ``layer``) and ConfigError (unknown method or class).
    """
    import torch
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    from lungxray.inference import to_input
    from lungxray.models.parts import cam_target_layers

    check_option(method, METHODS, "heatmap method")
    for t in targets:
        check_option(t, predictor.classes, "target class")
    x = np.asarray(x)
    if len(x) == 0:
        return np.zeros((0, predictor.input_size, predictor.input_size), np.float32)
    cam_cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with predictor.hooked_model() as hooked:
        # an ensemble: every member's layer; TTA: the identity view (models.parts.cam_target_layers)
        model, target_layers = cam_target_layers(hooked, predictor.card.architecture, layer=layer)
        inp = to_input(x, predictor.card.normalization, predictor.device, predictor.card.in_chans)
        with torch.enable_grad(), cam_cls(model=model, target_layers=target_layers) as cam:
            maps = cam(input_tensor=inp, targets=[_cam_target(predictor, t) for t in targets])
    maps = np.nan_to_num(np.asarray(maps, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo = maps.reshape(len(maps), -1).min(axis=1)[:, None, None]
    hi = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    return np.clip((maps - lo) / span, 0.0, 1.0).astype(np.float32)


def heatmap(
    predictor: Predictor,
    image: np.ndarray,
    *,
    method: str = "gradcam",
    target: str | None = None,
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM / Grad-CAM++ heatmap of one decoded image.

    Args:
        predictor: a loaded ``Predictor`` (its PyTorch model is used whatever its backend).
        image: (H, W) float in [0, 1], e.g. from ``data.imageio.read_image``.
        method: ``"gradcam"`` or ``"gradcam++"``.
        target: class to explain (default: binary the positive class, otherwise the most likely one).
        layer: dotted module name overriding the architecture's CAM layer.

    Returns:
        (S, S) float32 in [0, 1] at the model's input size, in the coordinates of the model-ready image.

    Raises:
        ModelError: the architecture has no convolutional map (mlp) or ``layer`` is unknown.
        ConfigError: unknown method or target class.
        ValueError: ``image`` is not a usable (H, W) image.
    """
    from lungxray.predict import Source, predict_records

    check_option(method, METHODS, "heatmap method")
    src = Source("<image>", lambda: np.asarray(image, np.float32))
    rec = next(predict_records(predictor, [src], batch_size=1))
    if rec.error is not None:
        raise ValueError(f"not a usable image: {rec.error}")
    chosen = predictor.card.explain_target(rec.prob) if target is None else target
    return explain_record(predictor, rec, [chosen], method=method, layer=layer)[chosen]


def explain_record(
    predictor: Predictor,
    record: Record,
    targets: Sequence[str] | None = None,
    *,
    method: str = "gradcam",
    layer: str | None = None,
) -> dict[str, np.ndarray]:
    """Heatmaps of one prediction record: {class: (S, S) float32 in [0, 1]}.

    Grad-CAM runs on the record's own model input ``record.x`` (nothing is decoded or preprocessed
    again); ``targets`` default to ``card.explain_targets(record.prob)`` (binary the positive class,
    multiclass the predicted one, multilabel each positive label or the top one). A record with an
    ``error`` has no heatmap: {}.
    """
    if record.error is not None or record.x is None:
        return {}
    chosen = list(targets) if targets is not None else predictor.card.explain_targets(record.prob)
    x = np.repeat(np.asarray(record.x)[None], len(chosen), axis=0)
    maps = heatmaps_for_inputs(predictor, x, chosen, method=method, layer=layer)
    return dict(zip(chosen, maps, strict=True))


# ------------------------------------------------------------------------------------------- images


def colorize(heat: np.ndarray, cmap: str = CMAP) -> np.ndarray:
    """Heatmap (S, S) in [0, 1] -> (S, S, 4) uint8 RGBA: colour map, transparent where the heat is low.

    Alpha rises linearly from 0 at heat 0.2 to 0.8 at heat 1, so an overlay shows only the hot regions.
    """
    from matplotlib import colormaps

    h = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    rgba = colormaps[cmap](h)  # (S, S, 4) float in [0, 1]
    rgba[..., 3] = 0.8 * np.clip((h - 0.2) / 0.8, 0.0, 1.0)
    return np.round(rgba * 255).astype(np.uint8)


def _gray_to_unit(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (H, W) array to (height, width)."""
    from PIL import Image

    h, w = size
    if arr.shape == (h, w):
        return arr.astype(np.float32)
    return np.asarray(Image.fromarray(arr.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = CMAP) -> np.ndarray:
    """Blend a heatmap over the gray X-ray as the model saw it: (S, S, 3) uint8 RGB.

    ``image`` is the decoded (H, W) float [0, 1] image (or an (S, S) uint8 model input); it is
    brought to the heatmap's size with the run's preprocessing (stretch) so the two align. Each pixel
    mixes in the colour map with weight ``alpha * heat``: cold regions stay gray.
    """
    from matplotlib import colormaps

    h = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    gray = _resize(_gray_to_unit(image), h.shape)
    colour = colormaps[cmap](h)[..., :3]
    w = (alpha * h)[..., None]
    out = (1.0 - w) * gray[..., None] + w * colour
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def to_png_bytes(array: np.ndarray) -> bytes:
    """(H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA array (uint8, or float in [0, 1]) -> PNG bytes."""
    import io

    from PIL import Image

    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = np.clip(np.round(np.nan_to_num(a.astype(np.float32)) * 255), 0, 255).astype(np.uint8)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _display_pair(predictor: Predictor, image: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The X-ray at display resolution (longest side <= 512) and the heatmap mapped onto it.

    Undoes the model's resize: "stretch" scales the map to the image; "pad" crops the padded border.
    """
    h, w = image.shape
    scale = min(1.0, _DISPLAY_MAX / max(h, w))
    dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
    shown = _resize(image, (dh, dw))
    if predictor.resize == "pad":
        s = heat.shape[0]
        k = s / max(h, w)
        ih, iw = min(s, max(1, round(h * k))), min(s, max(1, round(w * k)))
        top, left = (s - ih) // 2, (s - iw) // 2
        heat = heat[top : top + ih, left : left + iw]
    return shown, np.clip(_resize(heat, (dh, dw)), 0.0, 1.0)


def _draw(ax: Any, shown: np.ndarray, heat: np.ndarray, title: str, alpha: float = 0.45) -> Any:
    ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
    im = ax.imshow(heat, cmap=CMAP, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return im


def overlay_figure(predictor: Predictor, image: np.ndarray, heat: np.ndarray, title: str) -> Figure:
    """One X-ray with its heatmap and a colour bar legend (relative class evidence, 0 to 1)."""
    from matplotlib.figure import Figure

    shown, hmap = _display_pair(predictor, _gray_to_unit(image), heat)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    im = _draw(ax, shown, hmap, title)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("relative evidence for the class (Grad-CAM)", fontsize=8)
    fig.text(0.5, 0.01, "Decision support only, not a diagnosis.", ha="center", fontsize=7, color="0.4")
    return fig


def grid_figure(panels: Sequence[tuple[np.ndarray, np.ndarray, str]], total: int | None = None) -> Figure:
    """A grid of (display image, display heatmap, title) panels with one shared colour bar."""
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    cols = min(6, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.4 * cols + 0.8, 2.5 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for ax, (shown, hmap, title) in zip(axes.flat, panels, strict=False):
        im = _draw(ax, shown, hmap, title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=list(axes.flat), fraction=0.02, pad=0.02).set_label(
            "relative evidence", fontsize=8
        )
    shown_n = f" (first {len(panels)} of {total})" if total and total > len(panels) else ""
    fig.suptitle(f"Grad-CAM heatmaps{shown_n}. Decision support only, not a diagnosis.", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------ files


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def _thumb(panel: tuple[np.ndarray, np.ndarray, str], side: int = 256) -> tuple[np.ndarray, np.ndarray, str]:
    """Shrink a panel for the grid so memory stays bounded (about 0.5 MB per panel)."""
    shown, hmap, title = panel
    h, w = shown.shape
    k = min(1.0, side / max(h, w))
    size = (max(1, round(h * k)), max(1, round(w * k)))
    return _resize(shown, size), _resize(hmap, size), title


class HeatmapWriter:
    """Consumes prediction records: one overlay PNG per record and explained class, and (``grid``)
    the first ``GRID_MAX`` of them as ``grid.png`` on ``finish()``.

    Each record's heatmaps come from ``explain_record`` (its own ``x`` and ``prob``); its decoded
    ``image`` is used for the display and may be dropped afterwards. Records with an ``error`` are
    skipped (their row says why).

    Example::

        writer = HeatmapWriter(predictor, "maps")
        for rec in predictor.records(paths):
            writer.write(rec)
    """

    def __init__(
        self,
        predictor: Predictor,
        out_dir: str | os.PathLike,
        *,
        method: str = "gradcam",
        target: str | None = None,
        layer: str | None = None,
        grid: bool = False,
    ):
        check_option(method, METHODS, "heatmap method")
        if target is not None:
            check_option(target, predictor.classes, "target class")
        self.predictor, self.out_dir = predictor, Path(out_dir)
        self.method, self.target, self.layer, self.grid = method, target, layer, grid
        self.written: list[Path] = []
        self._panels: list[tuple[np.ndarray, np.ndarray, str]] = []
        self._used: set[str] = set()

    def write(self, record: Record) -> list[Path]:
        """Write the overlays of one record; returns their paths ([] for an error record)."""
        from lungxray.evaluation.plots import save_figure

        if record.error is not None or record.image is None:
            return []
        targets = None if self.target is None else [self.target]
        maps = explain_record(self.predictor, record, targets, method=self.method, layer=self.layer)
        scores = record.prediction.probabilities
        path = Path(record.name)
        files = []
        for t, heat in maps.items():
            stem = f"{_safe(path.stem)}_{_safe(t)}_{self.method.replace('+', 'p')}"
            name, k = stem, 1
            while name in self._used:  # two inputs with the same stem
                k += 1
                name = f"{stem}_{k}"
            self._used.add(name)
            title = f"{path.name}\n{t}: p={scores[t]:.2f} ({self.method})"
            fig = overlay_figure(self.predictor, record.image, heat, title)
            files.append(save_figure(fig, self.out_dir / f"{name}.png"))
            if self.grid and len(self._panels) < GRID_MAX:
                shown, hmap = _display_pair(self.predictor, record.image, heat)
                self._panels.append(_thumb((shown, hmap, f"{path.name[:24]}\n{t} p={scores[t]:.2f}")))
        self.written.extend(files)
        return files

    def finish(self) -> list[Path]:
        """Write ``grid.png`` (when ``grid`` and something was written); returns every written path."""
        from lungxray.evaluation.plots import save_figure

        if self.grid and self.written:
            fig = grid_figure(self._panels, total=len(self.written))
            self.written.append(save_figure(fig, self.out_dir / "grid.png"))
        return self.written


def explain_files(
    run: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike = "explanations",
    *,
    method: str = "gradcam",
    target: str | None = None,
    layer: str | None = None,
) -> list[Path]:
    """Write one heatmap overlay PNG per image (per positive label for multilabel) and ``grid.png``.

    Args:
        run: run directory. images: files or folders (folders expand to their image files).
        out: output folder (created). method: ``"gradcam"`` | ``"gradcam++"``.
        target: class to explain (see the module docstring for the default). layer: CAM layer override.

    Returns:
        The written paths, overlays first, then ``out/grid.png``. Unreadable files are skipped with
        a warning naming the file and reason.

    Raises:
        DataError: no image could be read. ModelError / ConfigError as ``heatmap``.
    """
    from lungxray.predict import Predictor

    check_option(method, METHODS, "heatmap method")
    predictor = Predictor.load(run)
    writer = HeatmapWriter(predictor, out, method=method, target=target, layer=layer, grid=True)
    failures: list[str] = []
    for rec in predictor.records(predictor.expand_inputs(images)):
        if rec.error is not None:
            failures.append(f"{rec.name}: {rec.error}")
            warnings.warn(f"skipped {rec.name}: {rec.error}", stacklevel=2)
        writer.write(rec)
    if not writer.written:
        raise DataError("no heatmap written: every input failed to read (" + "; ".join(failures[:5]) + ").")
    return writer.finish()


def explain_results(
    predictor: Predictor,
    results: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    method: str = "gradcam",
    target: str | None = None,
    layer: str | None = None,
) -> list[Path]:
    """Write heatmap overlays for the successful rows of a prediction (error rows skipped).

    ``results`` are records (``Predictor.records``: nothing is decoded or run again) or, for older
    callers, ``Prediction`` rows of files, which carry no image: those files go through the
    prediction pass once more. Returns the written paths.
    """
    writer = HeatmapWriter(predictor, out_dir, method=method, target=target, layer=layer)
    rows = [r for r in results if r.error is None]
    records = [r for r in rows if hasattr(r, "x")]
    files = [r.path for r in rows if not hasattr(r, "x") and Path(r.path).is_file()]
    for rec in itertools.chain(records, predictor.records(files) if files else ()):
        writer.write(rec)
    return writer.written

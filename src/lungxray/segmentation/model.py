"""The lung-field model: a small U-Net, its run directory, and mask prediction at any input size.

A lung run is a run directory like a classifier's: ``model.safetensors`` (weights only, never
pickle) + ``model.json`` (a RunCard with ``task: "segmentation"``, ``classes: ["lung"]``,
``architecture: "smp-unet"``, the encoder and decoder widths in ``model_kwargs``, and one calibration
entry whose ``threshold`` is the mask threshold on the per-pixel probability).

Input: the model-ready uint8 image, resized ("stretch") to ``preprocessing.input_size``, divided by
255 and standardised PER IMAGE (zero mean, unit variance): that makes the masks less sensitive to
the exposure differences between hospitals (``preprocessing.normalization`` records mean 0 / std 1,
applied after the per-image standardisation). ``segmentation-models-pytorch`` is imported lazily
(optional extra ``lungs``).

Example::

    lungs = load_lung_model("runs/lungs")
    masks = predict_lung_masks(lungs, x_uint8)     # (N, S, S) uint8 at any S -> (N, S, S) bool
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungxray.errors import ModelError, RunError
from lungxray.runcard import RunCard

ARCHITECTURE = "smp-unet"
CLASSES = ("lung",)
DEFAULT_ENCODER = "tu-mobilenetv3_small_100"
DEFAULT_DECODER = (64, 32, 24, 16, 8)
WEIGHTS_FILE = "model.safetensors"


def build_unet(encoder: str = DEFAULT_ENCODER, decoder_channels: tuple[int, ...] = DEFAULT_DECODER) -> torch.nn.Module:
    """A randomly initialised 1-channel-in, 1-logit-out smp U-Net (never downloads weights).

    Raises ModelError when segmentation-models-pytorch is missing or ``encoder`` is unknown.
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ModelError(
            "the lung model needs segmentation-models-pytorch: pip install 'lungxray[lungs]'."
        ) from None
    try:
        return smp.Unet(
            encoder,
            encoder_weights=None,
            in_channels=1,
            classes=1,
            decoder_channels=tuple(int(c) for c in decoder_channels),
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot build a U-Net with encoder {encoder!r}: {str(exc)[:200]}") from None


def standardize(x: torch.Tensor) -> torch.Tensor:
    """uint8-valued (N, S, S) or (N, 1, S, S) tensor -> float (N, 1, S, S), z-scored per image."""
    x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    x = x / 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mean) / std


@dataclass
class LungModel:
    """A loaded lung-field model: its run directory, card and network (eval mode, CPU)."""

    path: Path | None
    card: RunCard
    model: torch.nn.Module

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def threshold(self) -> float:
        t = self.card.calibration.threshold
        return 0.5 if t is None else float(t)


def lung_card(name: str, size: int, encoder: str, decoder: tuple[int, ...], **extra: Any) -> RunCard:
    """The RunCard of a lung model (mask threshold 0.5)."""
    from lungxray.runcard import Calibration, Preprocessing, TrainingSummary

    return RunCard(
        name=name,
        architecture=ARCHITECTURE,
        task="segmentation",
        classes=CLASSES,
        preprocessing=Preprocessing(input_size=int(size), resize="stretch", in_chans=1, mean=0.0, std=1.0),
        calibrations=(Calibration(strategy="0.5", threshold=0.5, notes="mask threshold on P(lung)"),),
        model_kwargs={"encoder": encoder, "decoder_channels": list(decoder), "normalize": "per_image"},
        training=TrainingSummary(**extra),
        population="adult frontal chest X-rays (lung_masks: openist, shenzhen, montgomery)",
    )


def save_lung_model(run_dir: str | os.PathLike, card: RunCard, model: torch.nn.Module) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (atomically); returns the run directory."""
    from safetensors.torch import save_file

    from lungxray.io import atomic_write_with

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    card.write(out)
    return out


def load_lung_model(run_dir: str | os.PathLike) -> LungModel:
    """Rebuild a lung model from ``model.json`` + ``model.safetensors`` (no pickle).

    Raises RunError when the directory is not a lung run or the weights do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir)
    card = RunCard.read(path)
    if card.task != "segmentation" or card.architecture != ARCHITECTURE:
        raise RunError(
            f"{path} is a {card.task} run ({card.architecture}), not a lung-field model; "
            "train one with `lungxray train-lungs DATA/lung_masks --out runs/lungs`."
        )
    weights = path / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise RunError(f"{weights} cannot be read ({exc}).") from None
    kw = card.model_kwargs
    model = build_unet(str(kw.get("encoder", DEFAULT_ENCODER)), tuple(kw.get("decoder_channels", DEFAULT_DECODER)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{weights} does not fit the card's U-Net: {str(exc)[:300]}") from None
    return LungModel(path=path, card=card, model=model.eval())


def _as_lung_model(model_run: LungModel | str | os.PathLike) -> LungModel:
    return model_run if isinstance(model_run, LungModel) else load_lung_model(model_run)


@torch.no_grad()
def predict_lung_proba(
    model_run: LungModel | str | os.PathLike, images: np.ndarray, *, batch_size: int = 16
) -> np.ndarray:
    """uint8 (N, S, S) model inputs (any S) -> P(lung) (N, S, S) float32, resized back to S.

    The images are resized (bilinear, antialiased) to the lung model's input size, and the
    probabilities back to S (bilinear).
    """
    lm = _as_lung_model(model_run)
    x = np.asarray(images)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected square images (N, S, S), got shape {x.shape}")
    n, s = len(x), int(x.shape[1]) if x.ndim == 3 else 0
    out = np.zeros((n, s, s), np.float32)
    m = lm.input_size
    lm.model.eval()
    for start in range(0, n, batch_size):
        t = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).float()[:, None]
        if s != m:
            t = F.interpolate(t, size=(m, m), mode="bilinear", antialias=True, align_corners=False)
        p = torch.sigmoid(lm.model(standardize(t)))
        if s != m:
            p = F.interpolate(p, size=(s, s), mode="bilinear", align_corners=False)
        out[start : start + len(t)] = p[:, 0].numpy()
    return out


def keep_largest(mask: np.ndarray, k: int = 2) -> np.ndarray:
    """(S, S) bool -> the ``k`` largest 8-connected components, holes filled (two lungs)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n > k:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        keep = np.argsort(sizes)[::-1][:k] + 1
        mask = np.isin(lab, keep)
    return ndimage.binary_fill_holes(mask)


def predict_lung_masks(
    model_run: LungModel | str | os.PathLike,
    images: np.ndarray,
    *,
    batch_size: int = 16,
    postprocess: bool = True,
) -> np.ndarray:
    """Lung fields of model-ready images.

    Args:
        model_run: a ``LungModel`` or a lung run directory.
        images: uint8 (N, S, S), any S (e.g. the classifier's input size).
        postprocess: keep the two largest components and fill holes (drops speckles outside the chest).

    Returns:
        (N, S, S) bool, True inside the lung fields (P(lung) >= the card's mask threshold).
    """
    lm = _as_lung_model(model_run)
    masks = predict_lung_proba(lm, images, batch_size=batch_size) >= lm.threshold
    if postprocess:
        masks = np.stack([keep_largest(m) for m in masks]) if len(masks) else masks
    return masks.astype(bool)


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image Dice of bool masks (N, S, S) -> (N,) float; 1.0 where both are empty."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    inter = (pred & truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)

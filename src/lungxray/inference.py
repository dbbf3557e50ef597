"""Batched forward passes over model-ready uint8 images: probabilities and penultimate features.

One code path for validation during training, evaluation and prediction, so a score means the same
thing everywhere: uint8 (N, S, S) -> float in [0, 1] -> normalised -> model -> sigmoid / softmax.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Gray-level ImageNet statistics: sensible for training from scratch and for ImageNet transfer.
DEFAULT_NORMALIZATION = {"mean": 0.449, "std": 0.226}

# Device types that take the fast paths (bf16 autocast, channels-last memory) when a config asks for
# them. CUDA only: on CPU they are usually slower. Tests add "cpu" to run those code paths without a GPU.
FAST_PATH_DEVICES: tuple[str, ...] = ("cuda",)


def fast_paths(device: torch.device) -> bool:
    """Whether bf16 autocast and channels-last memory apply on ``device`` (see FAST_PATH_DEVICES)."""
    return device.type in FAST_PATH_DEVICES


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_input(
    batch: np.ndarray | torch.Tensor,
    normalization: dict,
    device: torch.device,
    in_chans: int = 1,
    channels_last: bool = False,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 (N, S, S) -> normalised float32 (N, in_chans, S, S) on ``device``.

    ``augment`` (training) maps the (N, 1, S, S) float batch in [0, 1] before normalisation.
    """
    if isinstance(batch, torch.Tensor):
        x = batch
    else:
        arr = np.asarray(batch)
        # a read-only array (a cache memmap slice) would make torch warn; copying one batch is cheap
        x = torch.as_tensor(arr if arr.flags.writeable else arr.copy())
    x = x.to(device, non_blocking=True).float().div_(255.0).unsqueeze(1)
    if augment is not None:
        x = augment(x)
    x = normalize(x, normalization)
    if in_chans != 1:
        x = x.expand(-1, in_chans, -1, -1)
    if channels_last and fast_paths(device):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def normalize(x: torch.Tensor, normalization: dict) -> torch.Tensor:
    """(N, C, H, W) float in [0, 1] -> standardised with the run's mean / std."""
    return (x - float(normalization["mean"])) / float(normalization["std"])


def activation(task: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits -> probabilities: sigmoid for binary (one logit) and multilabel, softmax for multiclass."""
    if task == "multiclass":
        return lambda z: torch.softmax(z.float(), dim=1)
    return lambda z: torch.sigmoid(z.float())


def probabilities_to_scores(prob: np.ndarray, task: str) -> np.ndarray:
    """Model probabilities -> per-class scores (N, C): binary (N, 1) -> [1 - p, p]."""
    if task == "binary":
        p = prob.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return prob


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    task: str,
    normalization: dict,
    device: torch.device,
    in_chans: int = 1,
    batch_size: int = 128,
    features: bool = False,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (N, K) float32 (K = 1 for binary) and, if asked, penultimate features (N, D).

    ``images`` is (N, S, S) uint8, e.g. a cache memmap; it is read one batch at a time. ``amp`` (bf16
    autocast) and ``channels_last`` take effect only where ``fast_paths(device)``.
    """
    model.eval()
    act = activation(task)
    probs, feats = [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and fast_paths(device))
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], normalization, device, in_chans, channels_last)
        with autocast:
            f = model.forward_features(x)
            emb = model.forward_head(f, pre_logits=True)
            logits = model.get_classifier()(emb) if features else model.forward_head(f)
        probs.append(act(logits).cpu().numpy())
        if features:
            feats.append(emb.float().flatten(1).cpu().numpy())
    n_out = int(getattr(model, "num_classes", 1))
    prob = np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, n_out), np.float32)
    feat = np.concatenate(feats).astype(np.float32) if features and feats else None
    return prob, feat

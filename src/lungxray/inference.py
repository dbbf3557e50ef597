"""Batched forward passes over model-ready uint8 images: probabilities and penultimate features.

One code path for validation during training, evaluation and prediction, so a score means the same
thing everywhere: uint8 (N, S, S) -> float in [0, 1] -> normalised -> model -> sigmoid / softmax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# Gray-level ImageNet statistics: sensible for training from scratch and for ImageNet transfer.
DEFAULT_NORMALIZATION = {"mean": 0.449, "std": 0.226}

# Device types that take the fast paths (bf16 autocast, channels-last memory) when a config asks for
# them. CUDA by default; a CPU takes them only when the recipe says ``train.cpu_fast_paths`` (bf16 is
# emulated, and slower, on CPUs without AVX512-BF16 / AMX). Tests add "cpu" to run those code paths.
FAST_PATH_DEVICES: tuple[str, ...] = ("cuda",)


def fast_paths(device: torch.device, *, on_cpu: bool = False) -> bool:
    """Whether bf16 autocast and channels-last memory apply on ``device`` (see FAST_PATH_DEVICES);
    ``on_cpu`` (``train.cpu_fast_paths``) adds the CPU."""
    return device.type in FAST_PATH_DEVICES or (on_cpu and device.type == "cpu")


def train_fast_paths(train: Any, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels-last) for a recipe's ``train`` section on ``device``: each where the
    recipe asks for it (``amp``, ``channels_last``) and the device takes it (``cpu_fast_paths``)."""
    fast = fast_paths(device, on_cpu=train.cpu_fast_paths)
    return bool(train.amp and fast), bool(train.channels_last and fast)


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
    if channels_last:  # resolved by the caller (``train_fast_paths``)
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
    autocast) and ``channels_last`` are taken as given: the caller resolves them with ``train_fast_paths``.
    """
    model.eval()
    act = activation(task)
    probs, feats = [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
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


# ------------------------------------------------------------------------------------------ backends

ONNX_INPUT = "image"  # uint8 (N, S, S): the model-ready images, exactly what the cache holds
ONNX_OUTPUTS = ("probabilities", "features")
BACKENDS = ("torch", "onnx")


class TorchBackend:
    """The run's PyTorch model: ``run(x)`` = ``predict_batches`` with the run's preprocessing.

    ``preprocessing`` is the card's (``runcard.Preprocessing``: normalisation, in_chans); ``features``
    (penultimate, for OOD) are computed only when asked.
    """

    name = "torch"

    def __init__(
        self, model: torch.nn.Module, task: str, preprocessing, device: torch.device, *, features: bool = True
    ):
        self.model, self.task, self.device, self.features = model, task, device, features
        self.normalization, self.in_chans = preprocessing.normalization, preprocessing.in_chans

    def run(self, x: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """Model-ready uint8 (N, S, S) -> probabilities (N, K) float32, features (N, D) or None."""
        return predict_batches(
            self.model,
            x.astype(np.uint8, copy=False),
            task=self.task,
            normalization=self.normalization,
            device=self.device,
            in_chans=self.in_chans,
            batch_size=batch_size,
            features=self.features,
        )


class OnnxBackend:
    """RUN/model.onnx under ONNX Runtime (CPU); the graph takes the uint8 images and returns
    probabilities and features (see ``export.export_onnx``)."""

    name = "onnx"

    def __init__(self, session):
        self.session = session

    @classmethod
    def load(cls, run) -> OnnxBackend:
        """A session for RUN/model.onnx; RunError if missing, onnxruntime absent, or exported from
        other weights than RUN/model.safetensors (sha1 in the ONNX metadata)."""
        from pathlib import Path

        from lungxray.errors import RunError

        run = Path(run)
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
        if meta.get("weights_sha1") and weights.is_file() and meta["weights_sha1"] != file_sha1(weights):
            raise RunError(
                f"{path} was exported from other weights than {weights}: re-run `lungxray export {run}`."
            )
        return cls(session)

    def run(self, x: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """Model-ready uint8 (N, S, S) -> probabilities (N, K) float32, features (N, D) float32."""
        probs, feats = [], []
        for start in range(0, len(x), batch_size):
            p, f = self.session.run(
                list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(x[start : start + batch_size])}
            )
            probs.append(p)
            feats.append(f)
        return np.concatenate(probs).astype(np.float32), np.concatenate(feats).astype(np.float32)


def load_backend(
    name: str, loaded, device: torch.device, *, features: bool = True
) -> TorchBackend | OnnxBackend:
    """The backend ``name`` ("torch" | "onnx") for a loaded run (``rundir.LoadedRun``).

    Raises:
        ConfigError: unknown name. RunError: as ``OnnxBackend.load``.
    """
    from lungxray.errors import check_option

    check_option(name, BACKENDS, "prediction backend")
    if name == "onnx":
        return OnnxBackend.load(loaded.path)
    return TorchBackend(loaded.model, loaded.card.task, loaded.card.preprocessing, device, features=features)


def file_sha1(path) -> str:
    """Hex SHA-1 of a file, read 1 MiB at a time (ties model.onnx to its model.safetensors)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

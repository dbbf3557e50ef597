"""The run directory: write and read ``model.json`` + ``model.safetensors`` (the contract between stages).

Everything downstream of training (evaluate, predict, explain, serve, export) rebuilds a model from
these two files only, so a run copied to another machine works. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lungxray import DISCLAIMER, __version__
from lungxray.errors import RunError
from lungxray.models.factory import create_model

FORMAT_VERSION = 1
OOD_PREFIX = "__ood__."


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports and runs are meant to be shared
    os.replace(tmp, path)


def save_weights(
    path: Path, state: dict[str, torch.Tensor], extra: dict[str, np.ndarray] | None = None
) -> None:
    """Atomically save a state dict (plus optional extra arrays under ``__ood__.``) as safetensors."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    for k, v in (extra or {}).items():
        tensors[OOD_PREFIX + k] = torch.as_tensor(np.ascontiguousarray(v))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_model_json(run_dir: Path, info: dict[str, Any]) -> None:
    """Write model.json with the format version, creation time, version and disclaimer filled in."""
    doc = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "lungxray_version": __version__,
        "disclaimer": DISCLAIMER,
        **info,
    }
    atomic_write_text(Path(run_dir) / "model.json", json.dumps(doc, indent=2, allow_nan=False))


@dataclass
class LoadedRun:
    """A model rebuilt from a run directory, with its metadata and OOD statistics."""

    path: Path
    info: dict[str, Any]  # model.json
    model: torch.nn.Module  # eval mode, on CPU
    ood: dict[str, np.ndarray]  # "mean" (D,), "precision" (D, D); empty when the run has none

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])


def read_model_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    """model.json of a run, or RunError saying what is missing."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (it does not exist). Train one with `lungxray train`.")
    meta = path / "model.json"
    if not meta.is_file():
        raise RunError(f"{path} has no model.json: it is not a finished lungxray run.")
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{meta} is not valid JSON ({exc}).") from None
    for key in ("architecture", "classes", "task", "input_size", "in_chans", "normalization"):
        if key not in info:
            raise RunError(f"{meta} lacks the key {key!r}; was it written by lungxray?")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise RunError(f"{meta} has format_version {info['format_version']}; upgrade lungxray to read it.")
    return info


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a run from model.json + model.safetensors (weights only, no pickle)."""
    path = Path(run_dir)
    info = read_model_json(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{path} has no model.safetensors.")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise RunError(f"{weights} cannot be read ({exc}).") from None
    ood = {k[len(OOD_PREFIX) :]: v.numpy() for k, v in state.items() if k.startswith(OOD_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(OOD_PREFIX)}
    model = create_model(
        info["architecture"],
        in_chans=int(info["in_chans"]),
        num_classes=1 if info["task"] == "binary" else len(info["classes"]),
        img_size=int(info["input_size"]),
        **info.get("model_kwargs", {}),
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{weights} does not fit {info['architecture']!r}: {str(exc)[:300]}") from None
    model.eval()
    return LoadedRun(path=path, info=info, model=model, ood=ood)

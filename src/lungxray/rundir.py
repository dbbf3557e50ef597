"""The run directory: weights (``model.safetensors``), the RunCard (``model.json``) and history.csv.

Everything downstream of training (evaluate, predict, explain, serve, export) rebuilds a model from
model.json + model.safetensors only, so a run copied to another machine works. Nothing is ever
unpickled.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lungxray.errors import RunError
from lungxray.io import atomic_write_text, atomic_write_with
from lungxray.models.factory import create_model
from lungxray.runcard import RunCard

OOD_PREFIX = "__ood__."
HISTORY_FILE = "history.csv"


def save_weights(
    path: Path, state: dict[str, torch.Tensor], extra: dict[str, np.ndarray] | None = None
) -> None:
    """Atomically save a state dict (plus optional extra arrays under ``__ood__.``) as safetensors."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    for k, v in (extra or {}).items():
        tensors[OOD_PREFIX + k] = torch.as_tensor(np.ascontiguousarray(v))
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp)))


@dataclass
class LoadedRun:
    """A model rebuilt from a run directory, with its card and OOD statistics."""

    path: Path
    card: RunCard
    model: torch.nn.Module  # eval mode, on CPU; wrapped in models.tta.TTA when the card's tta >= 2
    ood: dict[str, np.ndarray]  # "mean" (D,), "precision" (D, D); empty when the run has none

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """Rebuild the model of a run from model.json + model.safetensors (weights only, no pickle)."""
    path = Path(run_dir)
    card = RunCard.read(path)
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
        card.architecture,
        in_chans=card.in_chans,
        num_classes=card.num_outputs,
        img_size=card.input_size,
        **card.model_kwargs,
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{weights} does not fit {card.architecture!r}: {str(exc)[:300]}") from None
    if card.tta > 1:  # test-time augmentation, applied by every stage that loads the run
        from lungxray.models.tta import with_tta

        model = with_tta(model, card.tta)
    model.eval()
    return LoadedRun(path=path, card=card, model=model, ood=ood)


def write_history(run_dir: str | os.PathLike, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> Path:
    """Write history.csv (one row per epoch; floats with 6 significant digits, None as empty)."""
    lines = [",".join(fields)]
    for r in rows:
        lines.append(
            ",".join(
                "" if r.get(f) is None else f"{r[f]:.6g}" if isinstance(r[f], float) else str(r[f])
                for f in fields
            )
        )
    return atomic_write_text(Path(run_dir) / HISTORY_FILE, "\n".join(lines) + "\n")


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """history.csv as a list of dicts (numbers parsed; empty cells None); [] when there is none."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open() as fh:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(fh)
        ]

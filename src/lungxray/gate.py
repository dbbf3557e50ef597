"""Population gate: does this film come from the population the model was trained on?

A pediatric model met adult films from other hospitals, ranked them worse than chance, and its
Mahalanobis OOD score flagged on average 29% / 46% of lung_masks' / Hannover's adult films (CPU
default, 3 seeds): feature distance does not see "adult". The gate is
a second, small binary classifier trained to tell the training population's films (``inside``, e.g.
Kermany's train split) from films of other populations (``outside``, e.g. the NIH ChestX-ray14 adult
sample); its threshold is chosen on its own validation split with ``specificity>=0.99`` (at most ~1% of
the population's films flagged, finite-sample rule). Trained with ``lungxray train-gate`` (a run like
any other, ``training.gate``), attached to a classifier run with ``lungxray attach-gate RUN --gate G``:
a copy in ``RUN/gate/`` plus ``gate.json`` (the weights' sha1, where it came from), never touching the
classifier's card or weights. Predict, serve and evaluate then add ``gate_warning`` to every flagged
input's ``Prediction.warnings`` and report the flagged share.

A gate says "unlike the training population", not "adult" or "abnormal": it has learned whatever tells
its two sets apart (age, hospital, scanner, resolution), and it is only as broad as its ``outside`` set.

Example::

    gate = Gate.for_run("runs/cpu-default")          # None when no gate is attached
    p_out = gate.scores([img1, img2])                # (N,) P(outside) for decoded (H, W) float images
    gate.flags(p_out)                                # (N,) bool, p_out >= gate.threshold
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lungxray.errors import RunError

GATE_DIR = "gate"  # RUN/gate/: the attached gate's model.json + model.safetensors + gate.json
GATE_FILES = ("model.json", "model.safetensors")
GATE_RECORD = "gate.json"
GATE_SOURCES = "gate_sources.json"  # in a gate run: what it was trained on (written by train_gate)
INSIDE, OUTSIDE = "inside", "outside"  # the gate's classes (sorted: OUTSIDE is the positive class)
GATE_STRATEGY = "specificity>=0.99"  # at most ~1% of the population's validation films flagged


GATE_WARNING_PREFIX = "unlike the population this model was trained on"


def gate_warning(p_outside: float, threshold: float) -> str:
    """The warning a flagged input carries (CLI row, API ``warnings``, page banner)."""
    return (
        f"{GATE_WARNING_PREFIX} (population gate: {p_outside:.2f} >= "
        f"{threshold:.2f}); its score is not validated for this image"
    )


def _sha1(folder: str | os.PathLike) -> str:
    from lungxray.inference import file_sha1

    weights = Path(folder) / GATE_FILES[1]
    if not weights.is_file():
        raise RunError(f"{folder} is not a gate run (no {GATE_FILES[1]}); train one with `lungxray train-gate`.")
    return file_sha1(weights)


class Gate:
    """A loaded population gate: ``scores(images)`` -> P(outside), ``flags(scores)``, ``threshold``."""

    def __init__(self, folder: str | os.PathLike):
        from lungxray.focus import Preprocessor
        from lungxray.rundir import load_run

        loaded = load_run(folder)
        card = loaded.card
        if card.task != "binary" or list(card.classes) != [INSIDE, OUTSIDE]:
            raise RunError(
                f"{folder} is not a population gate (classes {list(card.classes)}, task {card.task}; "
                f"a gate has classes [{INSIDE!r}, {OUTSIDE!r}]): train one with `lungxray train-gate`."
            )
        self.folder = Path(folder)
        self.card = card
        self.model = loaded.model
        self.preprocessor = Preprocessor.for_run(card, folder)
        self.threshold = float(card.threshold)

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> Gate | None:
        """The gate attached to a classifier run (``RUN/gate/``, sha1 checked), or None without one.

        Raises RunError when the copy is incomplete or its weights are not the ones attached."""
        dest = Path(run_dir) / GATE_DIR
        if not dest.is_dir():
            return None
        record_path = dest / GATE_RECORD
        if not record_path.is_file() or not all((dest / f).is_file() for f in GATE_FILES):
            raise RunError(
                f"{dest} is incomplete (needs {', '.join((*GATE_FILES, GATE_RECORD))}); attach the gate "
                "again with `lungxray attach-gate RUN --gate GATE`, or delete the folder."
            )
        record = json.loads(record_path.read_text())
        found = _sha1(dest)
        if found != record.get("sha1"):
            raise RunError(
                f"{dest / GATE_FILES[1]} (sha1 {found[:12]}) is not the gate that was attached "
                f"(sha1 {str(record.get('sha1'))[:12]}); attach it again."
            )
        return cls(dest)

    def record(self) -> dict[str, Any]:
        """``gate.json``: sha1, source folder, attach date, threshold (what the model card shows)."""
        path = self.folder / GATE_RECORD
        return json.loads(path.read_text()) if path.is_file() else {}

    def inputs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded (H, W) float [0, 1] images -> the gate's model inputs (N, S, S) uint8."""
        return np.stack([self.preprocessor(img) for img in images]) if len(images) else np.zeros(
            (0, self.card.input_size, self.card.input_size), np.uint8
        )

    def scores_of_inputs(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """The gate's model inputs (N, S, S) uint8 -> P(outside) (N,) float32."""
        import torch

        from lungxray.inference import predict_batches

        if not len(x):
            return np.zeros(0, np.float32)
        prob, _ = predict_batches(self.model, x, task=self.card.task, normalization=self.card.normalization,
                                  device=torch.device("cpu"), in_chans=self.card.in_chans, batch_size=batch_size)  # fmt: skip
        return prob[:, -1].astype(np.float32)

    def scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded (H, W) float [0, 1] images -> P(outside) (N,) float32."""
        return self.scores_of_inputs(self.inputs(images))

    def scores_of_paths(self, paths: Sequence[str], cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Files -> (P(outside) of the readable ones (M,), their indices into ``paths`` (M,)), decoded
        through the image cache at the gate's own input size (unreadable files are left out)."""
        from lungxray.data.cache import cache_images

        c = cache_images(list(paths), self.card.input_size, resize=self.card.resize, cache_dir=cache_dir,
                         progress=False, preprocessor=self.preprocessor)  # fmt: skip
        keep = np.flatnonzero(c.ok)
        x = np.stack([c.images[i] for i in keep]) if len(keep) else self.inputs([])
        return self.scores_of_inputs(x), keep

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bool: P(outside) at or above the gate's threshold."""
        return np.asarray(scores) >= self.threshold


def _sources(gate_dir: str | os.PathLike) -> str | None:
    """"inside ... vs outside ..." from the gate run's gate_sources.json (written by train_gate), or None."""
    path = Path(gate_dir) / GATE_SOURCES
    try:
        d = json.loads(path.read_text())
        return f"inside: {d['inside']}; outside: {', '.join(d['outside'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def attach_gate(gate_dir: str | os.PathLike, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Copy a gate run into ``run_dir/gate/`` with ``gate.json`` (sha1, source, date, threshold); the
    classifier's own files are not touched. Returns the record. RunError if ``gate_dir`` is no gate."""
    from lungxray.io import atomic_write_bytes, atomic_write_text
    from lungxray.runcard import RunCard

    RunCard.read(run_dir)  # RunError unless run_dir is a run
    gate = Gate(gate_dir)  # RunError unless it is a loadable gate
    dest = Path(run_dir) / GATE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    for name in GATE_FILES:
        atomic_write_bytes(dest / name, (Path(gate_dir) / name).read_bytes())
    record = {
        "sha1": _sha1(gate_dir),
        "source": str(Path(gate_dir).resolve()),
        "attached": datetime.now(UTC).isoformat(timespec="seconds"),
        "threshold": gate.threshold,
        "strategy": gate.card.threshold_strategy,
        "trained_on": _sources(gate_dir) or (gate.card.training.data if gate.card.training else None),
    }
    atomic_write_text(dest / GATE_RECORD, json.dumps(record, indent=2))
    return record


def flagged_summary(run_dir: str | os.PathLike, paths: Sequence[str], cache_dir: str | None = None) -> dict[str, Any]:
    """The share of ``paths`` the run's attached gate flags, for ``metrics.json["population_gate"]``:
    ``{"n", "flagged", "share", "threshold", "sha1"}``; ``{"skipped": why}`` without a gate."""
    gate = Gate.for_run(run_dir)
    if gate is None:
        return {"skipped": "no population gate attached (lungxray attach-gate RUN --gate G)"}
    flags = gate.flags(gate.scores_of_paths(paths, cache_dir)[0])
    n = int(len(flags))
    return {"n": n, "flagged": int(flags.sum()), "share": float(flags.mean()) if n else None,
            "threshold": gate.threshold, "sha1": gate.record().get("sha1")}  # fmt: skip


def gate_flagged(warnings: Sequence[str]) -> bool:
    """Whether a prediction's warnings include the population gate's."""
    return any(w.startswith(GATE_WARNING_PREFIX) for w in warnings)

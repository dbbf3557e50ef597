"""A run adapted to a site (AdaBN): its model, and the OOD check and shift reference refitted for it.

``adapt.adapt_batchnorm`` changes the feature space the run's OOD check (a Gaussian of penultimate
training features) and the set-level shift reference (validation OOD distances and scores) were
measured in, so an adapted run cannot keep them. ``refit_ood`` fits them again, with the ADAPTED
model, exactly as training fitted them: on the run's own training images (splits.csv train rows,
threshold and reference on val; a k-fold ensemble: folds 0..K-2, threshold and reference on fold K-1
with the adapted members' out-of-fold scores). The OOD check thus keeps asking "is this image unlike
the training population?". When those images are not all readable here (the site has the run, not
its training data), the adapted run has no OOD check and says so (``AdaptedRun.note``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lungxray.adapt import adapt_batchnorm
from lungxray.calibrate import _cache_dir, calibrate, calibrate_oof, run_images
from lungxray.data.manifest import Manifest
from lungxray.inference import predict_batches
from lungxray.runcard import OODSpec, RunCard

__all__ = ["AdaptedRun", "adapt_run", "refit_ood"]


@dataclass
class AdaptedRun:
    """An adapted model with its refitted OOD spec and arrays (``ood`` None: no OOD check, ``note`` why)."""

    model: torch.nn.Module
    n_images: int
    ood: OODSpec | None = None
    ood_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    note: str = ""


def _images(run_dir: Path, card: RunCard, paths: list[str], progress: bool) -> np.ndarray | None:
    """Model-ready (N, S, S) uint8 of ``paths`` at the run's preprocessing; None if any is unreadable."""
    if not paths:
        return None
    cached = run_images(card, run_dir, paths, cache_dir=_cache_dir(run_dir), progress=progress)
    return np.array(cached.images) if bool(np.all(cached.ok)) else None


def _member_oof(model: torch.nn.Module, card: RunCard, images: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(N, K) out-of-fold probabilities: member j (with the run's TTA) scores the rows of fold j."""
    from lungxray.models.tta import unwrap_tta, with_tta

    members = unwrap_tta(model).members
    prob = np.zeros((len(images), int(card.num_outputs)), np.float32)
    for j, member in enumerate(members):
        rows = np.flatnonzero(folds == j)
        if len(rows):
            prob[rows], _ = predict_batches(
                with_tta(member, card.tta), images[rows], task=card.task, normalization=card.normalization,
                device=torch.device("cpu"), in_chans=card.in_chans,
            )  # fmt: skip
    return prob


def refit_ood(
    run_dir: Path, card: RunCard, model: torch.nn.Module, *, progress: bool = False
) -> tuple[OODSpec | None, dict[str, np.ndarray], str]:
    """(spec, arrays, "") of ``model``'s OOD check and shift reference, fitted on the run's own training
    images as training fitted them; (None, {}, why) when the run has none or they cannot all be read."""
    if card.ood is None:
        return None, {}, "the original run has no OOD check"
    strategy = card.threshold_strategy
    if card.training.folds:
        from lungxray.oof import OOF_FILE, read_oof

        if not (run_dir / OOF_FILE).is_file():
            return None, {}, f"{run_dir / OOF_FILE} is missing"
        table = read_oof(run_dir / OOF_FILE, card.classes, card.task)
        images = _images(run_dir, card, [str(p) for p in table["path"]], progress)
        if images is None:
            return None, {}, "the run's training images are not all readable here"
        folds = table["fold"]
        fitted = calibrate_oof(model, images, table["y"], folds, _member_oof(model, card, images, folds),
                               task=card.task, strategy=strategy, in_chans=card.in_chans)  # fmt: skip
    else:
        splits = run_dir / "splits.csv"
        if not splits.is_file():
            return None, {}, f"{splits} is missing"
        m = Manifest.from_splits_csv(splits, classes=list(card.classes), task=card.task)
        train, val = m.split("train"), m.split("val")
        images = _images(run_dir, card, list(train.paths) + list(val.paths), progress)
        if images is None or not len(val):
            return None, {}, "the run's training images are not all readable here"
        targets = np.concatenate([np.asarray(train.targets), np.asarray(val.targets)])
        fitted = calibrate(model, images, targets, task=card.task, strategy=strategy, in_chans=card.in_chans,
                           val_rows=np.arange(len(train), len(images)), train_rows=np.arange(len(train)))  # fmt: skip
    return fitted.ood, fitted.ood_arrays, ""


def adapt_run(run_dir: Path, loaded, site_images: np.ndarray, *, progress: bool = False) -> AdaptedRun:
    """A copy of the run's model adapted (AdaBN) on ``site_images`` (N, S, S) uint8, with its OOD check
    and shift reference refitted (``refit_ood``). The loaded model itself is left as it was."""
    card = loaded.card
    model = adapt_batchnorm(copy.deepcopy(loaded.model), site_images, normalization=card.normalization,
                            in_chans=card.in_chans)  # fmt: skip
    spec, arrays, why = refit_ood(Path(run_dir), card, model, progress=progress)
    n = len(site_images)
    if spec is not None:
        spec = replace(spec, fitted_on=f"{spec.fitted_on or 'training images'}; refitted after BatchNorm "
                       f"adaptation to {n} site images")  # fmt: skip
        return AdaptedRun(model, n, spec, arrays)
    return AdaptedRun(model, n, note=f"no OOD check on the adapted run: {why} (the OOD statistics of the "
                      "original run describe the unadapted model's features and cannot be kept)")  # fmt: skip

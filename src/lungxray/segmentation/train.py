"""Training the lung-field U-Net on ``lung_masks/`` (``index.csv``: image, mask, source, finding).

Split: a seeded held-out fraction drawn separately within each (source, finding) group, so every
source is represented in both parts. Each image is its own patient here (openist is a teaching
collection of one film per case; the Shenzhen and Montgomery files are one film per patient), so an
image-level split is patient-free. The held-out part is never used to choose anything: the last
epoch is kept, and the held-out Dice (per source) is only reported.

Loss: BCE + soft Dice. Augmentation (batched, on tensors): random rotation / zoom / shift and gamma,
so the masks also cover films framed differently from the training ones (e.g. pediatric films).

Example::

    result = train_lung_model("../shared/data/lung_masks", "runs/lungs", size=128, epochs=20)
    result.heldout_dice      # {"all": 0.95, "openist": ..., "shenzhen": ..., "montgomery": ...}
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungxray.errors import DataError
from lungxray.segmentation.model import (
    DEFAULT_DECODER,
    DEFAULT_ENCODER,
    LungModel,
    build_unet,
    dice,
    lung_card,
    predict_lung_masks,
    save_lung_model,
    standardize,
)

INDEX = "index.csv"


@dataclass
class LungData:
    """Decoded lung_masks pairs at one size: images uint8 (N, S, S), masks bool (N, S, S)."""

    images: np.ndarray
    masks: np.ndarray
    names: list[str]
    sources: np.ndarray  # (N,) str
    findings: np.ndarray  # (N,) str


def load_lung_data(root: str | os.PathLike, size: int, *, limit: int | None = None, seed: int = 0) -> LungData:
    """Read ``root/index.csv`` and its image/mask pairs, resized ("stretch") to ``size``.

    ``limit``: a seeded subsample of that many pairs, stratified by source (tests, smoke runs).
    Raises DataError when the index is missing or has no usable row.
    """
    from PIL import Image

    from lungxray.data.imageio import read_image
    from lungxray.data.preprocess import to_model_input
    from lungxray.errors import ImageReadError

    root = Path(root)
    index = root / INDEX
    if not index.is_file():
        raise DataError(f"{root} has no {INDEX} (columns image, mask, source, finding): is it lung_masks/?")
    with index.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"image", "mask"} <= set(rows[0]):
        raise DataError(f"{index} needs the columns image and mask (has {list(rows[0])}).")
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in sorted(_stratified_pick(rows, limit, seed))]
    images, masks, kept = [], [], []
    for r in rows:
        try:
            img = to_model_input(read_image(root / r["image"]), size)
            with Image.open(root / r["mask"]) as im:
                m = np.asarray(im.convert("L"), np.float32) / 255.0
        except (ImageReadError, OSError) as exc:
            print(f"skipped {r['image']}: {exc}")  # reported, never silent
            continue
        images.append(img)
        masks.append(to_model_input(m, size) >= 128)
        kept.append(r)
    if not kept:
        raise DataError(f"{index}: no readable image/mask pair.")
    return LungData(
        images=np.stack(images),
        masks=np.stack(masks),
        names=[r["image"] for r in kept],
        sources=np.array([r.get("source", "unknown") for r in kept]),
        findings=np.array([r.get("finding", "unknown") for r in kept]),
    )


def _stratified_pick(rows: list[dict[str, str]], n: int, seed: int) -> list[int]:
    """``n`` row indices, drawn round-robin over sources in a seeded order."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get("source", ""), []).append(i)
    queues = [list(rng.permutation(v)) for _, v in sorted(groups.items())]
    out: list[int] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop()))
    return out


def split_by_source(groups: np.ndarray, heldout: float = 0.2, seed: int = 0) -> np.ndarray:
    """(N,) group labels (e.g. "source/finding") -> (N,) bool, True for held-out rows.

    Within each group a seeded ``round(heldout * n)`` rows (at least 1 when the group has 2 or more).
    """
    rng = np.random.default_rng(seed)
    out = np.zeros(len(groups), bool)
    for g in sorted(set(groups.tolist())):
        idx = np.flatnonzero(groups == g)
        k = int(round(heldout * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        out[rng.permutation(idx)[:k]] = True
    return out


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (±10°), zoom (0.75-1.15), shift (±8%) and gamma (0.7-1.4) of a batch.

    x: float (B, 1, S, S) in [0, 1]; y: float (B, 1, S, S) in {0, 1}. Same geometry for both.
    """
    b = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    ang = u(-10, 10) * math.pi / 180
    scale = u(0.87, 1.33)  # sampling-grid scale: > 1 zooms out (the chest gets smaller)
    tx, ty = u(-0.08, 0.08), u(-0.08, 0.08)
    theta = torch.stack(
        [
            torch.stack([scale * torch.cos(ang), -scale * torch.sin(ang), tx], 1),
            torch.stack([scale * torch.sin(ang), scale * torch.cos(ang), ty], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    gamma = u(0.7, 1.4)[:, None, None, None]
    return x.clamp(0, 1) ** gamma, y


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - soft Dice), the Dice computed per image and averaged."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    soft = (2 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)
    return bce + (1.0 - soft.mean())


@dataclass
class LungTrainResult:
    run_dir: Path
    heldout_dice: dict[str, float]  # "all" and one entry per source
    train_dice: float  # mean Dice on the training images (no augmentation)
    epochs: int
    seconds: float
    n_train: int
    n_heldout: int


def fit_unet(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    encoder: str = DEFAULT_ENCODER,
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER,
    augment_batches: bool = True,
    log: Callable[[str], Any] | None = None,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train a U-Net on uint8 (N, S, S) images and bool masks; returns (model in eval mode, history)."""
    with torch.random.fork_rng():  # the init draws from torch's global generator: leave it untouched
        torch.manual_seed(seed)
        model = build_unet(encoder, decoder_channels)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(len(images) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    x_all = torch.from_numpy(images).float()[:, None] / 255.0
    y_all = torch.from_numpy(masks.astype(np.float32))[:, None]
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t0, total, seen = time.time(), 0.0, 0
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start : start + batch_size])
            if len(idx) < 2:  # BatchNorm needs 2 samples
                continue
            x, y = x_all[idx], y_all[idx]
            if augment_batches:
                x, y = augment(x, y, gen)
            loss = dice_bce_loss(model(standardize(x * 255.0)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        row = {"epoch": epoch, "loss": total / max(seen, 1), "seconds": time.time() - t0}
        history.append(row)
        if log:
            log(f"epoch {epoch}/{epochs}  loss {row['loss']:.4f}  {row['seconds']:.0f}s")
    return model.eval(), history


def train_lung_model(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 128,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 3e-3,
    heldout: float = 0.2,
    seed: int = 0,
    encoder: str = DEFAULT_ENCODER,
    decoder_channels: tuple[int, ...] = DEFAULT_DECODER,
    limit: int | None = None,
    augment_batches: bool = True,
    threads: int | None = None,
    log: Callable[[str], Any] | None = print,
) -> LungTrainResult:
    """Train the lung-field model on a lung_masks folder and write its run directory.

    Args:
        data: folder with ``index.csv`` (image, mask, source, finding) and the files it names.
        out: run directory to write (model.safetensors, model.json, splits.csv, history.csv).
        size: input side in pixels (images and masks are stretched to size x size).
        heldout: fraction held out within each (source, finding) group; 0 trains on everything.
        limit: use a seeded, source-stratified subsample of this many pairs (tests, smoke runs).
        augment_batches: random geometry / gamma per batch (off only for tiny smoke runs).
        threads: torch CPU threads during training (restored afterwards).

    Returns:
        LungTrainResult with the held-out Dice per source (also stored in the card's
        ``training.best_val`` as ``dice`` and ``dice_<source>``).

    Raises:
        DataError: the folder is not a lung_masks folder. ModelError: smp missing.
    """
    from lungxray.rundir import write_history

    t_start = time.time()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        ds = load_lung_data(data, size, limit=limit, seed=seed)
        groups = np.char.add(np.char.add(ds.sources.astype(str), "/"), ds.findings.astype(str))
        held = split_by_source(groups, heldout, seed) if heldout > 0 else np.zeros(len(groups), bool)
        tr = ~held
        model, history = fit_unet(
            ds.images[tr], ds.masks[tr], epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            encoder=encoder, decoder_channels=decoder_channels, augment_batches=augment_batches, log=log,
        )
        card = lung_card(Path(out).name, size, encoder, tuple(decoder_channels))
        lm = LungModel(path=None, card=card, model=model)
        train_dice = float(dice(predict_lung_masks(lm, ds.images[tr]), ds.masks[tr]).mean())
        scores: dict[str, float] = {}
        if held.any():
            d = dice(predict_lung_masks(lm, ds.images[held]), ds.masks[held])
            scores["all"] = float(d.mean())
            for s in sorted(set(ds.sources[held].tolist())):
                scores[s] = float(d[ds.sources[held] == s].mean())
        seconds = time.time() - t_start
        counts = {
            split: {s: int(((ds.sources == s) & sel).sum()) for s in sorted(set(ds.sources.tolist()))}
            for split, sel in (("train", tr), ("heldout", held))
        }
        card = replace(
            card,
            training=replace(
                card.training,
                data=str(data),
                counts=counts,
                epochs_run=epochs,
                best_epoch=epochs,
                best_val={"train_dice": train_dice, **{("dice" if k == "all" else f"dice_{k}"): v for k, v in scores.items()}},
                seconds=round(seconds, 1),
                device="cpu",
                parameters=int(sum(p.numel() for p in model.parameters())),
            ),
        )
        run_dir = save_lung_model(out, card, model)
        _write_splits(run_dir / "splits.csv", ds, held)
        write_history(run_dir, history, ["epoch", "loss", "seconds"])
    finally:
        torch.set_num_threads(old_threads)
    if log:
        log(f"held-out Dice {scores}  (train {train_dice:.3f})  {seconds:.0f}s -> {run_dir}")
    return LungTrainResult(
        run_dir=run_dir, heldout_dice=scores, train_dice=train_dice, epochs=epochs, seconds=seconds,
        n_train=int(tr.sum()), n_heldout=int(held.sum()),
    )


def _write_splits(path: Path, ds: LungData, held: np.ndarray) -> None:
    from lungxray.io import atomic_write_text

    lines = ["path,split,patient,source,finding"]
    for name, h, s, f in zip(ds.names, held, ds.sources, ds.findings, strict=True):
        lines.append(f"{name},{'heldout' if h else 'train'},{Path(name).stem},{s},{f}")
    atomic_write_text(path, "\n".join(lines) + "\n")

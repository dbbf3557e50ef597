"""The data a training run sees: manifest -> patient-grouped splits -> decoded uint8 images (``prepare_data``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from lungxray.config import Config
from lungxray.data.cache import cache_images
from lungxray.data.copies import copies_across_splits
from lungxray.data.manifest import Manifest
from lungxray.data.readers import load_manifest
from lungxray.data.rows import FileRows, RowView, take_rows
from lungxray.data.splits import assign_splits
from lungxray.errors import DataError


@dataclass
class PreparedData:
    """A manifest with every split assigned and its images decoded: rows of failed files removed."""

    manifest: Manifest
    # (N, S, S) uint8 aligned with manifest: the cache set read per batch (FileRows), or a RowView of its
    # readable rows (never a copy)
    images: np.ndarray | RowView | FileRows
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason (reported, skipped)
    cache_stats: dict[str, float] = field(default_factory=dict)
    sha1s: tuple[str, ...] = ()  # content hash per manifest row (what a resumed run checks)
    # [earlier-split path, later-split path] pairs that are the same radiograph (data.copies): leakage
    copies: list[list[str]] = field(default_factory=list)


def _subsample(m: Manifest, max_images: int, seed: int) -> Manifest:
    """Seeded subsample of ``max_images`` rows, stratified by label and split (and source, for a
    multi-source manifest) for smoke runs."""
    if len(m) <= max_images:
        return m
    rng = np.random.default_rng(seed)
    strata = np.array([f"{s}|{lab}" for s, lab in zip(m.splits, m.label_strings(), strict=True)])
    if m.sources:  # every source keeps its share (single-source strata unchanged)
        strata = np.char.add(np.array([f"{src}|" for src in m.sources]), strata)
    keep: list[int] = []
    for value in np.unique(strata):
        rows = np.flatnonzero(strata == value)
        k = max(1, round(len(rows) * max_images / len(m)))
        keep.extend(rng.choice(rows, size=min(k, len(rows)), replace=False).tolist())
    return m.subset(np.sort(np.array(keep)))


MAX_UNREADABLE = 0.01  # share of a split that may be unreadable (at least one file) before training refuses
COPY_CHECK_MAX = 20_000  # images up to which training looks for copies across splits (O(N^2); audit does any N)


def prepare_data(
    cfg: Config, *, progress: bool = True, console: Console | None = None, manifest: Manifest | None = None
) -> PreparedData:
    """Manifest from ``cfg.data`` -> splits by patient -> cached (N, S, S) uint8 images.

    ``manifest`` (a resumed run's splits.csv) is used as it is instead of loading and splitting
    ``cfg.data``. Unreadable files are reported on ``console`` and dropped. Raises DataError when more
    than 1% of a split (and more than one file) is unreadable, or the train or val split ends up empty.
    """
    d = cfg.data
    if manifest is not None:
        m = manifest
    else:
        m = load_manifest(d)
        if d.max_images:
            # subsample before splitting so val/test fractions stay as asked
            m = _subsample(m, d.max_images, cfg.train.seed)
        m = assign_splits(m, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)
    from lungxray.focus import Preprocessor

    pre = Preprocessor.from_config(d)  # the lung-focused options of data: (plain to_model_input when off)
    cached = cache_images(m.paths, d.size, resize=d.resize, cache_dir=d.cache_dir, progress=progress,
                          preprocessor=pre)  # fmt: skip
    fallbacks = 0 if pre.is_default else cached.lung_fallbacks  # reads every info row: lung pipelines only
    if fallbacks and console:
        console.print(f"[yellow]{fallbacks} image(s) without plausible lung fields: used whole.[/]")
    sha1s = cached.sha1s()
    if not cached.ok.all():
        _check_unreadable(m, cached.ok, cached.errors)
        if console:
            console.print(f"[yellow]{int((~cached.ok).sum())} unreadable image(s) skipped:[/]")
            for path, reason in list(cached.errors.items())[:10]:
                console.print(f"  {escape(path)}: {escape(reason)}")
        sha1s = tuple(sha1s[i] for i in np.flatnonzero(cached.ok))
        keep = np.flatnonzero(cached.ok)
        m = m.subset(keep)
        images = take_rows(FileRows.of(cached.images), keep)  # readable rows by index: no (N, S, S) copy
    else:
        images = FileRows.of(cached.images)  # read per batch, never mapped: resident memory flat in N
    # a k-fold run (train.folds >= 2) pools train and val, so it needs no val split
    for split in ("train",) if cfg.train.folds >= 2 else ("train", "val"):
        if len(m.split(split)) == 0:
            raise DataError(f"the {split} split of {d.path} is empty; add images or lower data.val_fraction.")
    # a later split's film that copies an earlier split's (data.copies): [earlier path, later path]
    copies = ([[m.paths[j], m.paths[i]] for j, i in copies_across_splits(m.splits, images)]
              if len(m) <= COPY_CHECK_MAX else [])  # fmt: skip
    if copies and console:
        a, b = copies[0]
        console.print(
            f"[bold red]LEAKAGE: {len(copies)} image(s) of a later split are copies of images of an earlier one "
            f"(e.g. {escape(b)} = {escape(a)}); the test figures will be optimistic. "
            "`lungxray audit` lists them all.[/]"
        )
    stats = {
        "seconds": cached.build_seconds,
        "built": cached.built,
        "reused": cached.reused,
        "images_per_s": cached.images_per_s,
        "lung_fallbacks": fallbacks,
    }
    return PreparedData(
        manifest=m, images=images, unreadable=dict(cached.errors), cache_stats=stats, sha1s=sha1s, copies=copies
    )


def _check_unreadable(m: Manifest, ok: np.ndarray, errors: dict[str, str]) -> None:
    """DataError when more than ``MAX_UNREADABLE`` of a split (and more than one file) failed to decode."""
    splits = np.asarray(m.splits)
    for split in dict.fromkeys(m.splits):
        rows = splits == split
        bad = int((~ok[rows]).sum())
        if bad > max(1, MAX_UNREADABLE * int(rows.sum())):
            failed = [m.paths[i] for i in np.flatnonzero(rows & ~ok)]
            examples = "; ".join(f"{p}: {errors.get(p, '?')}" for p in failed[:3])
            raise DataError(
                f"{bad} of {int(rows.sum())} images of the {split or 'unassigned'} split cannot be read "
                f"(more than {MAX_UNREADABLE:.0%}), e.g. {examples}. Fix or remove them."
            )


def source_class_weights(sources: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) sampling weights summing to 1: each source keeps its share of the rows, split equally among
    the classes it holds. One source: plain class balance. Shapes: ``sources``, ``y`` (N,)."""
    _, s = np.unique(sources, return_inverse=True)
    cell = s * (int(y.max()) + 1) + y
    per_cell = np.bincount(cell)[cell]
    per_source = np.bincount(s)[s]
    classes_in_source = np.array([len(np.unique(y[s == k])) for k in range(s.max() + 1)])[s]
    return per_source / (len(y) * classes_in_source * per_cell)


def epoch_order(m: Manifest, train_idx: np.ndarray, balance: str, g: torch.Generator) -> np.ndarray:
    """Train row indices for one epoch, drawn from ``g``: a permutation, or (not multilabel) sampling
    with replacement, class-balanced (``"sampler"``) or class-balanced within each source with each
    source keeping its share of the epoch (``"source-sampler"``)."""
    n = len(train_idx)
    if balance in ("sampler", "source-sampler") and m.task != "multilabel":
        y = np.asarray(m.targets)[train_idx].astype(int)
        src = np.asarray(m.source_names)[train_idx] if balance == "source-sampler" else np.zeros(n, int)
        w = torch.as_tensor(source_class_weights(src, y), dtype=torch.float64)
        pick = torch.multinomial(w, n, replacement=True, generator=g).numpy()
    else:
        pick = torch.randperm(n, generator=g).numpy()
    return train_idx[pick]

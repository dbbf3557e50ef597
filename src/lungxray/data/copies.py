"""The same radiograph in two image sets, found by content: re-encoded, resized or re-contrasted copies.

A film saved again under another name is still the same film: a model may have trained on it, or it may
be one of its own test films (``evaluation.overlap``, ``data.audit``). Every Normal and Viral Pneumonia
film of the covid19 set, for one, is a Kermany film saved again at 640 px with another contrast curve
(docs/benchmarks.md, "covid19 is made of Kermany films").
The perceptual hash and the Pearson thumbnail correlation that ``data.audit`` uses for duplicates within
a set miss most of those (phash 6-12 bits apart; Pearson r 0.95-0.99). A rank (Spearman) correlation of
thumbnails is blind to any monotone contrast change, so copies are found by ranks:

* candidates: Spearman r >= ``CANDIDATE_R`` on 32 px thumbnails (all pairs, one matrix product per block);
* confirmed: Spearman r >= ``COPY_R`` on 64 px thumbnails. Measured on ../shared/data (2026-12-02): the
  180 covid19 copies score >= 0.994 (32 px) and >= 0.996 (64 px); the closest films of two different
  Kermany patients 0.974 and 0.966 (two exceptions at 1.000: the same film filed twice in Kermany's test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungxray.data.cache import CachedImages
from lungxray.data.manifest import SPLITS

CANDIDATE_R = 0.95  # Spearman r of 32 px thumbnails for a pair to be checked at all
COPY_R = 0.98  # Spearman r of 64 px thumbnails for the pair to be the same radiograph


def rank_thumbnails(images: np.ndarray, side: int, rows: np.ndarray | None = None,
                    block: int = 2048) -> np.ndarray:  # fmt: skip
    """(len(rows), side * side) float32: each image box-averaged to ``side`` px, its pixels replaced by
    their ranks, centred and scaled to unit norm, so a dot product of two rows is their Spearman r.

    ``images``: (N, S, S) uint8 with S >= side (a cache's rows; a memmap is read per block); ``rows``:
    which of them (default all). A constant image (no ranks to correlate) gets a zero row.
    """
    import torch
    from scipy.stats import rankdata

    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), side * side), np.float32)
    for start in range(0, len(rows), block):
        x = torch.from_numpy(np.asarray(images[rows[start : start + block]], dtype=np.float32))[:, None]
        small = torch.nn.functional.adaptive_avg_pool2d(x, side).flatten(1).numpy()
        r = rankdata(small, axis=1).astype(np.float32)
        r -= r.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(r, axis=1, keepdims=True)
        out[start : start + block] = np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)
    return out


def copy_pairs(a: np.ndarray, b: np.ndarray, rows_a: np.ndarray | None = None, rows_b: np.ndarray | None = None,
               *, candidate_r: float = CANDIDATE_R, copy_r: float = COPY_R, block: int = 1024,
               distinct: bool = False) -> list[tuple[int, int, float]]:  # fmt: skip
    """Images of ``a`` that are copies of images of ``b``: [(i, j, r)], the best-matching j per i, by i.
    ``distinct``: never pair a row with the same row index (``a`` and ``b`` are one array).

    ``a`` (Na, S, S), ``b`` (Nb, S, S) uint8 images of one size and preprocessing, S >= 64 (memmaps
    are read per block); ``rows_a`` / ``rows_b``: the indices to compare (default all). Candidates by
    32 px ranks (O(Na * Nb) in blocks), confirmed by 64 px ranks (``r`` is that Spearman r).
    """
    rows_a = np.arange(len(a)) if rows_a is None else np.asarray(rows_a, dtype=np.int64)
    rows_b = np.arange(len(b)) if rows_b is None else np.asarray(rows_b, dtype=np.int64)
    if len(rows_a) == 0 or len(rows_b) == 0:
        return []
    sa, sb = rank_thumbnails(a, 32, rows_a), rank_thumbnails(b, 32, rows_b)
    cand = [np.zeros((0, 2), np.int64)]
    for start in range(0, len(sa), block):
        p, q = np.nonzero(sa[start : start + block] @ sb.T >= candidate_r)
        p = p + start
        if distinct:
            other = rows_a[p] != rows_b[q]
            p, q = p[other], q[other]
        cand.append(np.stack([p, q], axis=1))
    pairs = np.concatenate(cand)
    ua, ub = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
    fa = dict(zip(ua.tolist(), rank_thumbnails(a, 64, rows_a[ua]), strict=True))
    fb = dict(zip(ub.tolist(), rank_thumbnails(b, 64, rows_b[ub]), strict=True))
    best: dict[int, tuple[int, float]] = {}
    for p, q in pairs.tolist():
        r = float(fa[p] @ fb[q])
        i, j = int(rows_a[p]), int(rows_b[q])
        if r >= copy_r and (i not in best or r > best[i][1]):
            best[i] = (j, r)
    return [(i, j, r) for i, (j, r) in sorted(best.items())]


def copies(a: CachedImages, b: CachedImages) -> list[tuple[int, int, str]]:
    """Files of ``a`` that are copies of files of ``b`` (both cached at one size and preprocessing):
    [(i, j, "exact" | "near")]; "exact" = the same bytes (sha1). Unreadable files are skipped."""
    sha_a, sha_b = a.sha1s(), b.sha1s()
    return [(i, j, "exact" if sha_a[i] == sha_b[j] else "near")
            for i, j, _ in copy_pairs(a.images, b.images, np.flatnonzero(a.ok), np.flatnonzero(b.ok))]  # fmt: skip


def copies_within_splits(splits: Sequence[str], images: np.ndarray,
                         rows: Sequence[int] | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """(i, j) row pairs, i < j, in the same split that are the same radiograph (e.g. one film saved
    twice with another contrast curve). Arguments as ``copies_across_splits``."""
    split = np.asarray(splits)
    keep = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    pairs = set()
    for name in SPLITS:
        rows_s = keep[split[keep] == name]
        pairs |= {(min(i, j), max(i, j)) for i, j, _ in copy_pairs(images, images, rows_s, rows_s, distinct=True)}
    return sorted(pairs)


def copies_across_splits(splits: Sequence[str], images: np.ndarray,
                         rows: Sequence[int] | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """(earlier, later) row pairs in different splits (train < val < test) that are the same radiograph:
    a later split's image that copies an earlier split's is leakage. ``splits`` (N,) per row of
    ``images`` (N, S, S); ``rows``: the rows to consider (default all, e.g. only the readable ones)."""
    split = np.asarray(splits)
    keep = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
    pairs = []
    for k, earlier in enumerate(SPLITS):
        rows_e = keep[split[keep] == earlier]
        for later in SPLITS[k + 1 :]:
            pairs += [(j, i) for i, j, _ in copy_pairs(images, images, keep[split[keep] == later], rows_e)]
    return pairs

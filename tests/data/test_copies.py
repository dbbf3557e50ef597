"""data.copies: the same radiograph found by rank correlation, whatever contrast curve it was saved with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import require_data
from lungxray.data.copies import copies_across_splits, copies_within_splits, copy_pairs, rank_thumbnails


def _films(n: int, size: int = 128) -> np.ndarray:
    """(n, size, size) uint8: real X-rays of n different patients, as a cache stores them."""
    files = sorted((require_data() / "train" / "NORMAL").glob("*.jpeg"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("L").resize((size, size))) for f in files])


def test_rank_rows_give_the_spearman_correlation():
    from scipy.stats import spearmanr

    films = _films(3)
    r = rank_thumbnails(films, 32)
    small = films.reshape(3, 32, 4, 32, 4).mean(axis=(2, 4)).reshape(3, -1)  # 4x4 box average
    assert r[0] @ r[1] == pytest.approx(spearmanr(small[0], small[1]).statistic, abs=1e-5)
    assert np.linalg.norm(r, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert not rank_thumbnails(np.full((1, 64, 64), 7, np.uint8), 32).any()  # constant: a zero row


def test_a_recontrasted_copy_is_found_and_another_patient_is_not():
    films = _films(40)
    gamma = (255 * (films[:5] / 255.0) ** 0.6).astype(np.uint8)  # another export's contrast curve
    flipped = films[5:6, :, ::-1]  # the same film mirrored is another picture to a hash
    queries = np.concatenate([gamma, flipped, np.zeros((1, 128, 128), np.uint8)])
    found = copy_pairs(queries, films[:40])
    assert [(i, j) for i, j, _ in found] == [(k, k) for k in range(5)]
    assert min(r for *_, r in found) > 0.99
    assert copy_pairs(queries[:0], films) == [] and copy_pairs(queries, films, rows_b=[]) == []


def test_copies_across_splits_pairs_the_earlier_split_first():
    films = _films(4, size=64)
    images = np.concatenate([films, (255 * (films[1:2] / 255.0) ** 0.7).astype(np.uint8)])  # row 4 copies row 1
    splits = ("train", "train", "val", "train", "test")
    assert copies_across_splits(splits, images) == [(1, 4)]
    assert copies_across_splits(splits, images, rows=[0, 2, 3, 4]) == []  # row 1 unreadable: nothing to copy
    assert copies_across_splits(("train",) * 5, images) == []  # within a split: the audit's business


def test_copies_within_splits_pairs_each_copy_once_and_never_a_film_with_itself():
    films = _films(5, size=64)
    again = (255 * (films[2:3] / 255.0) ** 1.5).astype(np.uint8)  # row 5 copies row 2, darker
    images = np.concatenate([films, again])
    assert copies_within_splits(("test",) * 6, images) == [(2, 5)]
    assert copies_within_splits(("train", "train", "train", "test", "test", "test"), images) == []  # other splits
    assert copies_within_splits(("test",) * 5, films) == []  # five different patients

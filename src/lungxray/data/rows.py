"""Out-of-core row access: ``RowView(base, rows)`` reads rows ``rows`` of a (N, S, S) array (a cache
memmap) lazily, one batch at a time, without ever copying the whole array.

``view[i]`` (an int) is one row; ``view[a:b]``, ``view[idx]`` (int array) and ``view[mask]`` read only
those rows, in sorted order for memmap locality, and return them in the order asked (a fresh, writable
array). ``take_rows(images, rows)`` composes views (a view of a view indexes the base directly).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RowView:
    """Rows ``rows`` of ``base`` (e.g. the readable rows of a cache memmap), indexed lazily."""

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.base[int(self.rows[key])]
        return read_rows(self.base, self.rows[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole view as an array: a copy of ``len(self)`` rows (for small subsets only)."""
        out = read_rows(self.base, self.rows)
        return out if dtype is None else out.astype(dtype)


def read_rows(base: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``base[rows]`` read in sorted row order (memmap locality), returned in the order of ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2 or bool(np.all(rows[1:] >= rows[:-1])):
        return np.asarray(base[rows])
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *base.shape[1:]), dtype=base.dtype)
    out[order] = base[rows[order]]
    return out


def take_rows(images: np.ndarray | RowView, rows: np.ndarray) -> RowView:
    """A lazy view of ``images[rows]`` (no copy): composes with an existing RowView."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(images, RowView):
        return RowView(images.base, images.rows[rows])
    return RowView(images, rows)

"""Out-of-core row access: ``RowView(base, rows)`` reads rows ``rows`` of a (N, S, S) array (a cache
memmap) lazily, one batch at a time, without ever copying the whole array.

``view[i]`` (an int) is one row; ``view[a:b]``, ``view[idx]`` (int array) and ``view[mask]`` read only
those rows, in sorted order for memmap locality, and return them in the order asked (a fresh, writable
array). ``take_rows(images, rows)`` composes views (a view of a view indexes the base directly).

``FileRows`` is the same array read from its file by positioned reads instead of a memory map: a
memmap maps the pages around every row it touches (fault-around, readahead), so random batches soon
count the whole file in the process's resident memory; ``FileRows`` holds only the rows asked for.
"""

from __future__ import annotations

import os
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


def pread_rows(fd: int, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[j] = row rows[j]`` of the raw file ``fd`` (rows of ``out[0].nbytes`` bytes from offset 0),
    one read per run of consecutive rows. ``out`` is C-contiguous; raises OSError on a short read."""
    row_bytes = out[0].nbytes if len(out) else 0
    j = 0
    while j < len(rows):
        k = j + 1
        while k < len(rows) and rows[k] == rows[k - 1] + 1:
            k += 1
        view = memoryview(out[j:k]).cast("B")
        got = os.preadv(fd, [view], int(rows[j]) * row_bytes)
        if got != len(view):
            raise OSError(f"short read ({got} of {len(view)} bytes)")
        j = k


class FileRows:
    """A raw (N, *row_shape) array in a file (e.g. a cache set), indexed like an array without mapping it:
    ``rows[i]``, ``rows[a:b]``, ``rows[idx]``, ``rows[mask]`` return fresh arrays of just those rows."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: Any = np.uint8):
        self.path, self.shape, self.dtype = os.fspath(path), tuple(int(x) for x in shape), np.dtype(dtype)
        if os.path.getsize(self.path) < int(np.prod(self.shape)) * self.dtype.itemsize:
            raise ValueError(f"{self.path} is smaller than an array of shape {self.shape}")

    @classmethod
    def of(cls, images: Any) -> Any:
        """``images`` as FileRows when it is a read-only memmap of a whole raw file (what the cache
        returns), else ``images`` itself."""
        if (isinstance(images, np.memmap) and images.filename and images.offset == 0 and images.ndim >= 2
                and images.flags.c_contiguous and os.path.getsize(images.filename) == images.nbytes):  # fmt: skip
            return cls(images.filename, images.shape, images.dtype)
        return images

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        order = np.argsort(rows, kind="stable")
        got = np.empty((len(rows), *self.shape[1:]), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            pread_rows(fd, rows[order], got)
        finally:
            os.close(fd)
        out = np.empty_like(got)
        out[order] = got
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(np.array([key]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(len(self))))
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean mask must have length {len(self)}, got shape {key.shape}")
            key = np.flatnonzero(key)
        return self._read(key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

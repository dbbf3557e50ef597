"""Compact in-memory structures of the image cache (``lungxray.data.cache``), flat in the number of files.

* ``ShardIndex``: content sha1 -> (shard, row) as three sorted numpy columns (40-byte ASCII keys, int32
  shard ids, int32 rows: 48 bytes per cached file), looked up in bulk by binary search. It replaces a
  dict of tuples and info dicts (about 1 KB per file).
* ``InfoRows``: the per-file decode info of ``CachedImages.info`` (width, height, mode, format, phash,
  sha1), a read-only sequence aligned with the paths that reads a shard's JSON only when one of its
  rows is asked for (the audit), so training and prediction never load it.

Keys are sha1 hex digests as ``"S40"`` bytes; ``b""`` marks "no key" (a file that could not be read)
and is never found.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

KEY = "S40"  # a sha1 hex digest as ASCII bytes


def as_keys(sha1s: Sequence[str | None]) -> np.ndarray:
    """(N,) ``S40`` array of hex digests; None -> ``b""`` (never found)."""
    return np.array([s or "" for s in sha1s], dtype=KEY)


class ShardIndex:
    """sha1 -> (shard id, row): sorted ``keys`` with aligned ``shard`` and ``row`` (int32) columns.

    ``names[shard]`` is the shard's file name. When a key is added twice, the first one added wins
    (shards are loaded oldest first, as the dict's ``setdefault`` did).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.keys = np.zeros(0, KEY)
        self.shard = np.zeros(0, np.int32)
        self.row = np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.keys)

    def add_shards(self, shards: Sequence[tuple[str, np.ndarray]]) -> None:
        """Add shards given as (file name, (R,) S40 keys of its rows in order); one sort for all of them."""
        if not shards:
            return
        ids = [np.full(len(k), len(self.names) + i, np.int32) for i, (_, k) in enumerate(shards)]
        rows = [np.arange(len(k), dtype=np.int32) for _, k in shards]
        self.names.extend(name for name, _ in shards)
        keys = np.concatenate([self.keys, *(np.asarray(k, KEY) for _, k in shards)])
        shard = np.concatenate([self.shard, *ids])
        row = np.concatenate([self.row, *rows])
        order = np.argsort(keys, kind="stable")  # stable: among equal keys, the earliest added first
        keys = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        keep = order[first]
        self.keys, self.shard, self.row = keys[first], shard[keep], row[keep]

    def find(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 position of each key in the index, -1 where absent (``b""`` is always absent)."""
        keys = np.asarray(keys, KEY)
        if len(self.keys) == 0 or len(keys) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.searchsorted(self.keys, keys).astype(np.int64)
        pos[pos >= len(self.keys)] = 0
        hit = (self.keys[pos] == keys) & (keys != b"")
        return np.where(hit, pos, -1)


def shard_keys(entries: list) -> np.ndarray:
    """The (R,) S40 keys of a shard JSON's ``entries`` (``[[sha1, info], ...]``)."""
    return np.array([e[0] for e in entries], dtype=KEY)


def _columns(entries: list) -> dict[str, np.ndarray]:
    """A shard's info dicts as one numpy column per field (ints as int64, the rest as str)."""
    fields: dict[str, None] = {}
    for _, info in entries:
        fields.update(dict.fromkeys(info))
    cols = {}
    for f in fields:
        values = [info.get(f) for _, info in entries]
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        cols[f] = np.array(values, dtype=np.int64) if ints else np.array([str(v) for v in values])
    return cols


class InfoRows(Sequence):
    """``CachedImages.info``: per file a dict ``width, height, mode, format, phash, sha1``, or None for a
    file that failed; read lazily from the shards' JSON (each shard at most once, kept as columns).

    Args:
        shards_dir: the store's ``shards`` folder.
        names: shard file names (``*.u8``), indexed by ``shard``.
        shard, row: (N,) int32 shard id and row per file; shard -1 where the file failed.
        keys: (N,) S40 sha1 per file.
    """

    def __init__(self, shards_dir: Path, names: Sequence[str], shard: np.ndarray, row: np.ndarray,
                 keys: np.ndarray) -> None:  # fmt: skip
        self._dir, self._names = Path(shards_dir), list(names)
        self._shard, self._row, self._keys = shard, row, keys
        self._cols: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._shard)

    def _shard_columns(self, sid: int) -> dict[str, np.ndarray]:
        if sid not in self._cols:
            path = (self._dir / self._names[sid]).with_suffix(".json")
            self._cols[sid] = _columns(json.loads(path.read_text())["entries"])
        return self._cols[sid]

    def _one(self, i: int) -> dict[str, Any] | None:
        sid = int(self._shard[i])
        if sid < 0:
            return None
        cols, row = self._shard_columns(sid), int(self._row[i])
        out: dict[str, Any] = {f: c[row].item() for f, c in cols.items()}
        out["sha1"] = self._keys[i].decode()
        return out

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"info index {i} out of range for {len(self)} files")
        return self._one(i % len(self))

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        return (self._one(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (InfoRows, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"InfoRows({len(self)} files)"

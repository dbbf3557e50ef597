"""Decode and resize every image once into a uint8 memmap, keyed by content hash and preprocessing.

Layout under ``cache_dir/v{CACHE_FORMAT}/{size}-{resize}/`` (``{size}-{resize}-{key}/`` for a
lung-focused pipeline, ``key`` = ``Preprocessor.cache_key``, so different pipelines never share rows):

* ``shards/<id>.u8``: raw uint8 rows of ``size * size`` bytes, append-only (one file per flush);
* ``shards/<id>.json``: the shard's index, rows in order: ``[sha1, {width, height, mode, format, phash}]``;
* ``sets/<key>.u8``: one data set's ``(N, size, size)`` array, assembled from the shards, where
  ``key`` hashes the ordered list of file sha1s; it is what an epoch reads (a memmap, never a decode).

Every file is written to a temporary name and moved into place with ``os.replace`` (``lungxray.io``), and a shard's
index is written only after its rows, so a killed run never leaves a cache that reads wrong. Files
that fail to decode are not stored: they are retried on the next call (a fixed file then succeeds).
A decoding worker that dies (out of memory, a decoder crash) breaks its pool: the unfinished chunks
are decoded again in a fresh pool (the last try one file per task), so only a file that kills every
worker it meets is reported unreadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungxray.data.cache_index import KEY, InfoRows, ShardIndex, as_keys, shard_keys
from lungxray.data.preprocess import RESIZE_MODES, to_model_input
from lungxray.data.rows import pread_rows
from lungxray.errors import ImageReadError, check_option
from lungxray.io import atomic_path
from lungxray.io import atomic_write_bytes as _atomic_write_bytes

CACHE_FORMAT = 2  # 2: 12-bit data in 16-bit PNG/TIFF scaled by 4095 (was 65535). Bump when decoding or to_model_input changes what a cached row holds
_STORE_VERSION = f"v{CACHE_FORMAT}"
_CHUNK = 32  # files per worker task: large enough to amortise pickling, small for a smooth bar
_FLUSH_BYTES = 256 * 2**20  # close a shard at least every 256 MiB of decoded rows
_SHARD_ROWS = 16384  # ... or every 16384 rows (a shard's JSON is parsed whole when the store opens)
_BLOCK = 1024  # rows per read/write when a set is assembled
_STALE_TMP_S = 3600.0
_POOL_ATTEMPTS = 3  # pool rounds after a worker dies; the last one gives each file a pool of its own


def default_cache_dir() -> Path:
    """The cache root: ``$LUNGXRAY_CACHE`` if set, else ``~/.cache/lungxray``."""
    env = os.environ.get("LUNGXRAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lungxray"


@dataclass
class CachedImages:
    """Model-ready images of a list of files, aligned with the list.

    ``images`` is (N, size, size) uint8 (a read-only memmap; rows of failed files are zeros); ``ok`` is
    (N,) bool; ``errors`` maps path -> reason; ``info`` holds per file ``width, height, mode, format,
    sha1, phash`` (hex) or None if it failed. ``built + reused + len(errors) == N``: ``built`` files were
    decoded this call, ``reused`` came from the cache. ``images_per_s`` is the decoding throughput.
    """

    images: np.ndarray
    ok: np.ndarray
    errors: dict[str, str]
    info: InfoRows | list[dict | None]
    build_seconds: float
    built: int
    reused: int
    decode_seconds: float = 0.0
    decoded: int = 0  # decode attempts this call (distinct contents, failures included)
    store: str = field(default="", repr=False)
    keys: np.ndarray | None = field(default=None, repr=False)  # (N,) S40 sha1 per file, b"" if it failed

    def sha1s(self) -> tuple[str, ...]:
        """The sha1 hex of each file's bytes, '' where it failed (what ``info[i]["sha1"]`` holds, without
        reading the shards' info)."""
        if self.keys is None:
            return tuple(i["sha1"] if i else "" for i in self.info)
        return tuple(k.decode() for k in self.keys.tolist())

    @property
    def lung_fallbacks(self) -> int:
        """Files whose lung mask was implausible (lung-focused pipelines): preprocessed whole."""
        return sum(1 for i in self.info if i and i.get("lungs") == "fallback")

    @property
    def images_per_s(self) -> float:
        """Decode throughput of this call (files per second of decoding wall time; 0 if none)."""
        return self.decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _sha1_file(path: str) -> tuple[str | None, str | None]:
    """(sha1 hex of the file's bytes, None) or (None, reason)."""
    try:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest(), None
    except FileNotFoundError:
        return None, "file not found"
    except IsADirectoryError:
        return None, "is a directory, not an image file"
    except OSError as e:
        return None, f"cannot read file: {e.strerror or e}"


def _decode_chunk(jobs: list[tuple[str, str]], size: int, resize: str, preprocessor=None) -> list[tuple]:
    """Worker: decode (sha1, path) jobs -> [(sha1, row uint8 | None, info | None, reason | None)].

    ``preprocessor`` (a ``lungxray.focus.Preprocessor``, pickled to the worker) replaces
    ``to_model_input``; its lung-mask outcome is kept in the row's info as ``lungs`` ("found" / "fallback")."""
    import imagehash
    from PIL import Image

    from lungxray.data.imageio import read_image_with_info

    out = []
    for sha1, path in jobs:
        try:
            img, meta = read_image_with_info(path)
            focused = None if preprocessor is None else preprocessor.process(img)
            row = to_model_input(img, size, resize) if focused is None else focused.image
            gray = Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
            info = {
                "width": int(meta.width),
                "height": int(meta.height),
                "mode": str(meta.mode),
                "format": str(meta.format),
                "phash": str(imagehash.phash(gray)),
                **({} if focused is None or focused.lungs is None else {"lungs": focused.lungs}),
            }
            out.append((sha1, row, info, None))
        except ImageReadError as e:
            out.append((sha1, None, None, e.reason))
        except Exception as e:  # a decoder bug on one file must not kill a 100k-file build
            out.append((sha1, None, None, f"{type(e).__name__}: {e}"))
    return out


class _Store:
    """The on-disk cache of one (size, resize[, pipeline key]): a compact shard index in memory
    (``ShardIndex``), rows streamed into a new shard file, sets assembled with plain reads and writes (no
    memory map, so nothing of the cache counts toward this process's resident memory)."""

    def __init__(self, root: Path, size: int, resize: str, key: str | None = None):
        self.size, self.resize = size, resize
        self.dir = root / _STORE_VERSION / (f"{size}-{resize}" if key is None else f"{size}-{resize}-{key}")
        self.shards = self.dir / "shards"
        self.sets = self.dir / "sets"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.sets.mkdir(parents=True, exist_ok=True)
        self.index = ShardIndex()
        self._writing: tuple[str, Path, object, list] | None = None  # (name, tmp, file, [(sha1, info)])
        self._clean_stale_tmp()
        found = []
        for idx in sorted(self.shards.glob("*.json")):
            try:
                meta = json.loads(idx.read_text())
                shard = idx.with_suffix(".u8")
                n = len(meta["entries"])
                if meta.get("format") != CACHE_FORMAT or shard.stat().st_size != n * size * size:
                    continue  # foreign or damaged shard: ignore it (its files get re-decoded)
                found.append((shard.name, shard_keys(meta["entries"])))
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                continue
            finally:
                meta = None  # one shard's parsed JSON at a time
        self.index.add_shards(found)

    def _clean_stale_tmp(self) -> None:
        now = time.time()
        for d in (self.shards, self.sets):
            for tmp in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if now - tmp.stat().st_mtime > _STALE_TMP_S:
                        tmp.unlink()

    def add(self, sha1: str, row: np.ndarray, info: dict) -> None:
        """Append one decoded (size, size) row to the shard being written (a new one is started as
        needed); the shard is closed (``flush``) every ``_FLUSH_BYTES`` or ``_SHARD_ROWS`` rows."""
        if self._writing is None:
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:12]}"
            tmp = self.shards / f".{name}.u8.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            self._writing = (name, tmp, open(tmp, "wb"), [])  # noqa: SIM115 (closed by flush)
        _, _, fh, entries = self._writing
        fh.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())
        entries.append((sha1, info))
        if len(entries) >= min(_SHARD_ROWS, max(1, _FLUSH_BYTES // (self.size * self.size))):
            self.flush()

    def flush(self) -> None:
        """Close the shard being written: its rows durably in place first, then its JSON index."""
        if self._writing is None:
            return
        name, tmp, fh, entries = self._writing
        self._writing = None
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.shards / f"{name}.u8")
        except BaseException:
            fh.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        meta = {"format": CACHE_FORMAT, "size": self.size, "resize": self.resize,
                "entries": [[sha1, info] for sha1, info in entries]}  # fmt: skip
        _atomic_write_bytes(self.shards / f"{name}.json", json.dumps(meta).encode())
        self.index.add_shards([(f"{name}.u8", as_keys([sha1 for sha1, _ in entries]))])

    def assemble(self, keys: np.ndarray) -> np.ndarray:
        """(N, size, size) read-only memmap of the rows of ``keys`` (S40; ``b""`` -> zeros), built once
        per list, ``_BLOCK`` rows at a time (memory flat in N)."""
        n, s = len(keys), self.size
        if n == 0:
            return np.zeros((0, s, s), np.uint8)
        h = hashlib.sha1()
        for b in range(0, n, _BLOCK):  # the same digest as sha1("\n".join(key or "-"))
            part = b"\n".join(k or b"-" for k in keys[b : b + _BLOCK].tolist())
            h.update((b"\n" if b else b"") + part)
        path = self.sets / f"{h.hexdigest()}.u8"
        if not (path.exists() and path.stat().st_size == n * s * s):
            pos = self.index.find(keys)
            shard = np.where(pos >= 0, self.index.shard[np.maximum(pos, 0)], -1)
            row = self.index.row[np.maximum(pos, 0)]
            fds: dict[int, int] = {}
            try:
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    for b in range(0, n, _BLOCK):
                        block = np.zeros((min(_BLOCK, n - b), s, s), np.uint8)
                        sb, rb = shard[b : b + _BLOCK], row[b : b + _BLOCK]
                        for sid in np.unique(sb[sb >= 0]).tolist():
                            if sid not in fds:
                                fds[sid] = os.open(self.shards / self.index.names[sid], os.O_RDONLY)
                            dst = np.flatnonzero(sb == sid)
                            order = np.argsort(rb[dst], kind="stable")
                            got = np.empty((len(dst), s, s), np.uint8)
                            pread_rows(fds[sid], rb[dst][order], got)
                            block[dst[order]] = got
                        fh.write(block.tobytes())
            finally:
                for fd in fds.values():
                    os.close(fd)
        with contextlib.suppress(OSError):  # a read-only shared cache is fine
            os.utime(path)  # mtime = last use, for anyone pruning old sets
        return np.memmap(path, np.uint8, "r", shape=(n, s, s))


def _decode_in_pool(
    chunks, size, resize, workers, progress, label, collect, preprocessor=None
) -> list[list[tuple[str, str]]]:
    """Decode ``chunks`` in a fresh process pool; returns the chunks left unfinished by a dead worker.

    A worker that dies (killed for memory, a decoder crash) breaks the whole pool: every chunk not yet
    collected comes back, to be retried in a new pool rather than reported unreadable.
    """
    lost: list[list[tuple[str, str]]] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        # submit before the progress bar starts its refresh thread: with the "fork" start
        # method the workers are forked on the first submit, and forking a process while
        # another of its threads holds a lock can deadlock the child
        futures = {pool.submit(_decode_chunk, c, size, resize, preprocessor): c for c in chunks}
        with _progress(progress) as bar:
            task = bar.add_task(label, total=sum(len(c) for c in chunks))
            for fut in as_completed(futures):
                try:
                    results = fut.result()
                except BrokenProcessPool:  # a worker was killed (out of memory?) or crashed
                    lost.append(futures.pop(fut))
                    continue
                futures.pop(fut)  # a done future holds its decoded rows: let them go
                collect(results, bar, task)
                del results
    return lost


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not enabled,
    )


def cache_images(
    paths: Iterable[str | os.PathLike],
    size: int,
    *,
    resize: str = "stretch",
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    preprocessor=None,
) -> CachedImages:
    """Decode + resize ``paths`` to (N, size, size) uint8, reusing every file already in the cache.

    Files are keyed by the sha1 of their bytes, so an edited file is decoded again and a renamed or
    copied one is not. New contents are decoded in a process pool (``workers``, default all cores)
    with a rich progress bar. A file that cannot be read is reported in ``errors`` (``ok[i]`` False,
    zero row), never raised.

    Args:
        paths: image files; the output rows follow this order.
        size: output side in pixels.
        resize: ``"stretch"`` or ``"pad"`` (see ``to_model_input``).
        cache_dir: cache root (default ``default_cache_dir()``).
        workers: decoding processes; 1 decodes in this process.
        progress: show the (transient) progress bar.
        preprocessor: a ``lungxray.focus.Preprocessor`` of this ``size`` / ``resize`` (lung-focused
            options); None or a default one = ``to_model_input``. A non-default one has its own store.

    Example:
        >>> c = cache_images(manifest.paths, 224, cache_dir=tmp)   # doctest: +SKIP
        >>> c.images.shape, c.ok.sum(), c.errors                    # doctest: +SKIP
    """
    t0 = time.perf_counter()
    check_option(resize, RESIZE_MODES, "resize mode")
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    size = int(size)
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    workers = max(1, int(workers or os.cpu_count() or 1))
    if preprocessor is not None and preprocessor.is_default:
        preprocessor = None
    if preprocessor is not None and (preprocessor.size, preprocessor.resize) != (size, resize):
        raise ValueError(f"the preprocessor is {preprocessor.size}px {preprocessor.resize}, not {size}px {resize}")
    key = None if preprocessor is None else preprocessor.cache_key
    store = _Store(Path(cache_dir) if cache_dir is not None else default_cache_dir(), size, resize, key)

    errors: dict[str, str] = {}
    # 1. content hashes (threads: hashlib and file reads release the GIL), as (N,) S40 keys
    keys = np.zeros(n, KEY)  # b"" where the file cannot be read
    with _progress(progress and n > 0) as bar, ThreadPoolExecutor(max_workers=min(8, max(1, n))) as pool:
        task = bar.add_task("Hashing files", total=n)
        for b in range(0, n, _BLOCK):  # in blocks: Executor.map makes every future up front (~1 KB each)
            for i, (sha1, reason) in enumerate(pool.map(_sha1_file, paths[b : b + _BLOCK]), start=b):
                if reason is not None:
                    errors[paths[i]] = reason
                else:
                    keys[i] = sha1
            bar.advance(task, min(_BLOCK, n - b))
    cached = store.index.find(keys) >= 0
    reused = int(cached.sum())

    # 2. decode each new content once
    todo: dict[str, str] = {}
    for i in np.flatnonzero(~cached & (keys != b"")).tolist():
        todo.setdefault(keys[i].decode(), paths[i])
    del cached
    failed: dict[str, str] = {}
    t_dec = time.perf_counter()
    if todo:
        jobs = list(todo.items())
        chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]

        def collect(results: list[tuple], bar, task) -> None:
            for sha1, row, info, reason in results:
                if row is None:
                    failed[sha1] = reason
                else:
                    store.add(sha1, row, info)  # streamed to the shard file: nothing held
            bar.advance(task, len(results))

        label = f"Decoding {len(todo)} images ({size}px, {resize})"
        try:
            if workers == 1 or len(chunks) == 1:
                with _progress(progress) as bar:
                    task = bar.add_task(label, total=len(todo))
                    for chunk in chunks:
                        collect(_decode_chunk(chunk, size, resize, preprocessor), bar, task)
            else:
                for _ in range(_POOL_ATTEMPTS - 1):
                    chunks = _decode_in_pool(chunks, size, resize, workers, progress, label, collect, preprocessor)
                    if not chunks:
                        break
                # last try: each file left in a pool of its own, so a file that kills its worker fails
                # alone (a broken pool also returns every task it had not finished, culprit or not)
                chunks = [
                    lost
                    for job in (job for c in chunks for job in c)
                    for lost in _decode_in_pool([[job]], size, resize, 1, False, label, collect, preprocessor)
                ]
                reason = "the decoding process died (out of memory or decoder crash)"
                for chunk in chunks:
                    failed.update((sha1, reason) for sha1, _ in chunk)
        finally:
            store.flush()  # keep what was decoded, even on Ctrl-C
    decode_seconds = time.perf_counter() - t_dec

    pos = store.index.find(keys)
    ok = pos >= 0
    for i in np.flatnonzero(~ok & (keys != b"")).tolist():
        errors[paths[i]] = failed.get(keys[i].decode(), "not decoded")
    keys[~ok] = b""
    images = store.assemble(keys)
    shard = np.where(ok, store.index.shard[np.maximum(pos, 0)], -1).astype(np.int32)
    info = InfoRows(store.shards, store.index.names, shard, store.index.row[np.maximum(pos, 0)], keys)
    return CachedImages(
        images=images,
        ok=ok,
        errors=errors,
        info=info,
        build_seconds=time.perf_counter() - t0,
        built=int(ok.sum()) - reused,
        reused=reused,
        decode_seconds=decode_seconds if todo else 0.0,
        decoded=len(todo),
        store=str(store.dir),
        keys=keys,
    )

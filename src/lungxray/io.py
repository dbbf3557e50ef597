"""Durable file writes: the one atomic-write helper (temp file + fsync + rename + directory fsync).

Readers never see half a file, and a crash or power loss after the call returns cannot lose the
new content: the data is flushed before the rename, the directory entry after it. Temporary names
are unique (``mkstemp``), so two writers of the same path never share a temp file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lungxray.errors import RunError


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (a no-op where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; on success fsync it and move it onto ``path``.

    For writers that want a file name (``safetensors.save_file``, ``torch.save``, ONNX export).
    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; reports and runs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and durably; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive ``fcntl.flock`` on ``run_dir/.lock`` for the duration of the block.

    Two processes writing one run directory (two ``lungxray train --out RUN``) would interleave
    checkpoints and history: the second one gets a RunError instead. The lock goes with the process
    (a killed trainer never leaves a stale lock); the empty ``.lock`` file stays behind harmlessly.
    """
    import fcntl  # POSIX only, like the rest of the run directory's durability

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"another lungxray process is writing {run_dir}; wait for it or choose another --out."
            ) from None
        yield run_dir
    finally:
        os.close(fd)  # closing the descriptor releases the lock


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell safe to open in a spreadsheet: a string starting with ``= + - @`` (or a tab / CR)
    gets a leading ``'`` so it is not run as a formula. Numbers, and strings that are numbers
    (``-0.5``), are returned unchanged."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value

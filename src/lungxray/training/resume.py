"""What ``--resume`` trains on: the run's own splits.csv, checked against the files' content.

At the first start a run records ``data.sha1.json``: task, classes, and per row of splits.csv the sha1
of the file's bytes. ``--resume`` rebuilds the manifest from splits.csv (never re-splitting the
current data folder, where new or renamed files could move test patients into training) and refuses
with a RunError when splits.csv was edited, a listed file is missing, unreadable or its content changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from lungxray.data.manifest import Manifest
from lungxray.errors import RunError
from lungxray.io import atomic_write_text

RECORD = "data.sha1.json"
SPLITS = "splits.csv"
_FORMAT = 1


def _digest(m: Manifest, sha1s: Sequence[str]) -> str:
    """One sha1 over every row: path, patient, split, label and the file's content hash."""
    h = hashlib.sha1()
    for row in zip(m.paths, m.patients, m.splits, m.label_strings(), sha1s, strict=True):
        h.update(("\t".join(row) + "\n").encode("utf-8"))
    return h.hexdigest()


def record_data(run_dir: Path, m: Manifest, sha1s: Sequence[str]) -> Path:
    """Write ``run_dir/data.sha1.json`` for the manifest a new run trains on (atomically)."""
    record = {
        "format": _FORMAT,
        "task": m.task,
        "classes": list(m.classes),
        "root": m.root,
        "sha1": _digest(m, sha1s),
        "files": [[p, s] for p, s in zip(m.paths, sha1s, strict=True)],
    }
    return atomic_write_text(Path(run_dir) / RECORD, json.dumps(record, indent=0) + "\n")


def _examples(items: Sequence[str], n: int = 5) -> str:
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def resume_manifest(run_dir: Path) -> Manifest:
    """The manifest of an interrupted run, from its splits.csv; RunError if it cannot be trusted.

    Checks what is cheap before decoding anything: the record exists, splits.csv matches it, and
    every listed file exists. Content is checked by ``check_resumed`` once the files are hashed.
    """
    run_dir = Path(run_dir)
    record_path, splits = run_dir / RECORD, run_dir / SPLITS
    if not splits.is_file() or not record_path.is_file():
        missing = SPLITS if not splits.is_file() else RECORD
        raise RunError(
            f"cannot resume {run_dir}: it has no {missing}, so the run's splits cannot be verified "
            "(a run started by an older lungxray); start a new run."
        )
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files = dict(record["files"])
        m = Manifest.from_splits_csv(splits, classes=record["classes"], task=record["task"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RunError(f"cannot resume {run_dir}: {RECORD} or {SPLITS} is damaged ({exc}).") from None
    m = Manifest(m.paths, m.labels, m.classes, m.task, m.patients, m.splits, root=record.get("root", ""),
                 sources=m.sources)
    if set(m.paths) != set(files) or _digest(m, [files[p] for p in m.paths]) != record["sha1"]:
        raise RunError(f"cannot resume {run_dir}: {SPLITS} was changed after the run started.")
    gone = [p for p in m.paths if not Path(p).is_file()]
    if gone:
        raise RunError(
            f"cannot resume {run_dir}: {len(gone)} file(s) listed in {SPLITS} are missing: "
            f"{_examples(gone)}. Restore them, or start a new run."
        )
    return m


def check_resumed(run_dir: Path, m: Manifest, sha1s: Sequence[str]) -> None:
    """RunError unless every file of the run's splits.csv was read with its recorded content."""
    record = json.loads((Path(run_dir) / RECORD).read_text(encoding="utf-8"))
    files = dict(record["files"])
    now = dict(zip(m.paths, sha1s, strict=True))
    changed = [p for p, s in files.items() if now.get(p) != s]
    if changed:
        raise RunError(
            f"cannot resume {run_dir}: {len(changed)} file(s) listed in {SPLITS} changed or became "
            f"unreadable since the run started: {_examples(changed)}. Restore them, or start a new run."
        )

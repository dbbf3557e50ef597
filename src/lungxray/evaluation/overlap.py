"""What an evaluated set shares with the run's own data: its train/val or test films under other names.

``evaluate --data OTHER`` counts them (metrics.json ``overlap_with_training``, ``overlap_with_test``,
``overlap_examples``; a console warning and a report banner), by path and by content (``data.copies``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lungxray.data.cache import CachedImages, cache_images
from lungxray.data.copies import copies
from lungxray.data.manifest import Manifest

SHOWN = 10  # example pairs kept in metrics.json
MAX_PAIRS = 6e8  # evaluated x run film pairs compared by content (<= ~3 min at 3.4M pairs/s, 2 cores); beyond: paths


def overlap_with_run(run_dir: Path, evaluated_paths: Sequence[str], evaluated: CachedImages, *, size: int,
                     resize: str, cache_dir: str | Path | None, preprocessor=None) -> dict[str, Any]:  # fmt: skip
    """How many evaluated images are the run's own films (same path or a copy of one).

    ``evaluated``: the files ``evaluated_paths`` as cached for the evaluation (the run's size and
    preprocessing). The run's files are cached the same way (a cache hit for a run trained here; files
    that moved or vanished are skipped).

    Returns:
        ``{"training": n, "test": n, "examples": [[evaluated, run file, run split, kind], ...], "by": ...}``:
        ``training`` counts evaluated images found among the run's train/val files (its figures are
        then optimistic), ``test`` those found only among its test files (the set is not independent
        of the run's test split). ``kind``: "path", "exact" (same bytes) or "near". ``by``: "content",
        or "path" when the two sets hold more than ``MAX_PAIRS`` pairs of films (then only same paths count).
    """
    record = Path(run_dir) / "splits.csv"
    if not record.is_file():
        return {"training": 0, "test": 0, "examples": [], "by": "content"}
    m = Manifest.from_splits_csv(record)
    paths, splits = m.paths, m.splits
    seen = {str(Path(p).resolve()): k for k, p in enumerate(paths)}
    found: dict[int, tuple[int, str]] = {}
    for i, p in enumerate(evaluated_paths):
        k = seen.get(str(Path(p).resolve())) if evaluated.ok[i] else None
        if k is not None:
            found[i] = (k, "path")
    by = "content" if len(paths) * len(evaluated_paths) <= MAX_PAIRS else "path"
    if by == "content":
        ours = cache_images(paths, size, resize=resize, cache_dir=cache_dir, progress=False,
                            preprocessor=preprocessor)  # fmt: skip
        for i, j, kind in copies(evaluated, ours):
            # a train/val copy outranks a test copy: it is what makes the figures optimistic
            if i not in found or (splits[found[i][0]] == "test" and splits[j] != "test"):
                found[i] = (j, kind)
    training = sorted(i for i, (j, _) in found.items() if splits[j] in ("train", "val"))
    test = sorted(i for i, (j, _) in found.items() if splits[j] == "test")
    examples = [[evaluated_paths[i], paths[found[i][0]], splits[found[i][0]], found[i][1]]
                for i in (training + test)[:SHOWN]]  # fmt: skip
    return {"training": len(training), "test": len(test), "examples": examples, "by": by}

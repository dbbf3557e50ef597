"""Data-set checks before training: class balance, unreadable files, duplicates and patient leakage.

``audit`` returns a JSON-ready dict; ``render_audit`` prints it as rich tables. Image facts (size,
mode, sha1, perceptual hash) come from the cache, so auditing a cached data set decodes nothing.
Duplicates: "exact" = same file bytes (sha1); "near" = the same radiograph re-encoded, brightened or
resized: perceptual hashes (``imagehash.phash``, 64 bit) within ``near_threshold`` bits AND cached
thumbnails correlated >= ``min_correlation``. The second test is needed because chest X-rays look alike
to phash: on the Kermany set, 195 pairs of different patients are within 4 bits (thumbnail r <= 0.954),
while brightness +2, a 0.9x resize, JPEG q60 or contrast x1.1 give r >= 0.999. A duplicate across
splits inflates test scores (leakage), so it is reported on its own and in red. Across and within splits, copies
re-saved with another contrast curve (phash 6-12 bits apart, r 0.95-0.99; the covid19 set's Kermany films)
are found as well, by the rank test of ``data.copies``.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from lungxray.data.cache import cache_images
from lungxray.data.copies import copies_across_splits, copies_within_splits
from lungxray.data.manifest import SPLITS, Manifest
from lungxray.data.splits import patients_across_splits

if TYPE_CHECKING:
    from rich.console import Console

NEAR_THRESHOLD = 4  # phash bits; 0-4 of 64 is the usual "same picture" range for imagehash
MIN_CORRELATION = 0.98  # Pearson r of the cached thumbnails confirming a phash match (see module doc)
_SHOW = 20  # rows shown per list by render_audit
_SPLIT_ORDER = {s: i for i, s in enumerate(SPLITS)}


def _split_name(split: str) -> str:
    return split or "unassigned"


def near_duplicate_pairs(hashes: np.ndarray, threshold: int = NEAR_THRESHOLD, block: int = 512) -> np.ndarray:
    """All index pairs (i < j) whose 64-bit hashes differ in at most ``threshold`` bits.

    Args:
        hashes: (N,) uint64.
    Returns:
        (P, 3) int64 array of (i, j, distance), sorted by i then j.

    Vectorised O(N^2) in row blocks (XOR + popcount): about 0.1 s for 6,000 hashes, bounded memory.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    out = []
    for start in range(0, n - 1, block):
        rows = h[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ h[None, start + 1 :])  # (b, n - start - 1)
        i, jj = np.nonzero(dist <= threshold)
        j = jj + start + 1
        keep = j > i + start
        i, j = i[keep] + start, j[keep]
        out.append(np.stack([i, j, dist[i - start, j - start - 1]], axis=1).astype(np.int64))
    return np.concatenate(out) if out else np.zeros((0, 3), np.int64)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two images (1.0 for two identical constant images, 0.0 for other constant ones)."""
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    if den == 0.0:
        return 1.0 if (a @ a) == (b @ b) == 0.0 else 0.0
    return float(a @ b) / den


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": None, "median": None, "max": None}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())}


def audit(
    manifest: Manifest,
    *,
    cache_dir: str | os.PathLike | None = None,
    size: int = 64,
    near_threshold: int = NEAR_THRESHOLD,
    min_correlation: float = MIN_CORRELATION,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Check a data set: counts, image sizes/modes, unreadable files, duplicates, patient leakage.

    Decodes (or reuses from the cache) every image at ``size`` px, which also yields each file's
    sha1 and perceptual hash. Near duplicates: phash within ``near_threshold`` bits and thumbnail
    correlation >= ``min_correlation``.

    Returns:
        A JSON-serialisable dict with keys ``root``, ``n_images``, ``counts`` ({split: {class: n}}),
        ``class_balance`` ({split or "all": {class: fraction}}), ``sizes`` ({"width"/"height":
        {min, median, max}}), ``modes``, ``formats`` ({name: n}), ``unreadable`` ([{path, reason}]),
        ``dropped`` (rows the manifest left out, [{path, reason}]), ``duplicates_within_splits`` and
        ``duplicates_across_splits`` ([[path_a, path_b, kind]], kind "exact" or "near"),
        ``patients_across_splits`` ({patient: [splits]}), ``near_threshold``, ``min_correlation`` and ``cache``
        ({images_per_s, built, reused, seconds}).

    >>> report = audit(from_folders("data/chest_xray"))       # doctest: +SKIP
    >>> len(report["duplicates_across_splits"])               # doctest: +SKIP
    """
    cached = cache_images(manifest.paths, size, cache_dir=cache_dir, workers=workers, progress=progress)
    splits = [s for s in (*SPLITS, "") if s in set(manifest.splits)]

    counts = {_split_name(s): manifest.class_counts(s) for s in splits}
    balance: dict[str, dict[str, float]] = {}
    for name, split in [("all", None), *((_split_name(s), s) for s in splits)]:
        n = len(manifest) if split is None else manifest.splits.count(split)
        cc = manifest.class_counts(split)
        balance[name] = {c: (round(v / n, 4) if n else 0.0) for c, v in cc.items()}

    infos = [(i, inf) for i, inf in enumerate(cached.info) if inf is not None]
    modes = Counter(inf["mode"] for _, inf in infos)
    formats = Counter(inf["format"] for _, inf in infos)

    # duplicates: one pass over perceptual hashes; pairs with equal sha1 are "exact"
    index = np.array([i for i, _ in infos], dtype=np.int64)
    phash = np.array([int(inf["phash"], 16) for _, inf in infos], dtype=np.uint64)
    within: list[list[str]] = []
    across: list[list[str]] = []
    for a, b, _ in near_duplicate_pairs(phash, near_threshold):
        ia, ib = int(index[a]), int(index[b])
        sa, sb = manifest.splits[ia], manifest.splits[ib]
        if _SPLIT_ORDER.get(sb, 9) < _SPLIT_ORDER.get(sa, 9):  # earlier split (train) first
            ia, ib, sa, sb = ib, ia, sb, sa
        if cached.info[ia]["sha1"] == cached.info[ib]["sha1"]:
            kind = "exact"
        elif _correlation(cached.images[ia], cached.images[ib]) >= min_correlation:
            kind = "near"
        else:
            continue  # alike to phash only: a different radiograph
        pair = [manifest.paths[ia], manifest.paths[ib], kind]
        (within if sa == sb else across).append(pair)
    # copies that a new contrast curve hides from phash and Pearson r (data.copies), across and within splits
    sha1s = cached.sha1s()
    readable = [i for i, _ in infos]
    for pairs, found in ((across, copies_across_splits(manifest.splits, cached.images, rows=readable)),
                         (within, copies_within_splits(manifest.splits, cached.images, rows=readable))):  # fmt: skip
        known = {frozenset(p[:2]) for p in pairs}
        for j, i in found:
            if frozenset((manifest.paths[j], manifest.paths[i])) not in known:
                pairs.append([manifest.paths[j], manifest.paths[i], "exact" if sha1s[i] == sha1s[j] else "near"])
    for pairs in (within, across):
        pairs.sort(key=lambda p: (p[2] != "exact", p[0], p[1]))

    return {
        "root": manifest.root,
        "n_images": len(manifest),
        "classes": list(manifest.classes),
        "task": manifest.task,
        "counts": counts,
        "class_balance": balance,
        "sizes": {
            "width": _summary([inf["width"] for _, inf in infos]),
            "height": _summary([inf["height"] for _, inf in infos]),
        },
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "unreadable": [{"path": p, "reason": r} for p, r in sorted(cached.errors.items())],
        "dropped": [{"path": p, "reason": r} for p, r in getattr(manifest, "dropped", ())],
        "duplicates_within_splits": within,
        "duplicates_across_splits": across,
        "patients_across_splits": patients_across_splits(manifest),
        "near_threshold": int(near_threshold),
        "min_correlation": float(min_correlation),
        "cache": {
            "images_per_s": round(cached.images_per_s, 1),
            "built": cached.built,
            "reused": cached.reused,
            "seconds": round(cached.build_seconds, 3),
        },
    }


def _short(path: str, root: str) -> str:
    """Path relative to the data root when inside it, for readable tables."""
    try:
        rel = os.path.relpath(path, root) if root and os.path.isdir(root) else path
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def render_audit(report: dict[str, Any], console: Console | None = None) -> None:
    """Print an ``audit`` report as rich tables; duplicates and patients across splits in red."""
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    console = console or Console()
    root = report.get("root", "")
    classes = report.get("classes") or sorted({c for v in report["counts"].values() for c in v})
    split_names = list(report["counts"])

    t = Table(title=f"{report['n_images']} images in {escape(str(root or 'data set'))}")
    t.add_column("class")
    for s in split_names:
        t.add_column(s, justify="right")
    t.add_column("all", justify="right")
    t.add_column("share", justify="right")
    for c in classes:
        per = [report["counts"][s].get(c, 0) for s in split_names]
        share = report["class_balance"]["all"].get(c, 0.0)
        t.add_row(escape(c), *map(str, per), str(sum(per)), f"{share:.1%}")
    console.print(t)

    w, h = report["sizes"]["width"], report["sizes"]["height"]
    t = Table(title="Image sizes (pixels) and formats")
    for col in ("", "min", "median", "max"):
        t.add_column(col, justify="right")
    for name, d in (("width", w), ("height", h)):
        t.add_row(name, *(str(d[k]) if d[k] is not None else "-" for k in ("min", "median", "max")))
    console.print(t)
    console.print(
        "modes: "
        + ", ".join(f"{escape(str(k))} {v}" for k, v in report["modes"].items())
        + " | formats: "
        + ", ".join(f"{escape(str(k))} {v}" for k, v in report["formats"].items())
    )

    def pair_table(pairs: list, title: str, style: str) -> Table:
        t = Table(title=title, title_style=style)
        t.add_column("file A")
        t.add_column("file B")
        t.add_column("kind")
        for a, b, kind in pairs[:_SHOW]:
            t.add_row(escape(_short(a, root)), escape(_short(b, root)), kind)
        if len(pairs) > _SHOW:
            t.add_row(f"... and {len(pairs) - _SHOW} more", "", "")
        return t

    across = report["duplicates_across_splits"]
    if across:
        n_exact = sum(1 for p in across if p[2] == "exact")
        console.print(
            Panel(
                pair_table(across, "pairs (earlier split first)", "bold"),
                title=f"[bold]LEAKAGE: {len(across)} duplicate pairs across splits "
                f"({n_exact} exact, {len(across) - n_exact} near)[/]",
                subtitle="test scores are inflated: remove or move one image of each pair",
                border_style="bold red",
            )
        )
    else:
        console.print("[green]No duplicate images across splits.[/]")

    patients = report["patients_across_splits"]
    if patients:
        t = Table(title_style="bold")
        t.add_column("patient")
        t.add_column("splits")
        for p, s in list(patients.items())[:_SHOW]:
            t.add_row(escape(p), escape(", ".join(s)))
        if len(patients) > _SHOW:
            t.add_row(f"... and {len(patients) - _SHOW} more", "")
        console.print(
            Panel(
                t,
                title=f"[bold]LEAKAGE: {len(patients)} patients in more than one split[/]",
                subtitle="split by patient (assign_splits) to avoid optimistic scores",
                border_style="bold red",
            )
        )
    else:
        console.print("[green]No patient in more than one split.[/]")

    within = report["duplicates_within_splits"]
    if within:
        console.print(pair_table(within, f"{len(within)} duplicate pairs within a split", "yellow"))

    bad = report["unreadable"] + report.get("dropped", [])
    if bad:
        t = Table(
            title=f"{len(bad)} unreadable or missing files (left out of training)", title_style="yellow"
        )
        t.add_column("file")
        t.add_column("reason")
        for row in bad[:_SHOW]:
            t.add_row(escape(_short(row["path"], root)), escape(row["reason"]))
        if len(bad) > _SHOW:
            t.add_row(f"... and {len(bad) - _SHOW} more", "")
        console.print(t)
    else:
        console.print("[green]All images readable.[/]")

    c = report["cache"]
    console.print(
        f"[dim]cache: decoded {c['built']} ({c['images_per_s']:.0f} images/s), reused {c['reused']}, "
        f"{c['seconds']:.1f} s; near-duplicate threshold {report['near_threshold']} bits[/]"
    )

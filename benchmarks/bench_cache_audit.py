"""Time a cold cache build, a warm cache load and a warm audit of a folder data set.

    python benchmarks/bench_cache_audit.py [--data /work/shared/data/chest_xray] [--size 224] [--workers N]

The cache goes to a fresh temporary folder (deleted at the end), so the build is always cold.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lungxray.data.audit import audit
from lungxray.data.cache import cache_images
from lungxray.data.readers import from_folders

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chest_xray"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    args = ap.parse_args()

    m = from_folders(args.data)
    print(f"{len(m)} images in {args.data.resolve()}; size {args.size}; cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="lungxray-bench-") as tmp:
        cold = cache_images(m.paths, args.size, cache_dir=tmp, workers=args.workers, progress=False)
        print(
            f"cold build : {cold.build_seconds:7.2f} s total, decoding {cold.decoded} files at "
            f"{cold.images_per_s:6.1f} images/s ({len(m) / cold.build_seconds:6.1f} images/s overall), "
            f"{len(cold.errors)} errors"
        )
        t = time.perf_counter()
        warm = cache_images(m.paths, args.size, cache_dir=tmp, progress=False)
        print(f"warm load  : {time.perf_counter() - t:7.2f} s (built {warm.built}, reused {warm.reused})")
        t = time.perf_counter()
        report = audit(m, cache_dir=tmp, size=args.size, progress=False)
        seconds = time.perf_counter() - t
        print(
            f"warm audit : {seconds:7.2f} s ({len(m) / seconds:,.0f} images/s); "
            f"{len(report['duplicates_across_splits'])} duplicate pairs across splits, "
            f"{len(report['duplicates_within_splits'])} within, {len(report['unreadable'])} unreadable, "
            f"{len(report['patients_across_splits'])} patients across splits"
        )


if __name__ == "__main__":
    main()

"""Pack a data folder small enough to travel to the GPU machine (64 MiB per call): resized JPEGs.

    python benchmarks/pack_for_device.py ../shared/data/chest_xray device-pack/chest_xray_224 --size 224

The GPU machine cannot read ../shared/data, and the full Kermany set (1.2 GB) is far over what a call
carries. Every image is resized once with the training preprocessing (``to_model_input``: same
resize mode) and written as an 8-bit gray JPEG at the same relative path, so folder layout, labels,
file names and therefore patient ids are unchanged; CSV files are copied. .jpg/.jpeg files are written
as JPEG, .png as (lossless) PNG; other formats (DICOM, ...) are skipped and counted. Training on the pack at the
same size then sees the same pixels up to JPEG rounding (``--quality``; 92 keeps the mean absolute
error well under one gray level: 0.19 on chest_xray at 224 px, printed at the end). The pack is for throughput runs, not for figures that
are compared with runs on the original files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from lungxray.data.imageio import is_image_path, read_image
from lungxray.data.preprocess import to_model_input

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def pack_one(job: tuple[str, str, int, str, int]) -> tuple[int, float]:
    """Resize one image and write it at ``dst``; (bytes written, mean absolute error in gray levels)."""
    src, dst, size, resize, quality = job
    row = to_model_input(read_image(src), size, resize)
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(out, format=FORMATS[out.suffix.lower()], quality=quality)
    back = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    return out.stat().st_size, float(np.abs(back - row).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--resize", default="stretch", help="stretch | pad (as data.resize).")
    ap.add_argument("--quality", type=int, default=92)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if not args.src.is_dir():
        raise SystemExit(f"{args.src}: not a folder")
    jobs, copied, skipped = [], 0, 0
    for path in sorted(args.src.rglob("*")):
        rel = path.relative_to(args.src)
        if path.is_file() and is_image_path(path) and path.suffix.lower() not in FORMATS:
            skipped += 1
        elif path.is_file() and is_image_path(path):
            jobs.append((str(path), str(args.dst / rel), args.size, args.resize, args.quality))
        elif path.is_file() and path.suffix.lower() == ".csv":
            (args.dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, args.dst / rel)
            copied += 1
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(pack_one, jobs, chunksize=64))
    total = sum(b for b, _ in results)
    mae = float(np.mean([e for _, e in results])) if results else 0.0
    print(
        f"{len(results)} images ({copied} csv, {skipped} skipped) -> {args.dst}: {total / 2**20:.1f} MiB, "
        f"JPEG round-trip error {mae:.2f} gray levels, {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()

"""CPU prediction latency and throughput, Grad-CAM latency, and the OOD AUROC of a trained run.

    python benchmarks/bench_predict.py [--run runs/tiny] [--threads 1] [--calls 100] [--onnx]

Timed models: cnn-small at 128 px and resnet18 at 224 px, with random weights (speed does not depend on
the weights), written as run directories in a temporary folder. Latency is one real X-ray file per
call (decode + resize + forward + OOD), p50/p95 over ``--calls`` calls after warm-up; throughput is
``predict_paths`` over 256 files at batch 64. The OOD AUROC (test-split X-rays vs ~50 generated non-CXR
images, see tests/test_predict.py) needs a trained run: ``--run``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungxray.data.imageio import read_image
from lungxray.explain import heatmap
from lungxray.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "chest_xray"
sys.path.insert(0, str(REPO / "tests"))  # reuse the run builder and OOD probes of the tests

from conftest import make_random_run  # noqa: E402
from test_predict import ood_auroc  # noqa: E402


def percentiles(fn, calls: int, warmup: int = 5) -> tuple[float, float]:
    """p50 and p95 wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    return float(p50), float(p95)


def bench_run(name: str, predictor: Predictor, files: list[Path], calls: int) -> dict:
    p50, p95 = percentiles(lambda: predictor.predict_paths([files[0]], batch_size=1), calls)
    batch = files[:256]
    predictor.predict_paths(batch[:64], batch_size=64)  # warm-up
    t = time.perf_counter()
    results = predictor.predict_paths(batch, batch_size=64)
    throughput = len(results) / (time.perf_counter() - t)
    row = {"model": name, "p50": p50, "p95": p95, "throughput": throughput, "cam": None}
    if predictor.backend == "torch":
        image = read_image(files[0])
        row["cam"] = percentiles(lambda: heatmap(predictor, image), max(10, calls // 5), warmup=2)[0]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a trained run for the OOD AUROC")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--onnx", action="store_true", help="also time the ONNX Runtime backend")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    files = sorted((args.data / "test").rglob("*.jpeg"))
    if len(files) < 64:
        sys.exit(f"need the chest_xray test images under {args.data}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lungxray-bench-") as tmp:
        for arch, size in (("cnn-small", 128), ("resnet18", 224)):
            run = make_random_run(Path(tmp) / arch, arch=arch, size=size)
            rows.append(bench_run(f"{arch} {size} px (torch)", Predictor.load(run), files, args.calls))
            if args.onnx:
                from lungxray.export import export_onnx

                export_onnx(run)
                onnx = Predictor.load(run, backend="onnx")
                rows.append(bench_run(f"{arch} {size} px (onnxruntime)", onnx, files, args.calls))
            print(f"done: {arch}", file=sys.stderr)

    cpu = os.cpu_count()
    print(f"\nCPU: {cpu} cores visible, torch threads {args.threads}, torch {torch.__version__}.")
    print("Latency: one file per call (decode + resize + forward + OOD). Throughput: batch 64, 256 files.\n")
    print("| model | latency p50 (ms) | latency p95 (ms) | throughput (images/s) | Grad-CAM p50 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        cam = "-" if r["cam"] is None else f"{r['cam']:.1f}"
        print(f"| {r['model']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['throughput']:.0f} | {cam} |")
    if args.run is not None:
        trained = Predictor.load(args.run)
        auroc, xray, other = ood_auroc(trained, args.run)
        flagged = np.mean([v > trained.ood_threshold for v in other.values()])
        print(
            f"\nOOD AUROC of {args.run}: {auroc:.3f} ({len(xray)} test X-rays vs {len(other)} non-CXR images: "
            f"photos, crops, rotations, noise, gradients, checkerboards); {flagged:.0%} of the non-CXR images "
            f"exceed the run's OOD threshold."
        )


if __name__ == "__main__":
    main()

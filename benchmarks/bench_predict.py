"""CPU prediction latency and throughput, Grad-CAM latency, and the OOD AUROC of a trained run.

    python benchmarks/bench_predict.py [--run runs/tiny] [--threads 1] [--calls 100] [--onnx]
                                       [--heatmaps 30] [--no-latency]

Timed models: cnn-small at 128 px and resnet18 at 224 px, with random weights (speed does not depend on
the weights), written as run directories in a temporary folder. Latency is one real X-ray file per
call (decode + resize + forward + OOD), p50/p95 over ``--calls`` calls after warm-up; throughput is
``predict_paths`` over 256 files at batch 64. The OOD AUROC (test-split X-rays vs ~50 generated non-CXR
images, see tests/test_predict.py) needs a trained run: ``--run``. ``--heatmaps N`` times
``lungxray predict RUN <N files> --heatmaps DIR --out CSV`` in-process (the whole verb: decode,
forward, Grad-CAM, overlay figures, CSV), wall and CPU time per file, best of ``--repeats``. Prints markdown tables.
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

from lungxray.bench import bench_inference
from lungxray.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "chest_xray"
sys.path.insert(0, str(REPO / "tests"))  # reuse the run builder and OOD probes of the tests

from conftest import make_random_run  # noqa: E402
from test_predict import ood_auroc  # noqa: E402


def bench_run(name: str, predictor: Predictor, files: list[Path], calls: int) -> dict:
    r = bench_inference(predictor, files, calls=calls)  # lungxray.bench: shared with ``lungxray bench``
    return {"model": name, "p50": r["p50_ms"], "p95": r["p95_ms"], "throughput": r["throughput"],
            "cam": r["cam_p50_ms"]}  # fmt: skip


def bench_cli_heatmaps(
    run: Path, files: list[Path], tmp: Path, repeats: int = 3, render: bool = True
) -> tuple[float, float]:
    """Milliseconds per file of ``lungxray predict RUN files --heatmaps DIR --out CSV``: wall time and
    process CPU time (less sensitive to other load on a shared machine), each the best of ``repeats``.

    ``render=False`` replaces ``save_figure`` by a no-op, which times the prediction pass and Grad-CAM
    without matplotlib's rendering and PNG encoding (most of the time on a CPU).
    """
    import contextlib
    import io

    import lungxray.evaluation.plots as plots
    from lungxray.cli import main as cli

    if not render:
        plots.save_figure = lambda fig, path, dpi=120: Path(path)

    def once(tag: str, inputs: list[Path]) -> tuple[float, float]:
        argv = [
            "predict",
            str(run),
            *map(str, inputs),
            "--heatmaps",
            str(tmp / tag),
            "--out",
            str(tmp / f"{tag}.csv"),
        ]
        t, c = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli(argv)
        return time.perf_counter() - t, time.process_time() - c

    once("warm", files[:2])
    times = [once(f"maps{i}", files) for i in range(repeats)]
    return 1000 * min(w for w, _ in times) / len(files), 1000 * min(c for _, c in times) / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a trained run for the OOD AUROC")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--onnx", action="store_true", help="also time the ONNX Runtime backend")
    ap.add_argument("--heatmaps", type=int, default=0, help="time `predict --heatmaps` over this many files")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency / throughput table")
    ap.add_argument("--no-render", action="store_true", help="--heatmaps without rendering the figures")
    ap.add_argument("--repeats", type=int, default=3, help="--heatmaps: best of this many runs")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    files = sorted((args.data / "test").rglob("*.jpeg"))
    if len(files) < 64:
        sys.exit(f"need the chest_xray test images under {args.data}")
    rows, cam_rows = [], []
    with tempfile.TemporaryDirectory(prefix="lungxray-bench-") as tmp:
        for arch, size in (("cnn-small", 128), ("resnet18", 224)):
            run = make_random_run(Path(tmp) / arch, arch=arch, size=size)
            if args.heatmaps:
                wall, cpu_ms = bench_cli_heatmaps(
                    run, files[: args.heatmaps], Path(tmp) / f"{arch}-maps", args.repeats, not args.no_render
                )
                cam_rows.append((f"{arch} {size} px", min(args.heatmaps, len(files)), wall, cpu_ms))
            if args.no_latency:
                continue
            rows.append(bench_run(f"{arch} {size} px (torch)", Predictor.load(run), files, args.calls))
            if args.onnx:
                from lungxray.export import export_onnx

                export_onnx(run)
                onnx = Predictor.load(run, backend="onnx")
                rows.append(bench_run(f"{arch} {size} px (onnxruntime)", onnx, files, args.calls))
            print(f"done: {arch}", file=sys.stderr)

    cpu = os.cpu_count()
    print(f"\nCPU: {cpu} cores visible, torch threads {args.threads}, torch {torch.__version__}.")
    if rows:
        print(
            "Latency: one file per call (decode + resize + forward + OOD). Throughput: batch 64, 256 files.\n"
        )
        print("| model | latency p50 (ms) | latency p95 (ms) | throughput (images/s) | Grad-CAM p50 (ms) |")
        print("|---|---:|---:|---:|---:|")
    for r in rows:
        cam = "-" if r["cam"] is None else f"{r['cam']:.1f}"
        print(f"| {r['model']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['throughput']:.0f} | {cam} |")
    if cam_rows:
        how = ", figures not rendered" if args.no_render else ""
        print(
            f"\n`lungxray predict RUN FILES --heatmaps DIR --out CSV`, in-process, best of {args.repeats}{how}:\n"
        )
        print("| model | files | wall ms per file | CPU ms per file |")
        print("|---|---:|---:|---:|")
        for name, n, wall, cpu_ms in cam_rows:
            print(f"| {name} | {n} | {wall:.1f} | {cpu_ms:.1f} |")
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

"""``lungxray bench``: the benchmark scripts' measurements in one call, one table, one machine.

``run_bench(data)`` measures, side by side in one process: the cache build rate (cold, a fresh
temporary cache), training images/s of a recipe with its fast paths (bf16 autocast, channels-last) on
and off, prediction latency p50/p95 at batch 1 and throughput at batch 64 for PyTorch and ONNX Runtime,
Grad-CAM latency and, if FastAPI is installed, the web API's requests/s (in-process, one client).
``render_bench`` prints it as a table with the machine described; ``quick=True`` is a 1-2 minute CPU
run (small subsets, short timings). The scripts in ``benchmarks/`` call these functions.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_VARIANTS = {
    "recipe": {},
    "fp32": {"train.amp": False},
    "nchw": {"train.channels_last": False},
    "fp32-nchw": {"train.amp": False, "train.channels_last": False},
    "cpu-channels-last": {"train.cpu_fast_paths": True, "train.amp": False},  # no-ops on CUDA
    "cpu-fast": {"train.cpu_fast_paths": True},
}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: str = "auto") -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, torch, threads, accelerator."""
    import torch

    from lungxray.inference import resolve_device

    dev = resolve_device(device)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


def percentiles(fn: Callable[[], Any], calls: int, warmup: int = 5) -> tuple[float, float]:
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


def bench_cache(paths: list[str], size: int, *, workers: int | None = None) -> dict[str, Any]:
    """A cold cache build (fresh temporary cache) of ``paths`` at ``size`` px, then a warm load."""
    from lungxray.data.cache import cache_images

    with tempfile.TemporaryDirectory(prefix="lungxray-bench-") as tmp:
        cold = cache_images(paths, size, cache_dir=tmp, workers=workers, progress=False)
        t = time.perf_counter()
        cache_images(paths, size, cache_dir=tmp, progress=False)
        warm = time.perf_counter() - t
    return {
        "files": len(paths),
        "size": size,
        "build_seconds": cold.build_seconds,
        "decode_images_per_s": cold.images_per_s,
        "images_per_s": len(paths) / cold.build_seconds if cold.build_seconds else 0.0,
        "warm_load_seconds": warm,
        "errors": len(cold.errors),
    }


def bench_train_variant(data: str, config: str | None, overrides: dict, out: Path) -> dict[str, Any]:
    """Train once into ``out``; throughput (median images/s of the epochs after the first) and timing."""
    import torch

    from lungxray.config import load_config
    from lungxray.inference import resolve_device, train_fast_paths
    from lungxray.training import prepare_data, train

    cfg = load_config(config, {**overrides, "data.path": data, "out": str(out), "name": out.name})
    device = resolve_device(cfg.train.device)
    bf16, channels_last = train_fast_paths(cfg.train, device)
    prepare_data(cfg, progress=False)  # decode once, so every variant times training alone
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    rates = [row["images_per_s"] for row in result.history]
    steady = rates[1:] or rates
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "model": cfg.model.name,
        "size": cfg.data.size,
        "batch_size": cfg.train.batch_size,
        "bf16": bf16,
        "channels_last": channels_last,
        "epochs": result.epochs_run,
        "train_images": round(rates[0] * result.history[0]["seconds"]),
        "images_per_s": statistics.median(steady),
        "first_epoch_images_per_s": rates[0],
        "train_seconds": result.seconds,
        "wall_seconds": wall,
        "best_val_auc": result.best_score,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "run_dir": str(out),
    }


def bench_inference(predictor: Any, files: list[Path], *, calls: int = 100, n_batch: int = 256,
                    cam_calls: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Latency p50/p95 of one file per call (decode + resize + forward + OOD), throughput of
    ``predict_paths`` over ``n_batch`` files at batch 64, and (torch backend) Grad-CAM p50."""
    from lungxray.data.imageio import read_image
    from lungxray.explain import heatmap

    p50, p95 = percentiles(lambda: predictor.predict_paths([files[0]], batch_size=1), calls)
    batch = files[:n_batch]
    predictor.predict_paths(batch[:64], batch_size=64)  # warm-up
    t = time.perf_counter()
    results = predictor.predict_paths(batch, batch_size=64)
    throughput = len(results) / (time.perf_counter() - t)
    backend = getattr(predictor.backend, "name", str(predictor.backend))
    row = {"backend": backend, "p50_ms": p50, "p95_ms": p95, "throughput": throughput, "cam_p50_ms": None}
    if backend == "torch":
        image = read_image(files[0])
        n = cam_calls or max(10, calls // 5)
        row["cam_p50_ms"] = percentiles(lambda: heatmap(predictor, image), n, warmup=2)[0]
    return row


def bench_serve_inprocess(run: Path, image: Path, seconds: float = 5.0) -> dict[str, Any] | None:
    """Requests/s of POST /api/predict (with heatmap) from one in-process client; None without FastAPI."""
    try:
        from fastapi.testclient import TestClient
    except ImportError:
        return None
    from lungxray.serve.app import create_app

    data = image.read_bytes()
    # the server refuses Host headers other than its own names (DNS-rebinding guard): speak as localhost
    with TestClient(create_app(run), base_url="http://localhost") as client:

        def post() -> int:
            files = {"file": (image.name, data, "application/octet-stream")}
            return client.post("/api/predict", files=files).status_code

        post()
        n, ok, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            ok += post() == 200
            n += 1
        wall = time.perf_counter() - t0
    return {"requests": n, "ok": ok, "req_per_s": ok / wall, "seconds": wall}


def run_bench(data: str | os.PathLike, *, quick: bool = False, config: str | None = None,
              threads: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every measurement in one process (see the module docstring); a JSON-ready dict. ``threads``
    sets torch's intra-op threads (1 is steadier on a shared CPU, where 2 threads spin-wait)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from lungxray.data.readers import from_folders
    from lungxray.predict import Predictor

    say = log or (lambda _msg: None)
    data = Path(data)
    m = from_folders(data)
    files = [Path(p) for p in m.paths]
    out: dict[str, Any] = {"machine": machine(), "quick": quick, "data": str(data)}
    n_cache = 64 if quick else 512
    say(f"cache build: {n_cache} files")
    out["cache"] = bench_cache([str(f) for f in files[:n_cache]], 128)
    common: dict[str, Any] = {"train.epochs": 2 if quick else 3, "train.early_stopping": 0,
                              "data.max_images": 160 if quick else 1000}  # fmt: skip
    if quick:
        common.update({"data.size": 64, "model.kwargs": {"width": 8}, "train.batch_size": 32})
    default = Path("configs/cpu-default.yaml")
    recipe = config or (str(default) if default.is_file() else None)
    out["recipe"] = recipe
    with tempfile.TemporaryDirectory(prefix="lungxray-bench-") as tmp:
        rows = []
        for name in ("recipe", "fp32-nchw"):
            say(f"training: {name}")
            row = bench_train_variant(str(data), recipe, {**common, **TRAIN_VARIANTS[name]}, Path(tmp) / name)
            rows.append({"variant": name, **row})
        out["train"] = rows
        run = Path(rows[0]["run_dir"])
        test_files = sorted(f for f in files if "test" in f.parts) or files
        calls, n_batch = (20, 128) if quick else (100, 256)
        out["inference"] = []
        for backend in ("torch", "onnx"):
            say(f"inference: {backend}")
            try:
                if backend == "onnx":
                    from lungxray.export import export_onnx

                    export_onnx(run)
                pred = Predictor.load(run, backend=backend)
            except Exception as exc:  # onnx / onnxruntime missing: say so in the table
                out["inference"].append({"backend": backend, "skipped": f"{type(exc).__name__}: {exc}"})
                continue
            out["inference"].append(bench_inference(pred, test_files, calls=calls, n_batch=n_batch))
        say("serve")
        out["serve"] = bench_serve_inprocess(run, test_files[0], seconds=3.0 if quick else 10.0)
        for r in rows:
            r.pop("run_dir", None)
    return out


def render_bench(result: dict[str, Any], console: Any) -> None:
    """One table of ``run_bench``'s figures, headed by the machine."""
    from rich.table import Table

    mc = result["machine"]
    console.print(f"{mc['cpu']}, {mc['cores']} cores, torch {mc['torch']} ({mc['torch_threads']} threads), "
                  f"python {mc['python']}, device {mc['device']}{' (quick)' if result.get('quick') else ''}")  # fmt: skip
    table = Table(show_lines=False)
    for col in ("measure", "value", "note"):
        table.add_column(col)
    c = result["cache"]
    table.add_row("cache build", f"{c['images_per_s']:.1f} img/s",
                  f"{c['files']} files at {c['size']} px cold; warm load {c['warm_load_seconds']:.2f} s")  # fmt: skip
    base = result["train"][0]["images_per_s"]
    for r in result["train"]:  # on CPU both rows run the same code: their ratio shows the noise
        table.add_row(f"train {r['variant']}", f"{r['images_per_s']:.0f} img/s",
                      f"x{r['images_per_s'] / base:.2f}; {r['model']} {r['size']} px batch {r['batch_size']}, "
                      f"bf16 {r['bf16']}, channels-last {r['channels_last']}")  # fmt: skip
    torch_row = next((r for r in result["inference"] if r.get("backend") == "torch"), None)
    for r in result["inference"]:
        if "skipped" in r:
            table.add_row(f"predict {r['backend']}", "-", f"skipped: {r['skipped']}")
            continue
        ratio = f" (x{r['throughput'] / torch_row['throughput']:.2f} of torch)" if torch_row else ""
        table.add_row(f"predict {r['backend']} batch 1", f"p50 {r['p50_ms']:.1f} ms", f"p95 {r['p95_ms']:.1f} ms")
        table.add_row(f"predict {r['backend']} batch 64", f"{r['throughput']:.0f} img/s", ratio.strip())
        if r.get("cam_p50_ms") is not None:
            table.add_row("Grad-CAM", f"p50 {r['cam_p50_ms']:.1f} ms", "one image, torch")
    s = result.get("serve")
    if s is None:
        table.add_row("serve", "-", "FastAPI not installed")
    else:
        table.add_row("serve /api/predict", f"{s['req_per_s']:.1f} req/s",
                      f"in-process, one client, heatmap on; {s['ok']}/{s['requests']} ok")  # fmt: skip
    console.print(table)

"""Scale benchmark: N generated X-ray-like PNGs -> cache build rate, training peak RSS (one epoch),
predict peak RSS over all N files, and the time to resume a predict killed halfway.

    PYTHONPATH=src python benchmarks/bench_scale.py --n 5000 [--workers 1] [--keep DIR] [--json out.json]

The images are 64-128 px, each drawn from its own seed (two lung fields, ribs, noise; "PNEUMONIA"
ones with bright patches), so the content-keyed cache never dedupes them. Every phase runs in its own
Python process, and its peak resident memory (``ru_maxrss`` of that process, and of its decoding
worker processes separately) is what is reported: flat memory means these do not grow with N. The
peaks of its anonymous (heap) and file-backed (shared libraries, memory-mapped files) parts are
sampled from /proc as well.
The issue's target run is N = 100,000 (on a machine with more than 2 cores); not a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def xray_like(i: int, positive: bool) -> np.ndarray:
    """A distinct (seeded by ``i``) X-ray-like uint8 image, 64-128 px."""
    rng = np.random.default_rng(i)
    h, w = int(rng.integers(64, 129)), int(rng.integers(64, 129))
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = 0.55 + 0.25 * rng.random() * yy
    for cx in (0.3, 0.7):  # two dark lung fields
        r = ((xx - cx - rng.normal(0, 0.02)) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2
        img = img - 0.35 * (r < 1)
    img = img + 0.05 * np.sin(yy * rng.uniform(20, 30) * np.pi)  # ribs
    if positive:
        for _ in range(3):
            cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.8)
            img = img + 0.25 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004))
    img = img + rng.normal(0, 0.04, (h, w))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_dataset(root: Path, n: int) -> Path:
    """root/{train,test}/{NORMAL,PNEUMONIA}/img_i.png, 10% test; returns root."""
    from PIL import Image

    for split in ("train", "test"):
        for kind in ("NORMAL", "PNEUMONIA"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        positive = i % 2 == 1
        split = "test" if i % 10 == 0 else "train"
        path = root / split / ("PNEUMONIA" if positive else "NORMAL") / f"img_{i:06d}.png"
        if not path.exists():
            Image.fromarray(xray_like(i, positive)).save(path)
    return root


def children_rss_mb() -> float:
    """Summed VmRSS (MB) of this process's live child processes (the decoding workers), from /proc."""
    total = 0.0
    for task in Path("/proc/self/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                pass
    return total


def self_rss_mb() -> dict[str, float]:
    """This process's RssAnon (heap: what flat memory is about) and RssFile (mapped files: shared
    libraries, memory maps; page cache the kernel can drop) in MB, from /proc/self/status."""
    out = {"RssAnon": 0.0, "RssFile": 0.0}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in out:
            out[key] = int(line.split()[1]) / 1024
    return out


class ChildSampler(threading.Thread):
    """Samples ``children_rss_mb`` and ``self_rss_mb`` every 0.2 s and keeps the peaks. (``ru_maxrss`` of
    RUSAGE_CHILDREN is no use here: a spawned child's maxrss counts the parent pages it had before exec.)"""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.anon, self.file, self.stop = 0.0, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, children_rss_mb())
            own = self_rss_mb()
            self.anon, self.file = max(self.anon, own["RssAnon"]), max(self.file, own["RssFile"])


def peaks(sampler: ChildSampler) -> dict[str, float]:
    """Peak RSS in MB of this process (``ru_maxrss``; and its sampled anonymous / file-backed peaks) and
    the largest summed RSS of its worker processes."""
    sampler.stop.set()
    return {"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "workers_mb": sampler.peak,
            "anon_mb": sampler.anon, "file_mb": sampler.file}  # fmt: skip


def phase(name: str, args: argparse.Namespace) -> dict:
    """One phase, in this (fresh) process."""
    from lungxray.cli import main as cli

    t0 = time.perf_counter()
    sampler = ChildSampler()
    sampler.start()
    out: dict = {}
    if name == "cache":
        from lungxray.data.cache import cache_images
        from lungxray.data.readers import from_folders

        m = from_folders(args.data)
        c = cache_images(m.paths, 64, cache_dir=args.cache, progress=False)
        out = {"files": len(m), "decode_images_per_s": c.images_per_s, "images_per_s": len(m) / c.build_seconds}
    elif name == "train":
        cli(["train", str(args.data), "--config", str(REPO / "configs" / "cpu-default.yaml"), "--out", str(args.run),
             "--set", "data.size=64", "--set", "train.epochs=1", "--set", f"data.cache_dir={args.cache}",
             "--set", "model.kwargs={width: 8}", "--set", "train.threads=1"])  # fmt: skip
    elif name in ("predict", "resume"):
        argv = ["predict", str(args.run), str(args.data), "--out", str(args.csv), "--workers", str(args.workers),
                "--batch-size", "64"]  # fmt: skip
        try:
            cli([*argv, "--resume"] if name == "resume" else argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    return {"phase": name, "seconds": time.perf_counter() - t0, **out, **peaks(sampler)}


def run_phase(name: str, args: argparse.Namespace, kill_at_rows: int | None = None) -> dict | None:
    """``phase(name)`` in a subprocess; with ``kill_at_rows``, SIGKILL it once the .partial has that many rows."""
    cmd = [sys.executable, __file__, "--phase", name, "--data", str(args.data), "--cache", str(args.cache),
           "--run", str(args.run), "--csv", str(args.csv), "--workers", str(args.workers)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    if kill_at_rows is not None:
        partial = args.csv.with_name(args.csv.name + ".partial")
        while proc.poll() is None:
            if partial.is_file() and partial.read_bytes().count(b"\n") > kill_at_rows:
                os.killpg(proc.pid, signal.SIGKILL)  # the phase's own process group: it and its workers
                break
            time.sleep(0.05)
        proc.wait()
        return None
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed ({proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=1, help="predict decoding processes")
    ap.add_argument("--keep", type=Path, default=None, help="keep the data set and outputs here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    for flag in ("--data", "--cache", "--run", "--csv"):
        ap.add_argument(flag, type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="lungxray-scale-") as tmp:
        root = args.keep or Path(tmp)
        t = time.perf_counter()
        args.data = make_dataset(root / f"synthetic-{args.n}", args.n)
        gen_s = time.perf_counter() - t
        args.cache, args.run, args.csv = root / "cache", root / "run", root / "preds.csv"
        rows = {"n": args.n, "generate_seconds": gen_s}
        for name in ("cache", "train", "predict"):
            rows[name] = run_phase(name, args)
            print(json.dumps(rows[name]), file=sys.stderr, flush=True)
        args.csv.unlink()
        run_phase("predict", args, kill_at_rows=args.n // 2)
        rows["killed_at_rows"] = args.csv.with_name(args.csv.name + ".partial").read_bytes().count(b"\n") - 1
        rows["resume"] = run_phase("resume", args)
        rows["final_rows"] = args.csv.read_bytes().count(b"\n") - 1
    print(json.dumps(rows, indent=2))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    c, tr, p, r = rows["cache"], rows["train"], rows["predict"], rows["resume"]
    print(f"\n| N | cache build img/s | cache build peak RSS MB | train 1 epoch peak RSS MB (anon / file) | "
          f"predict peak RSS MB (main / decoding workers) | predict s | resume after kill at "
          f"{rows['killed_at_rows']} rows: s |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.n} | {c['images_per_s']:.0f} | {c['self_mb']:.0f} | {tr['self_mb']:.0f} ({tr['anon_mb']:.0f} / "
          f"{tr['file_mb']:.0f}) | {p['self_mb']:.0f} / {p['workers_mb']:.0f} | {p['seconds']:.1f} | "
          f"{r['seconds']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Load test of ``lungxray serve``: throughput, latency percentiles, refusals and memory under load.

Starts the real server (``python -m lungxray.cli serve RUN``) in a subprocess on 127.0.0.1, then for
each configuration runs N concurrent clients (asyncio + httpx) for a fixed time, each posting the same
real chest X-ray in a loop. A client that gets 503 (queue full) waits ``min(Retry-After, 1 s)``, as a
polite client would, instead of spinning. Reports requests/s (200s only), p50/p95/p99 latency of the
200s, responses by status, and the server's resident memory (VmRSS) before and after each
configuration, plus its peak (VmHWM). Loopback traffic only; bounded in clients and time.

Usage::

    python benchmarks/bench_serve.py RUN [--clients 1 8 32] [--seconds 15] [--workers 1] [--write]

``--write`` also writes the table to docs/benchmarks-serve.md. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from lungxray.bench import cpu_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = (
    REPO / ".." / "shared" / "data" / "chest_xray" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
).resolve()
MAX_CLIENTS = 64
MAX_SECONDS = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process in MB, from /proc (psutil when /proc is absent)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        out = {}
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        return out
    try:
        import psutil
    except ImportError:
        return {}
    return {"VmRSS": psutil.Process(pid).memory_info().rss / 2**20}


def start_server(run: Path, port: int, workers: int, timeout: float = 240.0) -> subprocess.Popen:
    """The CLI server in a subprocess; returns once /health answers (model loaded and warmed up)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "lungxray.cli",
        "serve",
        str(run),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"server did not answer /health within {timeout:.0f} s")


async def load(url: str, image: bytes, clients: int, seconds: float, heatmap: bool) -> dict:
    """``clients`` loops posting ``image`` for ``seconds``; latencies of 200s and status counts."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    params = {"heatmap": "true" if heatmap else "false"}

    async def client(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await c.post(url, params=params, files={"file": ("chest.jpeg", image, "image/jpeg")})
            except httpx.TimeoutException:
                statuses["timeout"] += 1
                continue
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            statuses[r.status_code] += 1
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            elif r.status_code == 503:
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 1.0))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    pct = (lambda q: float(np.percentile(lat, q))) if len(lat) else (lambda q: float("nan"))
    return {
        "ok": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "statuses": dict(statuses),
        "elapsed": elapsed,
    }


def fmt_statuses(statuses: dict) -> str:
    bad = {k: v for k, v in statuses.items() if k != 200}
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items(), key=str)) or "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run directory")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="X-ray to post")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each configuration")
    ap.add_argument("--workers", type=int, default=1, help="server inference threads")
    ap.add_argument("--write", action="store_true", help="also write docs/benchmarks-serve.md")
    args = ap.parse_args(argv)
    if any(not 1 <= n <= MAX_CLIENTS for n in args.clients):
        ap.error(f"--clients must lie in 1..{MAX_CLIENTS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--seconds must lie in (0, {MAX_SECONDS}]")
    image = args.image.read_bytes()
    info = json.loads((args.run / "model.json").read_text())
    port = free_port()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = start_server(args.run, port, args.workers)
    startup = time.perf_counter() - t0
    url = f"http://127.0.0.1:{port}/api/predict"
    rows = []
    try:
        idle = proc_memory_mb(proc.pid)
        for heatmap in (False, True):
            for clients in args.clients:
                before = proc_memory_mb(proc.pid).get("VmRSS", float("nan"))
                res = asyncio.run(load(url, image, clients, args.seconds, heatmap))
                after = proc_memory_mb(proc.pid)
                rows.append((heatmap, clients, res, before, after.get("VmRSS", float("nan"))))
                print(
                    f"heatmap={heatmap!s:5} clients={clients:3d}  {res['rps']:7.1f} req/s  "
                    f"p50 {res['p50']:7.1f} ms  p95 {res['p95']:7.1f} ms  refusals: {fmt_statuses(res['statuses'])}",
                    file=sys.stderr,
                )
        peak = proc_memory_mb(proc.pid).get("VmHWM", float("nan"))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = os.getloadavg()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Web server load test",
        "",
        f"`python benchmarks/bench_serve.py {args.run.name} --seconds {args.seconds:g} --workers {args.workers}` "
        f"on {datetime.now(UTC):%Y-%m-%d}: {cpu_name()}, {cores} cores, Python {platform.python_version()}.",
        f"Model `{info.get('architecture')}` at {info.get('input_size')} px ({info.get('task')}); server with "
        f"{args.workers} inference worker(s), queue of {4 * args.workers} (running + waiting), "
        f"started and warmed up in {startup:.1f} s. Each client posts the same {len(image) / 1024:.1f} KB "
        "JPEG in a loop over loopback; after a 503 it waits min(Retry-After, 1 s).",
        "",
        "| heatmap | clients | 200s | req/s | p50 ms | p95 ms | p99 ms | other responses | RSS MB before -> after |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for heatmap, clients, r, before, after in rows:
        lines.append(
            f"| {'yes' if heatmap else 'no'} | {clients} | {r['ok']} | {r['rps']:.1f} | {r['p50']:.0f} | "
            f"{r['p95']:.0f} | {r['p99']:.0f} | {fmt_statuses(r['statuses'])} | {before:.0f} -> {after:.0f} |"
        )
    lines += [
        "",
        f"Server memory: {idle.get('VmRSS', float('nan')):.0f} MB idle after warm-up, peak {peak:.0f} MB.",
        f"Load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after: on a shared machine "
        "the load generator, the server and other processes compete for the same cores, so absolute "
        "figures are lower bounds; 503s show the bounded queue refusing work instead of piling it up.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        out = REPO / "docs" / "benchmarks-serve.md"
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Streamed prediction of a gated run (a population gate attached, as `make demo` leaves it): the gate's
input made in the decoding workers vs the whole prediction in this process (the path before session 7).

    PYTHONPATH=src python benchmarks/bench_gated_stream.py RUN [--files 600] [--workers 2] [--repeats 2]

Both paths write the same records (tests/test_gate.py checks the CSV byte for byte); this times them side
by side on the first ``--files`` JPEGs under ``--data`` (sorted paths), best of ``--repeats``; prints files/s and the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lungxray.predict import Predictor
from lungxray.predict_stream import stream_records


def in_process(pred: Predictor, files: list[str], batch: int) -> int:
    """The old path: every file decoded and predicted in this process."""
    return sum(1 for _ in pred.records(files, batch_size=batch))


def workers(pred: Predictor, files: list[str], batch: int, n: int) -> int:
    return sum(1 for _ in stream_records(pred, files, batch_size=batch, workers=n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pred = Predictor.load(args.run)
    if pred.gate is None:
        raise SystemExit(f"{args.run} has no population gate attached (lungxray attach-gate)")
    files = sorted(str(p) for p in Path(args.data).rglob("*.jpeg"))[: args.files]
    best = {}
    for name, fn in (("in this process (before)", lambda: in_process(pred, files, args.batch)),
                     (f"{args.workers} decoding workers (now)", lambda: workers(pred, files, args.batch, args.workers))):  # fmt: skip
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            assert fn() == len(files)
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    print(f"| path | files/s ({len(files)} files, best of {args.repeats}) |\n|---|---|")
    for name, s in best.items():
        print(f"| {name} | {len(files) / s:.0f} |")
    a, b = best.values()
    print(f"\nratio (workers / in-process throughput): {a / b:.2f}x")


if __name__ == "__main__":
    main()

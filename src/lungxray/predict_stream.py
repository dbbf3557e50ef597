"""Batch prediction at scale: decode in worker processes, stream rows to a resumable CSV.

``predict_to_csv(predictor, paths, out)`` runs the prediction pass over any number of files with flat
memory: files are decoded and resized in ``workers`` processes (a bounded prefetch of ``prefetch``
chunks of ``batch_size`` files in flight), each batch goes through one forward pass
(``predict._forward``), and each row is appended to ``out + ".partial"`` and flushed as soon as it is
computed. On completion the partial file is fsynced and renamed onto ``out`` atomically. With
``resume=True`` the files already in the partial (or complete) output are skipped, so an interrupted
run predicts only the rest and ends with the same CSV an uninterrupted run writes.

Only ``table_max`` Predictions are kept for the terminal table; beyond that the caller prints a
summary (``StreamStats``).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lungxray.data.decode import decode_paths
from lungxray.errors import ConfigError
from lungxray.io import csv_cell
from lungxray.predict import Prediction, Record, _forward
from lungxray.predict_output import _FIELDS, _flat_row

# ``workers=None`` decodes in this process below this many files, in one worker process from it on:
# spawning a worker costs ~2.6 s, and a worker then adds ~95 files/s beside the forward pass
# (2 CPU cores; docs/benchmarks.md, "Streamed prediction of a gated run"), so they break even near 2,700.
AUTO_WORKERS_FROM = 2500


def auto_workers(n_files: int, workers: int | None) -> int:
    """``workers`` as given, or for ``None`` the default for ``n_files`` (see AUTO_WORKERS_FROM)."""
    if workers is not None:
        return workers
    return 1 if n_files >= AUTO_WORKERS_FROM else 0


TABLE_MAX = 50  # the terminal table lists at most this many files; beyond, a summary only
_DIED = "the decoding process died (out of memory or decoder crash)"


@dataclass
class StreamStats:
    """What a streamed prediction did: counts, time, the largest number of decoded inputs held."""

    total: int = 0  # files asked for
    skipped: int = 0  # already in the output (resume)
    predicted: int = 0
    failed: int = 0
    ood: int = 0
    seconds: float = 0.0
    max_held: int = 0  # decoded inputs in flight + pending at once (bounded: flat memory)
    table: list[Prediction] = field(default_factory=list)  # the first TABLE_MAX predictions

    @property
    def done(self) -> int:
        return self.predicted + self.failed


def decoded_stream(
    paths: Sequence[str], size: int, resize: str, *, workers: int = 1, chunk: int = 32, prefetch: int = 4,
    held: Callable[[int], None] | None = None, preprocessor: Any = None, also: Any = None,
) -> Iterator[tuple[str, Any, str | None, float]]:  # fmt: skip
    """Decoded files in input order; at most ``prefetch`` chunks of ``chunk`` files in flight.

    ``preprocessor``: the run's ``lungxray.focus.Preprocessor`` when not the default (pickled to the workers);
    ``also``: a second one whose input is returned beside the model's (``decode_paths``).

    ``workers`` >= 1 processes decode (``0``: in this process, for tests and tiny inputs). ``held(n)``
    is told how many decoded inputs are in flight after each submit (for memory accounting).
    """
    if workers < 0 or chunk < 1 or prefetch < 1:
        raise ConfigError(f"workers must be >= 0, chunk and prefetch >= 1 (got {workers}, {chunk}, {prefetch}).")
    chunks = [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)]
    if workers == 0:
        for c in chunks:
            if held:
                held(len(c))
            yield from decode_paths(c, size, resize, preprocessor, also)
        return
    # spawn: forking a process that runs torch threads and a progress-bar thread can deadlock the child
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        queue: deque[tuple[list[str], Future]] = deque()
        it = iter(chunks)
        for c in it:
            queue.append((c, pool.submit(decode_paths, c, size, resize, preprocessor, also)))
            if len(queue) >= prefetch:
                break
        while queue:
            c, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(decode_paths, nxt, size, resize, preprocessor, also)))
            if held:
                held(len(c) + sum(len(q) for q, _ in queue))
            try:
                results = fut.result()
            except BrokenProcessPool:
                results = [(p, None, _DIED, 0.0) for p in c]
            yield from results


def stream_records(
    predictor: Any, paths: Sequence[str], *, batch_size: int = 32, workers: int = 1, prefetch: int = 4,
    held: Callable[[int], None] | None = None,
) -> Iterator[Record]:  # fmt: skip
    """``predict_records`` for files at scale: decoding in worker processes, records in input order.

    Records carry ``x`` and the prediction but no decoded ``image`` (it stays in the worker). With a
    population gate attached, the workers also compute the gate's input (``Record.gate_x``). A
    lung-focused pipeline (whose "no lungs found" warning the workers would not pass on) is predicted
    in this process (``predictor.records``) instead: the same records, decoded without workers.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    if predictor.preprocessor.needs_lungs:
        for rec in predictor.records(list(paths), batch_size=batch_size):
            rec.image = None  # as from the workers: the decoded image is not kept
            yield rec
        return
    gate = getattr(predictor, "gate", None)
    pending: list[Record] = []
    n_ok = 0
    pre = None if predictor.preprocessor.is_default else predictor.preprocessor
    stream = decoded_stream(paths, predictor.input_size, predictor.resize, workers=workers, chunk=batch_size,
                            prefetch=prefetch, held=held, preprocessor=pre,
                            also=None if gate is None else gate.preprocessor)  # fmt: skip
    for name, x, error, seconds in stream:
        gate_x = None
        if gate is not None and x is not None:
            x, gate_x = x
        rec = Record(name=name, prediction=Prediction(path=name, error=error), x=x, error=error, gate_x=gate_x)
        rec.seconds["decode"] = seconds
        pending.append(rec)
        n_ok += error is None
        if n_ok >= batch_size:
            yield from _forward(predictor, pending)
            pending, n_ok = [], 0
    yield from _forward(predictor, pending)


def done_paths(path: Path) -> set[str]:
    """Paths already written to a predictions CSV (a torn last line is cut off first)."""
    if not path.is_file():
        return set()
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):  # killed mid-row: drop the partial row
            fh.truncate(data.rfind(b"\n") + 1)
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"] for row in csv.DictReader(fh) if row.get("path")}


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def predict_to_csv(
    predictor: Any, paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, resume: bool = False,
    batch_size: int = 32, workers: int | None = None, prefetch: int = 4,
    on_start: Callable[[int, int], None] | None = None, on_record: Callable[[Record], None] | None = None,
    make_records: Callable[[list[str]], Iterable[Record]] | None = None,
) -> StreamStats:  # fmt: skip
    """Predict ``paths`` into the CSV ``out``, row by row (see the module docstring).

    ``workers``: decoding processes (0: this process; None: ``auto_workers`` of the files left to do).

    ``make_records(todo)`` replaces the worker-decoded stream (e.g. ``predictor.records`` when heatmaps
    need the decoded images); ``on_start(skipped, todo)`` is called once the resumed rows are known;
    ``on_record`` sees every record as it is written (a progress bar, heatmaps).

    Raises:
        ConfigError: ``out`` is not a .csv file.
    """
    from lungxray.io import fsync_dir

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"streamed predictions are written to a .csv file, not {out.name}.")
    part = partial_path(out)
    part.parent.mkdir(parents=True, exist_ok=True)
    names = [str(p) for p in paths]
    stats = StreamStats(total=len(names))
    done: set[str] = set()
    if resume:
        if not part.is_file() and out.is_file():
            shutil.copyfile(out, part)  # continue a complete output (e.g. the folder grew)
        done = done_paths(part)
    else:
        part.unlink(missing_ok=True)
    todo = [n for n in names if n not in done]
    stats.skipped = len(names) - len(todo)
    if on_start is not None:
        on_start(stats.skipped, len(todo))
    fields = [*_FIELDS, *(f"p_{c}" for c in predictor.classes)]
    t0 = time.perf_counter()
    with open(part, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        if fh.tell() == 0:
            writer.writeheader()

        def held(n: int) -> None:
            stats.max_held = max(stats.max_held, n)

        if make_records is None:
            records = stream_records(predictor, todo, batch_size=batch_size, prefetch=prefetch, held=held,
                                     workers=auto_workers(len(todo), workers))  # fmt: skip
        else:
            records = make_records(todo)
        for rec in records:
            r = rec.prediction
            row = _flat_row(r, list(predictor.classes))
            writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in row.items()})
            fh.flush()
            stats.failed += bool(r.error)
            stats.predicted += not r.error
            stats.ood += bool(r.ood)
            if len(stats.table) < TABLE_MAX:
                stats.table.append(r)
            if on_record is not None:
                on_record(rec)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, out)
    fsync_dir(out.parent)
    stats.seconds = time.perf_counter() - t0
    return stats


def read_predictions_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a predictions CSV (for tests and merging)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def predict_files_to_csv(predictor: Any, paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                         heatmaps: Any = None, batch_size: int = 32, workers: int | None = None, resume: bool = False,
                         console: Any, err: Any) -> bool:  # fmt: skip
    """``lungxray predict --out X.csv``: ``predict_to_csv`` with a progress bar (rate, ETA) on ``err``,
    then the table (up to TABLE_MAX files) or a summary on ``console``. True if any file failed."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lungxray.predict_output import render_predictions

    make = None if heatmaps is None else (lambda todo: predictor.records(todo, batch_size=batch_size))
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:.1f} img/s"),
               TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("predict", total=len(paths), rate=0.0)
        start = {"t": time.perf_counter(), "n": 0}

        def on_start(skipped: int, todo: int) -> None:
            bar.update(task, completed=skipped)
            start.update(t=time.perf_counter(), n=0)

        def on_record(rec) -> None:
            if heatmaps is not None:
                heatmaps.write(rec)
            start["n"] += 1
            bar.update(task, advance=1, rate=start["n"] / max(time.perf_counter() - start["t"], 1e-9))

        stats = predict_to_csv(predictor, paths, out, resume=resume, batch_size=batch_size, workers=workers,
                               on_start=on_start, on_record=on_record, make_records=make)  # fmt: skip
    if stats.done <= TABLE_MAX and not stats.skipped:
        render_predictions(stats.table, console)
    else:
        console.print(
            f"{stats.total} inputs: {stats.skipped} already in {out}, {stats.predicted} predicted, "
            f"{stats.failed} failed, {stats.ood} out of distribution "
            f"({stats.done / max(stats.seconds, 1e-9):.1f} images/s); rows in {out}."
        )
    return stats.failed > 0

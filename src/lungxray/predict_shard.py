"""``lungxray predict`` under torchrun: each rank predicts a shard of the files, rank 0 merges.

Under ``torchrun --nproc_per_node W -m lungxray.cli predict RUN INPUTS --out preds.csv`` (``WORLD_SIZE``
> 1) rank ``r`` predicts the files ``i`` with ``i % W == r`` into its own part file
(``preds.rank{r}of{W}.csv``, streamed and resumable exactly like a one-process ``--out X.csv``), then
every rank meets at a barrier (gloo), and rank 0 merges the parts into ``preds.csv`` in input order
(atomically, ``lungxray.io``) and removes them. The merge streams the parts row by row, so memory stays
flat whatever the number of files. With ``--resume`` every rank continues its own part (or, when only
the merged output is left, seeds its part from the merged output's rows of its shard).

A ``.json`` output is gathered the same way: each rank writes its predictions as a JSON part, rank 0
writes the document in input order (JSON is an in-memory format; use .csv at scale).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

BARRIER_TIMEOUT = timedelta(hours=24)  # ranks may finish their shards far apart on a busy machine


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shard(paths: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """The inputs rank ``rank`` predicts: every ``world_size``-th one starting at ``rank``."""
    return list(paths[rank::world_size])


def part_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Rank ``rank``'s part of ``out``: ``preds.csv`` -> ``preds.rank0of2.csv`` (same suffix)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}of{world_size}{out.suffix}")


def _barrier() -> None:
    """Wait for every rank (joins the gloo group on first use)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    dist.barrier()
    dist.destroy_process_group()  # the only collective: rank 0 merges alone, the others exit


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def merge_csv_parts(paths: Sequence[Any], parts: Sequence[Path], out: str | os.PathLike) -> int:
    """Interleave the rank parts into ``out`` in the order of ``paths`` (input i is in part i % W);
    returns the number of rows with an error.

    Streams: one row of each part in memory. A part whose rows are not in its shard's order (a resumed
    part whose input list changed) is read into a path -> row map instead.
    """
    from lungxray.io import atomic_path

    world_size = len(parts)
    with open(parts[0], newline="", encoding="utf-8") as fh:
        fields = next(csv.reader(fh))
    readers = [_rows(p) for p in parts]
    keyed: dict[int, dict[str, dict[str, str]]] = {}
    failed = 0
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for i, p in enumerate(paths):
            r, name = i % world_size, str(p)
            if r in keyed:
                row = keyed[r].get(name)
            else:
                row = next(readers[r], None)
                if row is None or row["path"] != name:  # out of order: index this part by path
                    keyed[r] = {x["path"]: x for x in _rows(parts[r])}
                    row = keyed[r].get(name)
            if row is None:
                raise RuntimeError(f"rank {r} wrote no row for {name} in {parts[r]}")
            failed += bool(row.get("error"))
            writer.writerow(row)
    return failed


def _seed_from_merged(out: Path, part: Path, mine: Sequence[Any]) -> None:
    """Resuming after a completed merge: this rank's rows of ``out`` become its ``.partial`` part."""
    from lungxray.predict_stream import partial_path

    names = {str(p) for p in mine}
    with open(partial_path(part), "w", newline="", encoding="utf-8") as fh:
        rows = _rows(out)
        first = next(rows, None)
        if first is None:
            return
        writer = csv.DictWriter(fh, fieldnames=list(first), lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row in itertools.chain([first], rows) if row["path"] in names)


def predict_to_file(predictor: Any, paths: Sequence[Any], out: str | os.PathLike, *, heatmaps: Any = None,
                    batch_size: int = 32, workers: int | None = None, resume: bool = False, console: Any,
                    err: Any) -> bool | None:  # fmt: skip
    """``lungxray predict --out OUT``: one process streams a .csv (``predict_files_to_csv``); under
    torchrun this rank predicts its shard and rank 0 merges (.csv or .json). Then, on rank 0, the
    set-level summary. True if any file failed, False if none, None on a rank other than 0.

    Raises:
        ConfigError: ``out`` is neither .csv nor .json, or ``resume`` with a .json output.
    """
    from rich.console import Console

    from lungxray.errors import ConfigError
    from lungxray.predict_output import render_set_summary, rows_of_csv
    from lungxray.predict_stream import partial_path, predict_files_to_csv

    rank, world_size = world()
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigError(f"cannot write predictions to {out}: use a .csv or .json file name.")
    if resume and suffix != ".csv":
        raise ConfigError("--resume needs --out FILE.csv (a streamed CSV output to continue).")
    if world_size <= 1:
        failed = predict_files_to_csv(predictor, paths, out, heatmaps=heatmaps, batch_size=batch_size,
                                      workers=workers, resume=resume, console=console, err=err)  # fmt: skip
        render_set_summary(predictor, rows_of_csv(out), console)
        return failed
    mine = shard(paths, rank, world_size)
    part = part_path(out, rank, world_size)
    if suffix == ".csv":
        if resume and out.is_file() and not part.is_file() and not partial_path(part).is_file():
            _seed_from_merged(out, part, mine)
        quiet = Console(quiet=True)
        predict_files_to_csv(predictor, mine, part, heatmaps=heatmaps, batch_size=batch_size, workers=workers,
                             resume=resume, console=quiet, err=err if rank == 0 else quiet)  # fmt: skip
    else:
        _predict_json_part(predictor, mine, part, heatmaps, batch_size)
    _barrier()
    if rank != 0:
        return None
    parts = [part_path(out, r, world_size) for r in range(world_size)]
    failed = merge_csv_parts(paths, parts, out) if suffix == ".csv" else _merge_json_parts(parts, out, len(paths))
    for p in parts:
        p.unlink(missing_ok=True)
    console.print(f"{len(paths)} inputs predicted by {world_size} ranks, {failed} failed; rows in {out}.")
    if suffix == ".csv":
        render_set_summary(predictor, rows_of_csv(out), console)
    return failed > 0


def _predict_json_part(predictor: Any, mine: Sequence[Any], part: Path, heatmaps: Any, batch_size: int) -> None:
    """This rank's predictions as a JSON list of ``Prediction.to_dict()`` (written atomically)."""
    from lungxray.io import atomic_write_text

    preds = []
    for rec in predictor.records(mine, batch_size=batch_size):
        if heatmaps is not None:
            heatmaps.write(rec)
        preds.append(rec.prediction.to_dict())
    atomic_write_text(part, json.dumps(preds))


def _merge_json_parts(parts: Sequence[Path], out: Path, n: int) -> int:
    """The JSON document of the rank parts in input order; returns the number of failed inputs."""
    from lungxray import DISCLAIMER
    from lungxray.io import atomic_write_text

    loaded = [json.loads(p.read_text()) for p in parts]
    preds = [loaded[i % len(parts)][i // len(parts)] for i in range(n)]
    atomic_write_text(out, json.dumps({"disclaimer": DISCLAIMER, "predictions": preds}, indent=2))
    return sum(1 for p in preds if p.get("error"))

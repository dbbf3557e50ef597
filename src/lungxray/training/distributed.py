"""Distributed data-parallel training on PyTorch's own engine (``torchrun``; gloo on CPU, nccl on GPU).

Under ``torchrun --nproc_per_node N -m lungxray.cli train ...`` (or ``lungxray train --nproc N``) every
rank builds the same model, splits and epoch order from the same seed, and takes its shard of each
GLOBAL batch (``rows[rank::world]``, rows of the cache memmap: nothing is copied). Its loss is scaled by
``n_local * world / n_global``, so DDP's gradient average equals the gradient of the global batch's
mean loss: the same update as one process with that batch (up to float reduction order; augmentation
draws and BatchNorm statistics are per rank). Validation is sharded and the predictions gathered, so
every rank sees all of validation (identical scores, identical early stopping) and rank 0 alone runs
the callbacks that write the run directory, then the threshold and OOD fit on all of validation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int
    world: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch_rows(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's rows of a global batch and its loss scale (0 on a rank left without rows: it
        still runs one row so every rank joins the gradient all-reduce)."""
        local = rows[self.rank :: self.world]
        if len(local) == 0:
            return rows[:1], 0.0
        return local, len(local) * self.world / len(rows)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DistributedDataParallel (its parameters stay the module's own)."""
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = next(model.parameters()).device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None)

    def gather_rows(self, rows: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``predict(rows)`` computed in shards across ranks and gathered back in the order of ``rows``."""
        import torch.distributed as dist

        mine = np.arange(self.rank, len(rows), self.world)
        parts: list = [None] * self.world
        dist.all_gather_object(parts, (mine, predict(rows[mine])))
        first = next(p for _, p in parts if len(p)) if len(rows) else np.zeros((0, 1), np.float32)
        out = np.zeros((len(rows), *first.shape[1:]), dtype=first.dtype)
        for idx, part in parts:
            out[idx] = part
        return out


def rank_callbacks(d: Dist | None, callbacks: list) -> list:
    """The callbacks this rank runs: all of them on rank 0 (or alone); elsewhere only early stopping,
    which decides from the gathered validation scores exactly as rank 0 does."""
    from lungxray.training.callbacks import EarlyStopping

    return callbacks if d is None or d.is_main else [cb for cb in callbacks if isinstance(cb, EarlyStopping)]


def setup(device: torch.device) -> tuple[Dist | None, torch.device]:
    """Join the torchrun job when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU); (None, device) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, device
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local), device


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 (for writers outside the Trainer)."""
    return int(os.environ.get("RANK", "0")) == 0


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``lungxray <argv>`` under ``torchrun --nproc_per_node nproc`` (one node); its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lungxray.cli", *argv]  # fmt: skip
    return subprocess.call(cmd)


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each torchrun worker is given)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out

"""``train(cfg)``: the library twin of ``lungxray train`` (prepare the data, run the loop, calibrate)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from rich.console import Console
from rich.markup import escape

from lungxray.config import Config
from lungxray.errors import RunError
from lungxray.focus import Preprocessor, install_lungs
from lungxray.io import run_lock
from lungxray.training.data import prepare_data
from lungxray.training.distributed import is_main_process
from lungxray.training.kfold import pool_train_val, train_kfold
from lungxray.training.loop import Trainer
from lungxray.training.resume import check_resumed, record_data, resume_manifest
from lungxray.training.state import TrainResult


def train(
    cfg: Config, *, resume: bool = False, progress: bool = True, console: Console | None = None
) -> TrainResult:
    """Prepare the data of ``cfg`` and train with the standard callbacks (calibration at the end).

    ``resume`` continues ``cfg.run_dir`` from its checkpoint.pt (with the run's own config.yaml and
    splits.csv, refused when a listed file is missing or changed: ``lungxray.training.resume``).
    ``train.folds`` >= 2 trains a k-fold ensemble instead (``lungxray.training.kfold``; its
    ``--resume`` restarts at the first unfinished fold). The run directory is locked for the whole call (RunError if another process holds it). Raises
    RunError when ``cfg.run_dir`` already holds a finished run and ``resume`` is off.
    """
    console = console or Console(quiet=not progress)
    cfg.validate()
    # under torchrun rank 0 alone writes (and locks) the run directory; the other ranks only read it
    lock = run_lock(cfg.run_dir) if is_main_process() else contextlib.nullcontext()
    with lock:
        if resume and (cfg.run_dir / "config.yaml").is_file():
            from lungxray.config import load_config

            # the run's own recipe, writing where it was asked to (a moved run must not write its old path)
            cfg = load_config(cfg.run_dir / "config.yaml", {"out": str(cfg.run_dir)})
        elif (cfg.run_dir / "model.json").exists() and not resume:
            raise RunError(f"{cfg.run_dir} already holds a finished run; choose another --out or delete it.")
        kfold = cfg.train.folds >= 2
        started = cfg.run_dir / ("splits.csv" if kfold else "checkpoint.pt")
        if resume and not started.is_file():
            raise RunError(f"cannot resume: {started} does not exist.")
        manifest = resume_manifest(cfg.run_dir) if resume else None
        data = prepare_data(cfg, progress=progress, console=console, manifest=manifest)
        if kfold:  # train + val pooled: the folds are cut from them (training.kfold)
            data = replace(data, manifest=pool_train_val(data.manifest))
        if resume:
            check_resumed(cfg.run_dir, data.manifest, data.sha1s)
        elif is_main_process():
            record_data(cfg.run_dir, data.manifest, data.sha1s)
        if is_main_process() and Preprocessor.from_config(cfg.data).prep.uses_lungs:
            install_lungs(cfg.data.lungs, cfg.run_dir)  # RUN/lungs/: the run carries its lung model
        m = data.manifest
        console.print(
            f"data: {len(m)} images, task {m.task}, classes {escape(str(list(m.classes)))}; "
            + ", ".join(f"{s} {len(m.split(s))}" for s in ("train", "val", "test"))
        )
        if kfold:
            return train_kfold(cfg, data, resume=resume, progress=progress, console=console)
        return Trainer(cfg, data, console=console, progress=progress).fit(resume=resume)

"""``train(cfg)``: the library twin of ``lungxray train`` (prepare the data, run the loop, calibrate)."""

from __future__ import annotations

from rich.console import Console

from lungxray.config import Config
from lungxray.errors import RunError
from lungxray.training.data import prepare_data
from lungxray.training.loop import Trainer
from lungxray.training.state import TrainResult


def train(
    cfg: Config, *, resume: bool = False, progress: bool = True, console: Console | None = None
) -> TrainResult:
    """Prepare the data of ``cfg`` and train with the standard callbacks (calibration at the end).

    ``resume`` continues ``cfg.run_dir`` from its checkpoint.pt (with the run's own config.yaml).
    Raises RunError when ``cfg.run_dir`` already holds a finished run and ``resume`` is off.
    """
    console = console or Console(quiet=not progress)
    cfg.validate()
    if resume and (cfg.run_dir / "config.yaml").is_file():
        from lungxray.config import load_config

        cfg = load_config(cfg.run_dir / "config.yaml")
    elif (cfg.run_dir / "model.json").exists() and not resume:
        raise RunError(f"{cfg.run_dir} already holds a finished run; choose another --out or delete it.")
    data = prepare_data(cfg, progress=progress, console=console)
    m = data.manifest
    console.print(
        f"data: {len(m)} images, task {m.task}, classes {list(m.classes)}; "
        + ", ".join(f"{s} {len(m.split(s))}" for s in ("train", "val", "test"))
    )
    return Trainer(cfg, data, console=console, progress=progress).fit(resume=resume)

"""Shared helpers of the training tests: seconds-long recipes on tiny subsets of the real data."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import CHEST_XRAY, DATA_ROOT, require_data  # noqa: E402
from lungxray.config import Config, load_config
from lungxray.models.parts import head_parameters
from lungxray.training import (
    Trainer,
    prepare_data,
)

COVID = DATA_ROOT / "covid19"
NIH = DATA_ROOT / "nih_sample"
RUN_FILES = ("config.yaml", "model.safetensors", "model.json", "splits.csv", "history.csv")


def make_cfg(out: Path, cache_dir: Path, data: Path = CHEST_XRAY, **overrides) -> Config:
    """A seconds-long recipe: 60 images at 32 px, 1 epoch of cnn-small (width 8), batch 16."""
    require_data(data)
    base = {
        "name": out.name,
        "out": str(out),
        "data.path": str(data),
        "data.cache_dir": str(cache_dir),
        "data.size": 32,
        "data.max_images": 60,
        "model.kwargs": {"width": 8},
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.deterministic": True,  # on a GPU machine too, exact-resume tests stay exact
    }
    return load_config(None, {**base, **overrides})


def fit(cfg: Config, **kw):
    """prepare_data + Trainer.fit; returns (trainer, result)."""
    trainer = Trainer(cfg, prepare_data(cfg, progress=False), progress=False)
    return trainer, trainer.fit(**kw)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k


def head_names(model: torch.nn.Module) -> set[str]:
    head = {id(p) for p in head_parameters(model)}
    return {n for n, p in model.named_parameters() if id(p) in head}


def _copy_images(src: Path, dst: Path, n: int) -> None:
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir())[:n]:
        shutil.copy(f, dst / f.name)



def splits_val_rows(run: Path) -> list[dict[str, str]]:
    """The validation rows of a run's splits.csv."""
    import csv

    with (run / "splits.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == "val"]

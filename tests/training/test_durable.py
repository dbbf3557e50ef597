"""A run directory that can never be half-written or trained on the wrong data: resume from the run's
own splits.csv (refused when its files changed), one writer per run directory, atomic checkpoints."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers_training import make_cfg

from conftest import xray_files  # noqa: E402
from lungxray.errors import RunError
from lungxray.io import run_lock
from lungxray.training import run as run_module
from lungxray.training import train
from lungxray.training.callbacks import save_checkpoint
from lungxray.training.state import TrainState


def _folder(root: Path, n: int = 12) -> Path:
    for kind in ("NORMAL", "PNEUMONIA"):
        (root / kind).mkdir(parents=True)
        for p in xray_files(n, kind):
            shutil.copy(p, root / kind / p.name)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A 1-epoch run on a 24-image folder; tests copy the run and may edit the data (then restore it)."""
    base = tmp_path_factory.mktemp("durable")
    data = _folder(base / "data")
    cfg = make_cfg(base / "run", cache_dir, data=data, **{"data.max_images": None})
    train(cfg, progress=False)
    return base / "run", data, cfg


@pytest.fixture
def run_copy(trained, tmp_path, cache_dir):
    run, data, _ = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    cfg = make_cfg(out, cache_dir, data=data, **{"data.max_images": None})
    return out, data, cfg


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "splits.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_resume_trains_on_the_runs_splits_not_the_current_folder(run_copy, monkeypatch):
    run, data, cfg = run_copy
    seen = {}

    class Spy:
        def __init__(self, cfg, data, **kw):
            seen["manifest"] = data.manifest

        def fit(self, resume):
            return None

    added = []
    try:  # new files in the folder would reshuffle a recomputed split
        for p in xray_files(20, "NORMAL")[12:]:
            added.append(data / "NORMAL" / f"new-{p.name}")
            shutil.copy(p, added[-1])
        monkeypatch.setattr(run_module, "Trainer", Spy)
        train(cfg, resume=True, progress=False)
    finally:
        for p in added:
            p.unlink()
    m = seen["manifest"]
    assert [(r["path"], r["split"]) for r in _rows(run)] == list(zip(m.paths, m.splits, strict=True))


def test_resume_refuses_a_missing_file(run_copy):
    run, data, cfg = run_copy
    victim = Path(_rows(run)[3]["path"])
    moved = victim.with_name(victim.name + ".away")
    victim.rename(moved)
    try:
        with pytest.raises(RunError, match=r"1 file\(s\) listed in splits.csv are missing"):
            train(cfg, resume=True, progress=False)
    finally:
        moved.rename(victim)


def test_resume_refuses_a_file_whose_content_changed(run_copy):
    run, data, cfg = run_copy
    victim = Path(_rows(run)[5]["path"])
    original = victim.read_bytes()
    shutil.copy(xray_files(30, "PNEUMONIA")[-1], victim)
    try:
        with pytest.raises(RunError, match=r"changed or became unreadable.*" + victim.name):
            train(cfg, resume=True, progress=False)
    finally:
        victim.write_bytes(original)


def test_resume_refuses_an_edited_splits_csv(run_copy):
    run, _, cfg = run_copy
    rows = _rows(run)
    test_row = next(r for r in rows if r["split"] == "test")
    test_row["split"] = "train"  # a test patient moved into training
    with (run / "splits.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(RunError, match="splits.csv was changed"):
        train(cfg, resume=True, progress=False)


def test_a_second_trainer_on_one_run_directory_is_refused(run_copy):
    run, _, cfg = run_copy
    holder = textwrap.dedent(f"""
        import sys, time
        from lungxray.io import run_lock
        with run_lock({str(run)!r}):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={"PYTHONPATH": str(Path(run_module.__file__).parents[2])})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match="another lungxray process is writing"):
            train(cfg, resume=True, progress=False)
    finally:
        proc.communicate("", timeout=30)
    with run_lock(run):  # released with its holder
        pass


def test_a_crash_mid_checkpoint_keeps_the_previous_one_loadable(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleNamespace(
        model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0),
        ema=None, generator=torch.Generator(), device=torch.device("cpu"), frozen=False,
    )  # fmt: skip
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(trainer, TrainState(), path)
    before = path.read_bytes()

    def dies_halfway(obj, f, *a, **kw):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(trainer, TrainState(), path)
    assert path.read_bytes() == before
    torch.load(path, map_location="cpu", weights_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left behind


def test_more_than_one_percent_unreadable_refuses_to_train(tmp_path, cache_dir):
    from lungxray.errors import DataError
    from lungxray.training import prepare_data

    data = _folder(tmp_path / "data")
    for i in range(8):
        (data / "NORMAL" / f"broken{i}.jpeg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cfg = make_cfg(tmp_path / "run", cache_dir, data=data, **{"data.max_images": None})
    with pytest.raises(DataError, match=r"images of the \w+ split cannot be read \(more than 1%\)"):
        prepare_data(cfg, progress=False)

"""torchrun (gloo, CPU, 2 processes) vs one process with the same global batch and seed.

Tolerance: a BatchNorm-free, dropout-free MLP without augmentation (those draw per rank), so the only
difference is the float order of DDP's gradient all-reduce: weights within 1e-5 absolute, validation
AUC within 1e-6.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_training import RUN_FILES, assert_same_weights, weights_of

from conftest import CHEST_XRAY, REPO, require_data  # noqa: E402
from lungxray.training.distributed import Dist, strip_nproc

SETS = {
    "model.name": "mlp",
    "model.kwargs": "{hidden: [32, 16], dropout: 0.0}",
    "data.size": "32",
    "data.max_images": "80",
    "train.epochs": "2",
    "train.batch_size": "16",
    "train.threads": "1",
    **{f"augment.{k}": "0" for k in ("rotate", "shift", "zoom", "shear", "brightness", "contrast", "gamma")},
}


def _train(out: Path, cache: Path, nproc: int) -> None:
    args = ["train", str(CHEST_XRAY), "--out", str(out), "--quiet", "--set", f"data.cache_dir={cache}"]
    for k, v in SETS.items():
        args += ["--set", f"{k}={v}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "lungxray.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, timeout=600, capture_output=True)


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_batch_shards_cover_the_global_batch_and_scale_to_its_mean():
    rows = np.arange(7)
    shards = [Dist(r, 3).batch_rows(rows) for r in range(3)]
    assert sorted(np.concatenate([s for s, _ in shards]).tolist()) == list(range(7))
    # DDP averages the ranks' gradients: each row then weighs scale / (world * n_local) = 1 / n_global
    assert all(scale / (3 * len(s)) == pytest.approx(1 / 7) for s, scale in shards)
    local, scale = Dist(2, 3).batch_rows(np.arange(2))  # no row left for rank 2: one row, weight 0
    assert local.tolist() == [0] and scale == 0.0
    assert strip_nproc(["train", "d", "--nproc", "2", "--nproc=3", "--out", "x"]) == ["train", "d", "--out", "x"]


def test_torchrun_two_processes_match_one_process(tmp_path):
    require_data()
    cache = tmp_path / "cache"
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, cache, 1)  # also fills the cache the two ranks then share
    _train(two, cache, 2)
    for f in RUN_FILES:
        assert (two / f).is_file(), f
    h1, h2 = _history(one), _history(two)
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2, strict=True):
        assert float(a["val_auc"]) == pytest.approx(float(b["val_auc"]), abs=1e-6)
    assert_same_weights(weights_of(one), weights_of(two), atol=1e-5)
    with (two / "splits.csv").open() as fh:
        n_train = sum(r["split"] == "train" for r in csv.DictReader(fh))
    seen = [float(h["images_per_s"]) * float(h["seconds"]) for h in (h1[0], h2[0])]
    assert seen[0] == pytest.approx(n_train, abs=1) and seen[1] == pytest.approx(n_train / 2, abs=3)  # sharded
    assert (one / "splits.csv").read_bytes() == (two / "splits.csv").read_bytes()


def test_a_distributed_run_resumes_where_it_stopped(tmp_path):
    """Two ranks train 1 epoch and stop; resumed under torchrun for a 2nd epoch, the run equals an
    uninterrupted 2-epoch two-rank run (constant schedule: the LR does not depend on the epoch count)."""
    require_data()
    import yaml

    cache = tmp_path / "cache"
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    SETS["train.schedule"] = "constant"
    try:
        _train(whole, cache, 2)
        SETS["train.epochs"] = "1"
        _train(cut, cache, 2)
    finally:
        SETS["train.epochs"] = "2"
        del SETS["train.schedule"]
    # the 1-epoch run becomes an interrupted 2-epoch run: its recipe asks for 2, and it is not finished
    cfg = yaml.safe_load((cut / "config.yaml").read_text())
    cfg["train"]["epochs"] = 2
    (cut / "config.yaml").write_text(yaml.safe_dump(cfg))
    (cut / "model.json").unlink()
    first_epoch = _history(cut)[0]  # its timing columns identify this very epoch
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, "-m", "lungxray.cli", "train", str(CHEST_XRAY), "--out", str(cut), "--resume", "--quiet"],
        env=env, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for f in RUN_FILES:
        assert (cut / f).is_file(), f
    h_whole, h_cut = _history(whole), _history(cut)
    assert len(h_cut) == 2 and h_cut[0] == first_epoch  # continued: epoch 1 was not trained again
    for a, b in zip(h_whole, h_cut, strict=True):
        assert float(a["val_auc"]) == pytest.approx(float(b["val_auc"]), abs=1e-6)
    assert_same_weights(weights_of(whole), weights_of(cut), atol=1e-5)

"""Training looks for copies across its splits: a test film that is a train film saved again is leakage."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from rich.console import Console

from conftest import CHEST_XRAY, DATA_ROOT, require_data
from lungxray.config import load_config
from lungxray.training import train

KERMANY = "test/NORMAL/NORMAL2-IM-0287-0001.jpeg"  # covid19/test/Normal/0101.jpeg is this film re-contrasted
COVID19_COPY = "covid19/test/Normal/0101.jpeg"


def _folder(root: Path, n: int = 10) -> Path:
    """train/ and test/ of distinct real films; the Kermany film in train/, covid19's copy of it in test/."""
    require_data(DATA_ROOT / "covid19")
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            files = sorted((CHEST_XRAY / "train" / cls).glob("*.jpeg"))
            for f in files[(0 if split == "train" else n) :][:n]:
                shutil.copy(f, root / split / cls / f"{split}_{f.name}")
    shutil.copy(CHEST_XRAY / KERMANY, root / "train" / "NORMAL" / "film.jpeg")
    shutil.copy(DATA_ROOT / COVID19_COPY, root / "test" / "NORMAL" / "same_film_elsewhere.jpeg")
    return root


def test_training_warns_records_and_reports_the_leak(tmp_path, cache_dir, one_thread):
    data = _folder(tmp_path / "data")
    cfg = load_config(None, {"name": "leaky", "out": str(tmp_path / "run"), "data.path": str(data),
                             "data.size": 64, "data.val_fraction": 0.2, "data.cache_dir": str(cache_dir),
                             "train.epochs": 1, "train.batch_size": 16, "eval.bootstrap": 0})  # fmt: skip
    out = io.StringIO()
    train(cfg, progress=False, console=Console(file=out, width=400))
    assert "LEAKAGE: 1 image(s) of a later split are copies" in out.getvalue()
    assert "same_film_elsewhere.jpeg" in out.getvalue()
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["training"]["copies_across_splits"] == 1

    from lungxray.evaluation.evaluate import evaluate_run

    page = evaluate_run(tmp_path / "run", n_boot=0, progress=False, cache_dir=cache_dir).report_path.read_text()
    assert "1 image(s) of its validation or test split were copies of images of an earlier split" in page

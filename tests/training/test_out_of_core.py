"""Out-of-core data: with an unreadable file present, training and evaluation index the cache memmap
through row indices, one batch at a time; nothing reads (copies) the whole (N, S, S) array."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_training import make_cfg

from conftest import CHEST_XRAY, require_data  # noqa: E402
from lungxray.data import rows as rows_mod
from lungxray.data.rows import RowView, read_rows, take_rows
from lungxray.training import Trainer, prepare_data


def test_row_view_reads_only_the_rows_asked_in_the_order_asked(tmp_path):
    base = np.memmap(tmp_path / "a.u8", np.uint8, "w+", shape=(10, 2, 2))
    base[:] = np.arange(10, dtype=np.uint8)[:, None, None]
    v = take_rows(base, np.array([1, 3, 4, 7, 9]))
    assert len(v) == 5 and v.shape == (5, 2, 2)
    assert v[2][0, 0] == 4 and [int(r[0, 0]) for r in v[np.array([4, 0, 2])]] == [9, 1, 4]
    assert [int(r[0, 0]) for r in v[1:3]] == [3, 4] and v[1:3].flags.writeable
    vv = take_rows(v, np.array([4, 0]))  # composes: indexes the base directly
    assert vv.base is base and list(vv.rows) == [9, 1]
    assert np.array_equal(np.asarray(vv), base[[9, 1]])
    assert np.array_equal(read_rows(base, np.array([5, 2, 8])), base[[5, 2, 8]])


@pytest.fixture()
def folder_with_broken_file(tmp_path) -> Path:
    root = tmp_path / "site"
    for kind in ("NORMAL", "PNEUMONIA"):
        (root / "train" / kind).mkdir(parents=True)
        for f in sorted((require_data() / "train" / kind).glob("*.jpeg"))[:30]:
            shutil.copy(f, root / "train" / kind / f.name)
    (root / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_training_and_evaluation_with_an_unreadable_file_index_the_memmap(
    folder_with_broken_file, tmp_path, monkeypatch
):
    from lungxray.evaluation.evaluate import evaluate_run

    assert CHEST_XRAY.exists()
    cfg = make_cfg(tmp_path / "runs" / "ooc", tmp_path / "cache", data=folder_with_broken_file,
                   **{"data.max_images": None, "data.test_fraction": 0.2})  # fmt: skip
    data = prepare_data(cfg, progress=False)
    assert len(data.unreadable) == 1
    assert isinstance(data.images, RowView) and isinstance(data.images.base, np.memmap)
    assert len(data.images) == len(data.manifest) == len(data.images.base) - 1

    largest: list[int] = []
    real = rows_mod.read_rows

    def spy(base, rows):
        largest.append(len(rows))
        return real(base, rows)

    monkeypatch.setattr(rows_mod, "read_rows", spy)
    trainer = Trainer(cfg, data, progress=False)
    trainer.fit()
    assert (cfg.run_dir / "model.safetensors").is_file()
    assert largest and max(largest) <= max(cfg.train.batch_size, len(trainer.val_idx), 128)
    assert max(largest) < len(data.images)  # never the whole array

    largest.clear()
    result = evaluate_run(cfg.run_dir, data=folder_with_broken_file, n_boot=20, progress=False,
                          cache_dir=tmp_path / "cache")  # fmt: skip
    assert [Path(u["path"]).name for u in result.metrics["unreadable"]] == ["broken.jpeg"]
    assert largest and max(largest) <= 128  # evaluated per batch of predict_batches

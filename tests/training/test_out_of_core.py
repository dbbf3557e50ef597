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
from lungxray.data.rows import FileRows, RowView, read_rows, take_rows
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


def test_file_rows_index_like_the_memmap(tmp_path):
    base = np.memmap(tmp_path / "a.u8", np.uint8, "w+", shape=(10, 2, 3))
    base[:] = np.arange(60, dtype=np.uint8).reshape(10, 2, 3)
    base.flush()
    f = FileRows.of(np.memmap(tmp_path / "a.u8", np.uint8, "r", shape=(10, 2, 3)))
    assert isinstance(f, FileRows) and f.shape == (10, 2, 3) and len(f) == 10 and f.ndim == 3
    idx = np.array([7, 2, 3, 4, 9, 2, -1])
    assert np.array_equal(f[idx], base[idx]) and np.array_equal(f[3], base[3]) and np.array_equal(f[-2], base[-2])
    assert np.array_equal(f[2:8:2], base[2:8:2]) and np.array_equal(f[np.arange(10) % 2 == 0], base[::2])
    assert np.array_equal(np.asarray(f), base) and f[idx].flags.writeable
    assert np.array_equal(take_rows(f, np.array([5, 1]))[np.array([1, 0])], base[[1, 5]])
    with pytest.raises(IndexError):
        f[np.array([10])]
    assert FileRows.of(base[2:]) is not None and not isinstance(FileRows.of(np.zeros((3, 2, 2))), FileRows)


def _rss_file_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_file_rows_reading_every_row_does_not_grow_resident_memory(tmp_path):
    path = tmp_path / "set.u8"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 48 * 2**20, dtype=np.uint8).tobytes())
    shape = (48 * 2**20 // 4096, 64, 64)  # a 48 MB cache set of 64 px rows
    rows = np.random.default_rng(1).permutation(shape[0])
    before = _rss_file_mb()
    f = FileRows(path, shape)
    total = sum(int(f[np.sort(rows[b : b + 64])][:, 0, 0].sum()) for b in range(0, len(rows), 64))
    grown_read = _rss_file_mb() - before
    mm = np.memmap(path, np.uint8, "r", shape=shape)  # the control: the same reads through a memory map
    assert total == sum(int(mm[np.sort(rows[b : b + 64])][:, 0, 0].sum()) for b in range(0, len(rows), 64))
    grown_mapped = _rss_file_mb() - before - grown_read
    assert grown_mapped > 40 and grown_read < 4, (grown_mapped, grown_read)


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
    assert isinstance(data.images, RowView) and isinstance(data.images.base, FileRows)  # read, never mapped
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

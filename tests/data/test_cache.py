"""The content-hashed image cache, on generated PNGs and real chest X-ray JPEGs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_ROOT  # noqa: E402
from lungxray.data.cache import cache_images, default_cache_dir
from lungxray.data.imageio import read_image
from lungxray.data.preprocess import to_model_input

CHEST = DATA_ROOT / "chest_xray"


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LUNGXRAY_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LUNGXRAY_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "lungxray"


# ---------------------------------------------------------------- cache_images


def _write_generated(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n PNGs of varied size and mode (L, RGB, 16-bit I;16)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(20, 120)), int(rng.integers(20, 120))
        if i % 3 == 0:
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif i % 3 == 1:
            im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        else:
            im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        p = folder / f"gen{i:02d}.png"
        im.save(p)
        out.append(p)
    return out


@pytest.fixture
def image_folder(tmp_path) -> list[Path]:
    """20 generated PNGs + 30 real chest X-ray JPEGs (copied, so tests may edit them)."""
    if not CHEST.is_dir():
        pytest.skip(f"real data not found at {CHEST}")
    folder = tmp_path / "images"
    folder.mkdir()
    paths = _write_generated(folder, 20)
    real = sorted((CHEST / "train" / "NORMAL").glob("*.jpeg"))[:15]
    real += sorted((CHEST / "train" / "PNEUMONIA").glob("*.jpeg"))[:15]
    for p in real:
        shutil.copy(p, folder / p.name)
        paths.append(folder / p.name)
    return paths


def test_build_then_reuse_everything(image_folder, tmp_path):
    cache = tmp_path / "cache"
    first = cache_images(image_folder, 48, cache_dir=cache, workers=2, progress=False)
    n = len(image_folder)
    assert first.images.shape == (n, 48, 48) and first.images.dtype == np.uint8
    assert first.ok.all() and first.errors == {}
    assert (first.built, first.reused, first.decoded) == (n, 0, n)
    assert first.images_per_s > 0
    for i in (0, 2, 25, n - 1):  # rows are exactly the shared preprocessing of the decoded file
        np.testing.assert_array_equal(first.images[i], to_model_input(read_image(image_folder[i]), 48))
    info = first.info[25]
    assert set(info) == {"width", "height", "mode", "format", "sha1", "phash"}
    assert (info["width"], info["height"], info["mode"], info["format"]) == (224, 224, "RGB", "JPEG")
    assert len(info["sha1"]) == 40 and len(info["phash"]) == 16
    assert first.info[2]["format"] == "PNG"

    second = cache_images(image_folder, 48, cache_dir=cache, workers=2, progress=False)
    assert (second.built, second.reused, second.decoded) == (0, n, 0)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    assert second.info == first.info
    assert str(second.store).startswith(str(cache))

    # another order of the same files: reused, rows follow the new order
    rev = cache_images(image_folder[::-1], 48, cache_dir=cache, progress=False)
    assert rev.built == 0
    np.testing.assert_array_equal(np.asarray(rev.images), np.asarray(first.images)[::-1])


def test_changed_file_is_decoded_again_and_only_it(image_folder, tmp_path):
    cache = tmp_path / "cache"
    first = np.array(cache_images(image_folder, 32, cache_dir=cache, workers=2, progress=False).images)
    Image.fromarray(np.full((60, 80), 200, np.uint8)).save(image_folder[3])  # same path, new content
    again = cache_images(image_folder, 32, cache_dir=cache, workers=2, progress=False)
    assert (again.built, again.reused) == (1, len(image_folder) - 1)
    assert (again.images[3] == 200).all()
    others = np.arange(len(image_folder)) != 3
    np.testing.assert_array_equal(again.images[others], first[others])
    assert again.info[3]["width"] == 80 and again.info[3]["mode"] == "L"


def test_bad_files_are_reported_not_fatal_and_retried(image_folder, tmp_path):
    folder = image_folder[0].parent
    jpeg = image_folder[25].read_bytes()
    truncated = folder / "truncated.jpeg"
    truncated.write_bytes(jpeg[: len(jpeg) // 3])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    missing = folder / "missing.png"
    paths = [*image_folder[:5], truncated, empty, missing, *image_folder[25:28]]
    cache = tmp_path / "cache"

    out = cache_images(paths, 32, cache_dir=cache, workers=2, progress=False)
    bad = {str(truncated), str(empty), str(missing)}
    assert set(out.errors) == bad
    assert "empty" in out.errors[str(empty)] and "not found" in out.errors[str(missing)]
    assert out.ok.tolist() == [True] * 5 + [False] * 3 + [True] * 3
    assert not out.images[5:8].any() and all(out.images[i].any() for i in (0, 8, 9, 10))
    assert [x is None for x in out.info] == [not v for v in out.ok]
    assert out.built + out.reused + len(out.errors) == len(paths)

    # errors are not cached: still reported next time; once fixed, the file is decoded
    again = cache_images(paths, 32, cache_dir=cache, workers=2, progress=False)
    assert set(again.errors) == bad and again.built == 0
    truncated.write_bytes(image_folder[40].read_bytes())
    fixed = cache_images(paths, 32, cache_dir=cache, workers=2, progress=False)
    assert set(fixed.errors) == bad - {str(truncated)}
    assert (fixed.built, fixed.reused) == (1, 8) and fixed.ok[5]
    np.testing.assert_array_equal(fixed.images[5], to_model_input(read_image(image_folder[40]), 32))


def test_identical_contents_decoded_once_and_modes_kept_apart(image_folder, tmp_path):
    folder = image_folder[0].parent
    copy = folder / "copy_of_real.jpeg"
    shutil.copy(image_folder[30], copy)
    paths = [image_folder[30], copy, image_folder[0]]
    cache = tmp_path / "cache"
    out = cache_images(paths, 32, cache_dir=cache, workers=1, progress=False)
    assert out.decoded == 2 and out.built == 3
    np.testing.assert_array_equal(out.images[0], out.images[1])
    assert out.info[0]["sha1"] == out.info[1]["sha1"] != out.info[2]["sha1"]

    padded = cache_images(paths, 32, resize="pad", cache_dir=cache, workers=1, progress=False)
    assert padded.built == 3  # another preprocessing is another store
    np.testing.assert_array_equal(padded.images[2], to_model_input(read_image(paths[2]), 32, "pad"))


def test_damaged_shard_or_leftover_temp_file_is_ignored(image_folder, tmp_path):
    cache = tmp_path / "cache"
    paths = image_folder[:10]
    first = np.array(cache_images(paths, 32, cache_dir=cache, workers=1, progress=False).images)
    shards = list(cache.rglob("shards/*.u8"))
    assert len(shards) == 1
    with open(shards[0], "r+b") as f:  # what a disk-full or a foreign writer could leave
        f.truncate(100)
    (shards[0].parent / ".half-written.u8.123.tmp").write_bytes(b"\0" * 50)
    for s in cache.rglob("sets/*.u8"):
        s.unlink()
    again = cache_images(paths, 32, cache_dir=cache, workers=1, progress=False)
    assert (again.built, again.reused) == (10, 0)
    np.testing.assert_array_equal(np.asarray(again.images), first)


def test_empty_list(tmp_path):
    out = cache_images([], 32, cache_dir=tmp_path, progress=False)
    assert out.images.shape == (0, 32, 32) and out.ok.shape == (0,) and out.built == 0


# ---------------------------------------------------------------- a decoding worker that dies


def test_dead_worker_is_retried_in_a_fresh_pool(tmp_path, monkeypatch):
    """A worker killed once (os._exit mid-decode) loses nothing: its chunk is decoded by a new pool."""
    import os

    from lungxray.data import imageio

    folder = tmp_path / "img"
    folder.mkdir()
    paths = _write_generated(folder, 12)
    victim, marker = str(paths[5]), tmp_path / "died-once"
    real = imageio.read_image_with_info

    def dies_once(path, *a, **kw):
        if str(path) == victim and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies as if killed by the OOM killer
        return real(path, *a, **kw)

    monkeypatch.setattr(imageio, "read_image_with_info", dies_once)  # workers are forked: inherited
    monkeypatch.setattr("lungxray.data.cache._CHUNK", 2)
    c = cache_images(paths, 32, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert marker.exists(), "the worker never died: the test did not test anything"
    assert c.ok.all() and c.errors == {} and c.built == len(paths)


def test_a_file_that_always_kills_its_worker_fails_alone(tmp_path, monkeypatch):
    import os

    from lungxray.data import imageio

    folder = tmp_path / "img"
    folder.mkdir()
    paths = _write_generated(folder, 8)
    victim, real = str(paths[3]), imageio.read_image_with_info

    def always_dies(path, *a, **kw):
        if str(path) == victim:
            os._exit(1)
        return real(path, *a, **kw)

    monkeypatch.setattr(imageio, "read_image_with_info", always_dies)
    monkeypatch.setattr("lungxray.data.cache._CHUNK", 4)
    c = cache_images(paths, 32, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert list(c.errors) == [victim] and "died" in c.errors[victim]
    assert int(c.ok.sum()) == len(paths) - 1


# ---------------------------------------------------------------- the compact index


def test_shard_index_finds_keys_in_bulk_and_the_first_added_wins():
    from lungxray.data.cache_index import ShardIndex, as_keys

    a, b, c, d = (f"{i:040x}" for i in (3, 1, 2, 9))
    index = ShardIndex()
    index.add_shards([("s0.u8", as_keys([a, b])), ("s1.u8", as_keys([c, a]))])  # a twice: s0 row 0 wins
    pos = index.find(as_keys([a, None, d, c, b]))
    assert (pos[[1, 2]] == -1).all() and (pos[[0, 3, 4]] >= 0).all()
    got = [(index.names[index.shard[p]], int(index.row[p])) for p in pos[[0, 3, 4]]]
    assert got == [("s0.u8", 0), ("s1.u8", 0), ("s0.u8", 1)]
    index.add_shards([("s2.u8", as_keys([d, b]))])  # a later shard adds d, keeps b where it was
    pos = index.find(as_keys([d, b]))
    assert [(index.names[index.shard[p]], int(index.row[p])) for p in pos] == [("s2.u8", 0), ("s0.u8", 1)]
    assert len(index) == 4 and (ShardIndex().find(as_keys([a])) == -1).all()


def test_info_is_read_from_the_shard_only_when_asked(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    paths = _write_generated(folder, 6)
    out = cache_images([*paths, folder / "missing.png"], 32, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert out.info._cols == {}, "no shard JSON read before info is used"
    assert out.sha1s()[6] == "" and out.sha1s()[:6] == tuple(i["sha1"] for i in out.info[:6])
    assert out.info[-1] is None and len(out.info) == 7
    first = out.info[1]
    assert first == {"width": first["width"], "height": first["height"], "mode": "L", "format": "PNG",
                     "phash": first["phash"], "sha1": out.sha1s()[1]}  # fmt: skip
    assert (first["width"], first["height"]) == Image.open(paths[1]).size
    with pytest.raises(IndexError):
        out.info[7]

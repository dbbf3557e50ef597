"""audit() on a small real-image data set with planted duplicates, a corrupt file and a shared patient."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from conftest import DATA_ROOT  # noqa: E402
from lungxray.data.audit import audit, near_duplicate_pairs, render_audit
from lungxray.data.readers import from_folders

CHEST = DATA_ROOT / "chest_xray"


@pytest.mark.parametrize("threshold", [0, 4, 12])
def test_near_duplicate_pairs_matches_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (40, 3)).astype(np.uint64)
    # 40 random hashes + 40 copies with up to 3 bits flipped + 2 exact repeats; blocks smaller than N
    hashes = np.concatenate([base, base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2], base[:2]])
    got = near_duplicate_pairs(hashes, threshold, block=7)
    expected = [
        (i, j, d)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if (d := bin(int(hashes[i]) ^ int(hashes[j])).count("1")) <= threshold
    ]
    assert [tuple(map(int, r)) for r in got] == expected
    assert len(expected) >= 2


def _copy_as(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


@pytest.fixture
def dataset(tmp_path) -> dict[str, Path]:
    """train/test x NORMAL/PNEUMONIA of real X-rays, renamed so patients are distinct, plus planted problems."""
    if not CHEST.is_dir():
        pytest.skip(f"real data not found at {CHEST}")
    root = tmp_path / "data"
    normal = sorted((CHEST / "train" / "NORMAL").glob("*.jpeg"))[:12]
    pneu = sorted((CHEST / "train" / "PNEUMONIA").glob("*.jpeg"))[:12]
    for i, p in enumerate(normal):
        _copy_as(p, root / ("train" if i < 8 else "test") / "NORMAL" / f"n{i:02d}.jpeg")
    for i, p in enumerate(pneu):
        _copy_as(p, root / ("train" if i < 8 else "test") / "PNEUMONIA" / f"p{i:02d}.jpeg")
    planted = {
        "exact_a": root / "train/NORMAL/n00.jpeg",
        "exact_b": _copy_as(root / "train/NORMAL/n00.jpeg", root / "test/NORMAL/copy.jpeg"),
        "near_a": root / "train/PNEUMONIA/p01.jpeg",
        "near_b": root / "test/PNEUMONIA/brighter.png",  # same X-ray, brightness +2, re-encoded
        # a real copy: covid19's test/Normal/0101.jpeg is this Kermany film at 640 px with another contrast
        # curve, phash 10 bits and Pearson r 0.95 apart (data.copies)
        "gamma_a": _copy_as(CHEST / "test/NORMAL/NORMAL2-IM-0287-0001.jpeg", root / "train/NORMAL/kermany.jpeg"),
        "gamma_b": _copy_as(CHEST.parent / "covid19/test/Normal/0101.jpeg", root / "test/NORMAL/covid19.jpeg"),
        "within_a": root / "train/NORMAL/n02.jpeg",
        "within_b": root / "train/NORMAL/smaller.jpeg",  # same X-ray, resized 224 -> 200
        # a real copy within one split: covid19 holds this film twice, the second with another contrast
        # curve, which phash and Pearson r miss and the rank test finds
        "recontrast_a": _copy_as(CHEST.parent / "covid19/test/Covid/0108.jpeg", root / "test/PNEUMONIA/0108.jpeg"),
        "recontrast_b": _copy_as(
            CHEST.parent / "covid19/test/Covid/auntminnie-b-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg",
            root / "test/PNEUMONIA/vietnam.jpeg",
        ),
        "corrupt": root / "test/NORMAL/broken.jpeg",
        "patient_train": _copy_as(
            CHEST / "test/PNEUMONIA" / _first("test/PNEUMONIA"),
            root / "train/PNEUMONIA/person9001_bacteria_1.jpeg",
        ),
        "patient_test": _copy_as(
            CHEST / "test/PNEUMONIA" / _first("test/PNEUMONIA", 1),
            root / "test/PNEUMONIA/person9001_virus_2.jpeg",
        ),
    }
    gray = np.asarray(Image.open(planted["near_a"]).convert("L"), dtype=np.int16)
    Image.fromarray(np.clip(gray + 2, 0, 255).astype(np.uint8)).save(planted["near_b"])
    Image.open(planted["within_a"]).resize((200, 200), Image.Resampling.BICUBIC).save(
        planted["within_b"], quality=90
    )
    data = planted["exact_a"].read_bytes()
    planted["corrupt"].write_bytes(data[: len(data) // 4])
    planted["root"] = root
    return planted


def _first(sub: str, k: int = 0) -> str:
    return sorted(p.name for p in (CHEST / sub).glob("*.jpeg"))[k]


def test_audit_finds_each_planted_problem(dataset, tmp_path):
    m = from_folders(dataset["root"])
    s = {k: str(v) for k, v in dataset.items()}
    report = audit(m, cache_dir=tmp_path / "cache", size=64, workers=2, progress=False)

    assert report["n_images"] == len(m) == 34
    assert report["counts"] == {
        "train": {"NORMAL": 10, "PNEUMONIA": 9},
        "test": {"NORMAL": 7, "PNEUMONIA": 8},
    }
    assert report["class_balance"]["all"] == {"NORMAL": 0.5, "PNEUMONIA": 0.5}
    assert report["duplicates_across_splits"] == [
        [s["exact_a"], s["exact_b"], "exact"],
        [s["gamma_a"], s["gamma_b"], "near"],  # found by ranks (data.copies), not by phash
        [s["near_a"], s["near_b"], "near"],
    ]
    assert report["duplicates_within_splits"] == [
        [s["recontrast_a"], s["recontrast_b"], "near"],  # found by ranks (data.copies), not by phash
        [s["within_a"], s["within_b"], "near"],
    ]
    assert report["unreadable"] == [{"path": s["corrupt"], "reason": report["unreadable"][0]["reason"]}]
    assert "trunc" in report["unreadable"][0]["reason"].lower()
    assert report["patients_across_splits"] == {"person9001": ["test", "train"]}
    assert report["sizes"]["width"] == {"min": 200, "median": 224.0, "max": 640}
    assert report["modes"] == {"RGB": 32, "L": 1}
    assert report["formats"] == {"JPEG": 32, "PNG": 1}
    assert report["cache"]["built"] == 33 and report["cache"]["reused"] == 0
    assert json.loads(json.dumps(report)) == report

    warm = audit(m, cache_dir=tmp_path / "cache", size=64, progress=False)
    assert warm["cache"]["built"] == 0 and warm["cache"]["reused"] == 33
    assert warm["duplicates_across_splits"] == report["duplicates_across_splits"]

    console = Console(file=io.StringIO(), width=160, record=True)
    render_audit(report, console)
    text = console.export_text()
    assert "LEAKAGE: 3 duplicate pairs across splits (1 exact, 2 near)" in text
    assert "LEAKAGE: 1 patients in more than one split" in text
    assert "test/NORMAL/copy.jpeg" in text and "person9001" in text and "broken.jpeg" in text


def test_clean_data_set_reports_nothing(dataset, tmp_path):
    root = dataset["root"]
    for key in ("exact_b", "near_b", "gamma_b", "within_b", "recontrast_b", "corrupt", "patient_test"):
        dataset[key].unlink()
    report = audit(from_folders(root), cache_dir=tmp_path / "cache", size=32, progress=False)
    for key in ("duplicates_across_splits", "duplicates_within_splits", "unreadable"):
        assert report[key] == []
    assert report["patients_across_splits"] == {}
    console = Console(file=io.StringIO(), width=120, record=True)
    render_audit(report, console)
    text = console.export_text()
    assert "No duplicate images across splits" in text and "LEAKAGE" not in text

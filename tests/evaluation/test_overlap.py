"""An external set that holds the run's own films under other names is caught by content, not by path."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from conftest import CHEST_XRAY
from lungxray.evaluation.evaluate import evaluate_run


def _run_files(run: Path) -> dict[str, list[tuple[str, str]]]:
    """{split: [(path, label)]} of the run's splits.csv."""
    out: dict[str, list[tuple[str, str]]] = {}
    with (run / "splits.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["split"], []).append((r["path"], r["label"]))
    return out


def _resaved(src: str, dst: Path) -> None:
    """The same radiograph as another hospital's export would give it: 0.8x, brighter, PNG."""
    img = Image.open(src).convert("L")
    img = img.resize((int(img.width * 0.8), int(img.height * 0.8)), Image.Resampling.BILINEAR)
    ImageEnhance.Brightness(img).enhance(1.05).save(dst)


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the session's tiny run (evaluation writes into the run directory)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "tiny", ignore=shutil.ignore_patterns("eval", "checkpoint.pt")))


def test_external_set_with_the_runs_own_films_is_flagged(run, cache_dir, tmp_path):
    tiny_run = run
    run_files = _run_files(tiny_run)
    listed = {str(Path(p).resolve()) for rows in run_files.values() for p, _ in rows}
    ext = tmp_path / "site"
    for c in ("NORMAL", "PNEUMONIA"):
        (ext / c).mkdir(parents=True)
    trained = [r for r in run_files["train"] if r[1] == "NORMAL"][:3] + run_files["val"][:1]
    for k, (p, label) in enumerate(trained):  # re-encoded copies of training films, new names
        _resaved(p, ext / label / f"renamed_{k}.png")
    tested = run_files["test"][:2]
    for k, (p, label) in enumerate(tested):  # byte-identical copies of its test films, new names
        (ext / label / f"copy_{k}.jpeg").write_bytes(Path(p).read_bytes())
    unseen = [f for f in sorted((CHEST_XRAY / "train" / "PNEUMONIA").glob("*.jpeg")) if str(f.resolve()) not in listed]
    for f in unseen[:6] + [f for f in sorted((CHEST_XRAY / "train" / "NORMAL").glob("*.jpeg"))
                           if str(f.resolve()) not in listed][:4]:  # fmt: skip
        (ext / f.parent.name / f.name).write_bytes(f.read_bytes())

    result = evaluate_run(tiny_run, data=ext, n_boot=0, progress=False, cache_dir=cache_dir)
    m = result.metrics
    assert m["n"] == 16
    assert m["overlap_with_training"] == 4 and m["overlap_with_test"] == 2
    kinds = {(Path(e[0]).name, e[2], e[3]) for e in m["overlap_examples"]}
    assert {("renamed_0.png", "train", "near"), ("renamed_3.png", "val", "near")} <= kinds
    assert {("copy_0.jpeg", "test", "exact"), ("copy_1.jpeg", "test", "exact")} <= kinds
    assert {Path(e[1]).resolve() for e in m["overlap_examples"]} == {Path(p).resolve() for p, _ in trained + tested}
    saved = json.loads((result.out_dir / "metrics.json").read_text())
    assert saved["overlap_with_training"] == 4 and saved["overlap_with_test"] == 2
    assert m["overlap_by"] == "content"
    page = result.report_path.read_text()
    assert "4 of the evaluated images were used to train or validate this model" in page
    assert "2 of the evaluated images are copies of this model's own test split" in page


def test_too_many_pairs_fall_back_to_paths(run, cache_dir, tmp_path, monkeypatch):
    """Past MAX_PAIRS (evaluated x run films) only the same file counts, and metrics.json says so."""
    import lungxray.evaluation.overlap as overlap

    monkeypatch.setattr(overlap, "MAX_PAIRS", 10)
    own = _run_files(run)["train"][0]
    ext = tmp_path / "site" / own[1]
    ext.mkdir(parents=True)
    (ext / "same_file.jpeg").symlink_to(own[0])  # resolves to the run's own path
    (ext / "copy.jpeg").write_bytes(Path(own[0]).read_bytes())  # a copy under another name: not looked for
    with pytest.warns(Warning):  # one class: AUC undefined
        m = evaluate_run(run, data=ext.parent, n_boot=0, progress=False, cache_dir=cache_dir).metrics
    assert m["overlap_by"] == "path" and m["overlap_with_training"] == 1
    assert [Path(e[0]).name for e in m["overlap_examples"]] == ["same_file.jpeg"]


def test_the_runs_own_split_is_not_compared_with_itself(run, cache_dir):
    """Without --data the evaluated films ARE the run's test split: no overlap is reported."""
    m = evaluate_run(run, n_boot=0, progress=False, cache_dir=cache_dir).metrics
    assert m["overlap_with_training"] == 0 and m["overlap_with_test"] == 0 and m["overlap_examples"] == []

"""``lungxray predict`` under torchrun: each rank predicts its shard, rank 0 merges in input order; the
merged output equals one process's (same rows, same order, floats within 1e-5), and --resume works
per rank."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from conftest import REPO, make_random_run, noise_pngs  # noqa: E402
from lungxray.predict import Predictor
from lungxray.predict_shard import _seed_from_merged, merge_csv_parts, part_path, shard
from lungxray.predict_stream import partial_path, predict_to_csv, read_predictions_csv

FLOATS = ("score", "threshold", "ood_score", "p_NORMAL", "p_PNEUMONIA")


def _pngs(folder: Path, n: int, broken: int | None = None) -> list[Path]:
    return noise_pngs(folder, n, broken=broken, seed=1, height=30, vary=7, width=34)


def _assert_same_rows(a: Path, b: Path) -> None:
    ra, rb = read_predictions_csv(a), read_predictions_csv(b)
    assert [r["path"] for r in ra] == [r["path"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if k in FLOATS and x[k] and y[k]:
                assert float(x[k]) == pytest.approx(float(y[k]), abs=1e-5), (x["path"], k)
            else:
                assert x[k] == y[k], (x["path"], k)


def _torchrun(run: Path, inputs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lungxray.cli", "predict", str(run), str(inputs), "--out", str(out), "--workers", "0",
           "--batch-size", "4", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)


def test_shards_cover_the_inputs_once_and_parts_are_named_per_rank(tmp_path):
    paths = [f"f{i}" for i in range(7)]
    parts = [shard(paths, r, 3) for r in range(3)]
    assert parts == [["f0", "f3", "f6"], ["f1", "f4"], ["f2", "f5"]]
    assert part_path(tmp_path / "preds.csv", 1, 3) == tmp_path / "preds.rank1of3.csv"


def test_merge_interleaves_parts_in_input_order_even_when_a_part_is_out_of_order(tmp_path):
    paths = [f"img{i}.png" for i in range(5)]

    def part(name: str, rows: list[str]) -> Path:
        p = tmp_path / name
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["path", "score", "error"])
            w.writerows([r, f"0.{r[3]}", "bad" if r == "img3.png" else ""] for r in rows)
        return p

    # rank 1's part was resumed after its input list changed: its rows are not in shard order
    parts = [part("p0.csv", ["img0.png", "img2.png", "img4.png"]), part("p1.csv", ["img3.png", "img1.png"])]
    failed = merge_csv_parts(paths, parts, tmp_path / "merged.csv")
    rows = read_predictions_csv(tmp_path / "merged.csv")
    assert [r["path"] for r in rows] == paths and [r["score"] for r in rows] == [f"0.{i}" for i in range(5)]
    assert failed == 1
    with pytest.raises(RuntimeError, match="img1.png"):  # a row missing from its part is an error
        merge_csv_parts(paths, [parts[0], part("p2.csv", ["img3.png"])], tmp_path / "bad.csv")


def test_resume_after_a_merge_seeds_each_rank_with_its_rows(tmp_path):
    predictor = Predictor.load(make_random_run(tmp_path / "run", size=32))
    paths = _pngs(tmp_path / "in", 9)
    full = tmp_path / "preds.csv"
    predict_to_csv(predictor, paths, full, batch_size=4, workers=0)
    mine = shard(paths, 1, 2)
    part = part_path(full, 1, 2)
    _seed_from_merged(full, part, mine)
    assert [r["path"] for r in read_predictions_csv(partial_path(part))] == [str(p) for p in mine]
    stats = predict_to_csv(predictor, mine, part, resume=True, batch_size=4, workers=0)
    assert stats.skipped == len(mine) and stats.done == 0


@pytest.fixture
def one_process(tmp_path) -> tuple[Path, Path, list[Path], Path]:
    """A random-weight run, 21 PNGs (one broken) and their one-process predictions CSV."""
    run = make_random_run(tmp_path / "run", size=32)
    inputs = tmp_path / "in"
    paths = _pngs(inputs, 21, broken=6)
    one = tmp_path / "one.csv"
    predict_to_csv(Predictor.load(run), paths, one, batch_size=4, workers=0)
    return run, inputs, paths, one


def test_torchrun_two_ranks_merge_to_the_one_process_output(one_process, tmp_path):
    run, inputs, paths, one = one_process
    two = tmp_path / "two.csv"
    res = _torchrun(run, inputs, two)
    assert res.returncode != 0, "a file failed: exit code 1 (from rank 0)"
    assert "21 inputs predicted by 2 ranks, 1 failed" in res.stdout, res.stdout + res.stderr
    _assert_same_rows(two, one)
    assert not list(tmp_path.glob("two.rank*")), "the rank parts are removed after the merge"


@pytest.mark.slow
def test_torchrun_resume_per_rank_and_json_output(one_process, tmp_path):
    run, inputs, paths, one = one_process
    two = tmp_path / "two.csv"
    # an interrupted sharded run: rank 0 had written 4 rows, rank 1 nothing; --resume finishes both
    rank0 = [r for r in read_predictions_csv(one) if r["path"] in {str(p) for p in shard(paths, 0, 2)}][:4]
    with open(partial_path(part_path(two, 0, 2)), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rank0[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({**r, "warnings": "resumed"} for r in rank0)  # marked: kept, not predicted again
    res = _torchrun(run, inputs, two, "--resume")
    assert "21 inputs predicted by 2 ranks" in res.stdout, res.stdout + res.stderr
    merged = read_predictions_csv(two)
    assert [r["path"] for r in merged] == [str(p) for p in paths]
    assert [r["path"] for r in merged if r["warnings"] == "resumed"] == [r["path"] for r in rank0]

    # JSON output: the same predictions, gathered in input order
    _torchrun(run, inputs, tmp_path / "two.json")
    doc = json.loads((tmp_path / "two.json").read_text())
    assert [p["path"] for p in doc["predictions"]] == [str(p) for p in paths]
    scores = {r["path"]: r["score"] for r in read_predictions_csv(one)}
    for p in doc["predictions"]:
        if p["score"] is not None:
            assert p["score"] == pytest.approx(float(scores[p["path"]]), abs=1e-5)


def test_streamed_csv_ends_with_the_set_level_shift_line(tiny_run, tmp_path, capsys):
    from conftest import xray_files
    from lungxray.cli import main
    from lungxray.predict_output import render_set_summary, rows_of_csv

    files = [str(p) for p in xray_files(12, "PNEUMONIA") + xray_files(12, "NORMAL")]
    out = tmp_path / "preds.csv"
    main(["predict", str(tiny_run), *files, "--out", str(out), "--workers", "0"])
    text = " ".join(capsys.readouterr().out.split())
    assert "set-level shift test (KS statistic" in text
    # the summary streams the CSV: the same line from a list of the rows as from the file
    rows = list(rows_of_csv(out))
    assert len(rows) == 24 and all(r.error is None and r.score is not None for r in rows)
    buf = io.StringIO()
    render_set_summary(Predictor.load(tiny_run), rows, Console(file=buf, width=300))
    line = " ".join(buf.getvalue().split())
    assert line.startswith("set-level shift test") and line in text

"""Streamed batch prediction: rows appended as computed, --resume predicts only the rest and ends with
the CSV an uninterrupted run writes, decoding in worker processes, memory bounded by batch + prefetch."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from conftest import make_random_run, noise_pngs  # noqa: E402
from lungxray.cli import main
from lungxray.predict import Predictor, Record
from lungxray.predict_stream import TABLE_MAX, partial_path, predict_to_csv, read_predictions_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def _pngs(folder: Path, n: int, broken: int | None = None) -> list[Path]:
    return noise_pngs(folder, n, broken=broken)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.load(make_random_run(tmp_path_factory.mktemp("runs") / "rand", size=32))


def test_resume_predicts_only_the_rest_and_matches_an_uninterrupted_run(predictor, tmp_path):
    paths = _pngs(tmp_path / "in", 40, broken=7)
    full = tmp_path / "full.csv"
    stats = predict_to_csv(predictor, paths, full, batch_size=8, workers=0)
    assert stats.predicted == 39 and stats.failed == 1 and not partial_path(full).exists()
    rows = full.read_text().splitlines(keepends=True)
    assert len(rows) == 41  # header + one per file

    out = tmp_path / "resumed.csv"
    # an interrupted run: header, 15 rows and a torn 16th row in the .partial file
    partial_path(out).write_text("".join(rows[:16]) + rows[16][:10])
    seen: list[str] = []
    stats = predict_to_csv(predictor, paths, out, resume=True, batch_size=8, workers=0,
                           on_record=lambda r: seen.append(r.name))  # fmt: skip
    assert stats.skipped == 15 and len(seen) == 25 and seen[0] == str(paths[15])
    assert not partial_path(out).exists()
    _assert_same_csv(out, full)
    before = out.read_bytes()
    # resuming a complete output predicts nothing and keeps it
    stats = predict_to_csv(predictor, paths, out, resume=True, batch_size=8, workers=0)
    assert stats.skipped == 40 and stats.done == 0 and out.read_bytes() == before


def _assert_same_csv(a: Path, b: Path) -> None:
    """Identical rows; ``ood_score`` within 1e-5 relative: a batch of another size (the resumed run's
    batches start elsewhere) may change the last float32 digits of the Mahalanobis matrix product."""
    ra, rb = read_predictions_csv(a), read_predictions_csv(b)
    assert [r.keys() for r in ra] == [r.keys() for r in rb] and len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert {k: v for k, v in x.items() if k != "ood_score"} == {k: v for k, v in y.items() if k != "ood_score"}
        if x["ood_score"] or y["ood_score"]:
            assert float(x["ood_score"]) == pytest.approx(float(y["ood_score"]), rel=1e-5)


def test_worker_processes_give_the_same_rows(predictor, tmp_path):
    paths = _pngs(tmp_path / "in", 20, broken=3)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict_to_csv(predictor, paths, a, batch_size=6, workers=0)
    stats = predict_to_csv(predictor, paths, b, batch_size=6, workers=2, prefetch=2)
    assert a.read_bytes() == b.read_bytes() and stats.failed == 1
    assert read_predictions_csv(b)[3]["error"]


def test_memory_is_flat_held_records_never_exceed_batch_plus_prefetch(predictor, tmp_path):
    paths = _pngs(tmp_path / "in", 400)
    batch, prefetch = 8, 2
    live: list[int] = []
    seen = [0]

    def count(rec: Record) -> None:
        seen[0] += 1
        if seen[0] % 40 == 0:
            gc.collect()
            live.append(sum(type(o) is Record for o in gc.get_objects()))

    stats = predict_to_csv(predictor, paths, tmp_path / "p.csv", batch_size=batch, workers=1,
                           prefetch=prefetch, on_record=count)  # fmt: skip
    assert stats.predicted == 400 and len(stats.table) == TABLE_MAX
    assert stats.max_held <= (prefetch + 1) * batch  # decoded inputs in flight, whatever N
    assert live and max(live) <= 2 * batch  # records alive at once: one batch (+ the one being written)
    assert len(read_predictions_csv(tmp_path / "p.csv")) == 400


def test_cli_predict_streams_csv_and_resumes(predictor, tmp_path, capsys):
    folder = tmp_path / "in"
    _pngs(folder, 12, broken=2)
    out = tmp_path / "preds.csv"
    argv = ["predict", str(predictor.run_dir), str(folder), "--out", str(out), "--batch-size", "4"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--workers", "1"])
    assert exc.value.code == 1  # the broken file
    rows = read_predictions_csv(out)
    assert len(rows) == 12 and rows[2]["error"]
    text = capsys.readouterr().out
    assert "img_0000.png" in text  # a short run still shows the table
    main([*argv, "--resume"])
    assert "12 already in" in " ".join(capsys.readouterr().out.split())
    assert len(read_predictions_csv(out)) == 12


def test_bench_table_renders_every_measure():
    import io

    from rich.console import Console

    from lungxray.bench import render_bench

    tr = {"model": "cnn-small", "size": 64, "batch_size": 32, "bf16": False, "channels_last": False}
    result = {
        "machine": {"cpu": "X", "cores": 2, "torch": "2", "torch_threads": 1, "python": "3.11", "device": "cpu"},
        "cache": {"images_per_s": 10.0, "files": 4, "size": 64, "warm_load_seconds": 0.1},
        "train": [{"variant": "recipe", "images_per_s": 50.0, **tr}, {"variant": "fp32-nchw", "images_per_s": 40.0, **tr}],
        "inference": [
            {"backend": "torch", "p50_ms": 2.0, "p95_ms": 3.0, "throughput": 100.0, "cam_p50_ms": 9.0},
            {"backend": "onnx", "skipped": "ImportError: no onnxruntime"},
        ],
        "serve": None,
    }
    buf = io.StringIO()
    render_bench(result, Console(file=buf, width=200))
    text = buf.getvalue()
    for part in ("2 cores", "train fp32-nchw", "x0.80", "p50 2.0 ms", "Grad-CAM", "skipped", "FastAPI not installed"):
        assert part in text, part


def test_cli_streamed_csv_with_heatmaps_and_resume_without_csv(predictor, tmp_path, capsys):
    folder = tmp_path / "in"
    _pngs(folder, 3)
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    main(["predict", str(predictor.run_dir), str(folder), "--out", str(out), "--heatmaps", str(maps)])
    assert len(read_predictions_csv(out)) == 3 and len(list(maps.glob("*.png"))) == 3
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(predictor.run_dir), str(folder), "--resume"])
    assert exc.value.code == 2 and "--resume needs" in capsys.readouterr().err


def test_bench_serves_real_requests_in_process(tiny_run):
    """`lungxray bench`'s server row posts real uploads; every one must be answered 200 (the Host guard
    of the server once turned them all into 400s and the row read 0 req/s)."""
    pytest.importorskip("fastapi")
    from conftest import xray_files
    from lungxray.bench import bench_serve_inprocess

    r = bench_serve_inprocess(tiny_run, xray_files(1)[0], seconds=1.0)
    assert r["requests"] >= 1 and r["ok"] == r["requests"] and r["req_per_s"] > 0


def test_default_workers_decode_small_inputs_in_this_process(predictor, tmp_path, monkeypatch):
    """workers=None (the CLI default): a few files never pay for spawning a decoding process."""
    import lungxray.predict_stream as ps

    assert ps.auto_workers(ps.AUTO_WORKERS_FROM - 1, None) == 0
    assert ps.auto_workers(ps.AUTO_WORKERS_FROM, None) == 1
    assert ps.auto_workers(10, 2) == 2  # an explicit count is kept

    def no_spawn(*args, **kwargs):
        raise AssertionError("a worker process was started for 12 files")

    monkeypatch.setattr(ps, "ProcessPoolExecutor", no_spawn)
    paths = _pngs(tmp_path / "in", 12)
    stats = predict_to_csv(predictor, paths, tmp_path / "p.csv", batch_size=4)
    assert stats.predicted == 12 and len(read_predictions_csv(tmp_path / "p.csv")) == 12

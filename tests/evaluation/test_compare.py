"""compare_runs on two evaluated runs (a real one and a copy with other numbers) and on an unevaluated one."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import pytest
from PIL import Image
from rich.console import Console
from sklearn.metrics import roc_auc_score

from lungxray.errors import RunError
from lungxray.evaluation.compare import COLUMNS, compare_runs, render_comparison
from lungxray.evaluation.evaluate import evaluate_run
from lungxray.runcard import RunCard


@pytest.fixture(scope="module")
def two_runs(tiny_run, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    a = root / "small"
    shutil.copytree(tiny_run, a, ignore=shutil.ignore_patterns("eval", "checkpoint.pt", "best.safetensors"))
    evaluate_run(a, n_boot=50, progress=False, cache_dir=cache_dir)
    b = root / "bigger"
    shutil.copytree(a, b)
    m = json.loads((b / "eval" / "test" / "metrics.json").read_text())
    m["auc"] = {"value": 0.97, "ci_low": 0.95, "ci_high": 0.99}
    m["f1"]["value"] = 0.91
    (b / "eval" / "test" / "metrics.json").write_text(json.dumps(m))
    card = RunCard.read(b)
    training = replace(card.training, seconds=1234.5, parameters=11_000_000)
    replace(card, architecture="resnet18", training=training).write(b)
    return a, b


def test_compare_writes_table_and_figure(two_runs, tmp_path):
    a, b = two_runs
    result = compare_runs([a, b], split="test", out=tmp_path / "cmp")
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["small", "bigger"]
    ma = json.loads((a / "eval" / "test" / "metrics.json").read_text())
    ia = RunCard.read(a)
    assert rows["small"]["auc"] == pytest.approx(ma["auc"]["value"])
    assert rows["small"]["auc_ci_low"] == pytest.approx(ma["auc"]["ci_low"])
    assert rows["small"]["sensitivity"] == pytest.approx(ma["sensitivity"]["value"])
    assert rows["small"]["train_seconds"] == ia.training.seconds
    assert rows["small"]["parameters"] == ia.training.parameters
    assert rows["small"]["input_size"] == 64 and rows["small"]["n"] == ma["n"]
    assert rows["bigger"]["auc"] == 0.97 and rows["bigger"]["f1"] == 0.91
    assert rows["bigger"]["architecture"] == "resnet18" and rows["bigger"]["train_seconds"] == 1234.5

    assert result["table"] == tmp_path / "cmp" / "compare.csv"
    with result["table"].open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(COLUMNS) and len(table) == 2
    assert float(table[1]["auc"]) == 0.97 and table[1]["parameters"] == "11000000"
    with Image.open(result["figure"]) as im:
        assert im.format == "PNG" and im.width > 600

    console = Console(record=True, width=200)
    render_comparison(result, console)
    out = console.export_text()
    assert out.index("bigger") < out.index("small")  # best AUC first
    assert "0.970 [0.950, 0.990]" in out and "11,000,000" in out


def test_compare_default_out_is_compare_folder(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = compare_runs([str(two_runs[0])])
    assert result["table"].resolve() == (tmp_path / "compare" / "compare.csv").resolve()
    assert result["table"].is_file() and result["figure"].is_file()


def test_unevaluated_run_is_a_run_error(tiny_run, two_runs, tmp_path):
    fresh = tmp_path / "fresh"
    shutil.copytree(tiny_run, fresh, ignore=shutil.ignore_patterns("eval", "checkpoint.pt"))
    with pytest.raises(RunError, match=r"lungxray evaluate .*fresh.* first"):
        compare_runs([two_runs[0], fresh], out=tmp_path / "cmp")
    with pytest.raises(RunError, match="no evaluation on 'val'"):
        compare_runs([two_runs[0]], split="val", out=tmp_path / "cmp")
    with pytest.raises(RunError, match="not a run directory"):
        compare_runs([tmp_path / "nothing"], out=tmp_path / "cmp")


def _rewrite_predictions(run, change):
    """Rewrite run/eval/test/predictions.csv row by row with ``change(i, row) -> row or None (drop)``."""
    path = run / "eval" / "test" / "predictions.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = [r2 for i, r in enumerate(rows) if (r2 := change(i, dict(r))) is not None]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    return kept


def _auc_of(rows):
    y = [int(r["true_label"] == "PNEUMONIA") for r in rows]
    return roc_auc_score(y, [float(r["score_PNEUMONIA"]) for r in rows])


def test_runs_scored_on_the_same_images_get_a_paired_auc_difference(two_runs, tmp_path):
    a, _ = two_runs
    worse = tmp_path / "worse"
    shutil.copytree(a, worse)
    # every third image's score is flipped: a worse ranking of the very same images
    flip = lambda i, r: {**r, "score_PNEUMONIA": f"{1 - float(r['score_PNEUMONIA']):.6f}"} if i % 3 == 0 else r  # noqa: E731
    rows_worse = _rewrite_predictions(worse, flip)
    with (a / "eval" / "test" / "predictions.csv").open(newline="") as fh:
        rows_a = list(csv.DictReader(fh))

    result = compare_runs([a, worse], out=tmp_path / "cmp")
    first, second = result["rows"]
    assert first["auc_diff_vs_first"] is None  # the reference
    assert second["auc_diff_vs_first"] == pytest.approx(_auc_of(rows_worse) - _auc_of(rows_a))
    assert second["auc_diff_ci_low"] <= second["auc_diff_vs_first"] <= second["auc_diff_ci_high"] < 0
    assert f"same {len(rows_a)} images" in result["paired"]
    with result["table"].open(newline="") as fh:
        assert float(list(csv.DictReader(fh))[1]["auc_diff_vs_first"]) == pytest.approx(second["auc_diff_vs_first"])
    console = Console(record=True, width=250)
    render_comparison(result, console)
    out = console.export_text()
    assert "(reference)" in out and "paired patient bootstrap" in out


def test_runs_scored_on_different_images_are_not_paired(two_runs, tmp_path):
    a, _ = two_runs
    fewer = tmp_path / "fewer"
    shutil.copytree(a, fewer)
    _rewrite_predictions(fewer, lambda i, r: None if i == 0 else r)
    result = compare_runs([a, fewer], out=tmp_path / "cmp")
    assert result["paired"] == "no paired differences: the runs were evaluated on different images."
    assert all(r["auc_diff_vs_first"] is None for r in result["rows"])


def test_unpairable_evaluations_say_why_instead_of_failing(two_runs, tmp_path):
    a, _ = two_runs
    one_class, broken = tmp_path / "one_class", tmp_path / "broken"
    for run in (one_class, broken):
        shutil.copytree(a, run)
    _rewrite_predictions(one_class, lambda i, r: {**r, "true_label": "NORMAL"})
    _rewrite_predictions(broken, lambda i, r: {**r, "score_PNEUMONIA": "n/a"})
    both_one_class = tmp_path / "one_class_2"
    shutil.copytree(one_class, both_one_class)
    assert compare_runs([one_class, both_one_class], out=tmp_path / "c1")["paired"].endswith("one class only (no AUC).")
    assert "cannot be read" in compare_runs([a, broken], out=tmp_path / "c2")["paired"]

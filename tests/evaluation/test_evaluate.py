"""evaluate_run on real trained runs: metrics at the stored threshold, predictions, figures, report, --data."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from conftest import DATA_ROOT, random_lung_run, require_data, xray_files  # noqa: E402
from lungxray import DISCLAIMER
from lungxray.errors import ConfigError, DataError, RunError
from lungxray.evaluation.evaluate import evaluate_run, render_summary
from lungxray.evaluation.metrics import binary_metrics, choose_threshold
from lungxray.runcard import Calibration, RunCard

CHEST = DATA_ROOT / "chest_xray"
COVID = DATA_ROOT / "covid19"
BINARY_KEYS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "average_precision")


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval", "checkpoint.pt", "best.safetensors"))
    return dst


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def evaluated(tiny_run, cache_dir, tmp_path_factory):
    run = _copy_run(tiny_run, tmp_path_factory.mktemp("eval") / "tiny")
    return evaluate_run(run, n_boot=200, progress=False, cache_dir=cache_dir)


def _check_ci(entry: dict) -> None:
    assert set(entry) == {"value", "ci_low", "ci_high"}
    assert entry["value"] is not None
    if entry["ci_low"] is not None:  # the CI is None only when no resample defined the metric
        assert entry["ci_low"] - 1e-9 <= entry["value"] <= entry["ci_high"] + 1e-9


def test_metrics_json_has_every_key_with_cis(evaluated):
    m = evaluated.metrics
    assert json.loads((evaluated.out_dir / "metrics.json").read_text()) == m
    assert evaluated.out_dir == evaluated.run_dir / "eval" / "test"
    for k in BINARY_KEYS:
        _check_ci(m[k])
    card = RunCard.read(evaluated.run_dir)
    test_rows = [r for r in _read_csv(evaluated.run_dir / "splits.csv") if r["split"] == "test"]
    assert m["n"] == len(test_rows) > 0
    assert m["class_counts"] == {c: sum(r["label"] == c for r in test_rows) for c in card.classes}
    assert m["n_patients"] == len({r["patient"] for r in test_rows})
    assert m["bootstrap"]["unit"] == "patient" and m["bootstrap"]["n"] == 200
    if m["threshold"] != 0.5:
        for k in ("accuracy", "sensitivity", "specificity", "f1"):
            _check_ci(m["at_0.5"][k])
    assert m["seconds"] > 0 and m["images_per_s"] > 0
    assert m["threshold_strategy"] == card.threshold_strategy
    assert m["unreadable"] == [] and m["external"] is False


def test_threshold_is_the_stored_one_never_retuned_on_test(evaluated, cache_dir, tmp_path):
    card = RunCard.read(evaluated.run_dir)
    assert evaluated.metrics["threshold"] == pytest.approx(card.threshold)
    rows = _read_csv(evaluated.out_dir / "predictions.csv")
    y = np.array([r["true_label"] == card.positive_class for r in rows], dtype=int)
    p = np.array([float(r[f"score_{card.positive_class}"]) for r in rows])
    # store a threshold that differs from what the strategy would pick on the test split
    stored = float(np.round(np.quantile(p, 0.3), 6))
    assert not np.isclose(stored, choose_threshold(y, p, card.threshold_strategy))
    run = _copy_run(evaluated.run_dir, tmp_path / "run")
    card.with_calibration(Calibration(strategy="fixed", split="test-fixture", threshold=stored)).write(run)
    m = evaluate_run(run, n_boot=0, progress=False, cache_dir=cache_dir).metrics
    assert m["threshold"] == stored
    expected = binary_metrics(y, p, stored)
    assert m["confusion"] == {k: expected[k] for k in ("tp", "fp", "tn", "fn")}
    assert m["sensitivity"]["value"] == pytest.approx(expected["sensitivity"], abs=1e-6)
    assert m["auc"]["ci_low"] is None  # n_boot=0: no CI


def test_predictions_csv_rows_and_columns(evaluated):
    card = RunCard.read(evaluated.run_dir)
    rows = _read_csv(evaluated.out_dir / "predictions.csv")
    neg, pos = card.classes
    assert list(rows[0]) == ["path", "patient", "true_label", f"score_{neg}", f"score_{pos}",
                             "predicted_label", "correct"]  # fmt: skip
    assert len(rows) == evaluated.metrics["n"]
    test = {r["path"]: r for r in _read_csv(evaluated.run_dir / "splits.csv") if r["split"] == "test"}
    t = card.threshold
    for r in rows:
        assert test[r["path"]]["patient"] == r["patient"]
        assert test[r["path"]]["label"] == r["true_label"]
        assert float(r[f"score_{neg}"]) + float(r[f"score_{pos}"]) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted_label"] == (pos if float(r[f"score_{pos}"]) >= t - 1e-6 else neg)
        assert r["correct"] == str(int(r["predicted_label"] == r["true_label"]))
    c = evaluated.metrics["confusion"]
    assert sum(r["correct"] == "1" for r in rows) == c["tp"] + c["tn"]


def test_figures_are_real_pngs(evaluated):
    figures = evaluated.out_dir / "figures"
    names = {p.name for p in figures.glob("*.png")}
    expected = {"confusion.png", "roc.png", "pr.png", "calibration.png", "score_histograms.png",
                "learning_curves.png"}  # fmt: skip
    assert expected <= names
    c = evaluated.metrics["confusion"]
    assert ("error_gallery.png" in names) == (c["fp"] + c["fn"] > 0)
    for name in names:
        with Image.open(figures / name) as im:
            assert im.format == "PNG" and im.width > 200
            assert np.asarray(im.convert("L")).std() > 5


def test_report_is_self_contained(evaluated):
    text = evaluated.report_path.read_text()
    assert evaluated.report_path == evaluated.out_dir / "report.html"
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert "@import" not in text and "url(" not in text
    srcs = re.findall(r'<img src="([^"]{0,40})', text)
    n_png = len(list((evaluated.out_dir / "figures").glob("*.png")))
    assert len(srcs) == n_png > 0 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert html.escape(DISCLAIMER) in text
    assert "chosen on the validation split" in text
    assert f"{evaluated.metrics['threshold']:.3f}" in text


def test_render_summary_prints_metrics_threshold_and_report(evaluated):
    console = Console(record=True, width=160)
    render_summary(evaluated, console)
    out = console.export_text()
    assert "AUC" in out and "Sensitivity" in out and "95% CI" in out
    assert f"{evaluated.metrics['auc']['value']:.3f}" in out
    assert "chosen on the validation split" in out and evaluated.metrics["threshold_strategy"] in out
    assert str(evaluated.report_path) in out.replace("\n", "")
    assert "Decision support only" in out


def _external_folder(root: Path, classes: dict[str, str], n: int = 15) -> Path:
    """root/<name>/ with the first n test images of each chest_xray class folder."""
    for name, src in classes.items():
        (root / name).mkdir(parents=True)
        for f in sorted((CHEST / "test" / src).iterdir())[:n]:
            shutil.copy(f, root / name / f.name)
    return root


def test_external_data_folder(evaluated, cache_dir, tmp_path):
    ext = _external_folder(tmp_path / "hospital_b", {"normal": "NORMAL", "pneumonia": "PNEUMONIA"})
    (ext / "normal" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = evaluate_run(evaluated.run_dir, data=ext, n_boot=50, progress=False, cache_dir=cache_dir)
    m = result.metrics
    assert result.out_dir.name == "hospital_b-all"  # no split folders: every image is evaluated
    assert m["external"] is True and m["n"] == 30
    assert m["class_counts"] == {
        "NORMAL": 15,
        "PNEUMONIA": 15,
    }  # lower-case folders mapped to the run's classes
    assert [Path(u["path"]).name for u in m["unreadable"]] == ["broken.jpeg"]
    assert m["threshold"] == pytest.approx(RunCard.read(result.run_dir).threshold)
    assert len(_read_csv(result.out_dir / "predictions.csv")) == 30
    assert (result.run_dir / "eval" / "test" / "metrics.json").is_file()  # own evaluation untouched


def test_external_folder_of_one_class_measures_that_class(evaluated, cache_dir, tmp_path):
    """A site's normal films alone (one class folder) are a valid evaluation set of a trained run: the
    specificity is measured, the sensitivity is undefined, nothing else is refused."""
    ext = _external_folder(tmp_path / "site_normals", {"NORMAL": "NORMAL"}, n=12)
    from sklearn.exceptions import UndefinedMetricWarning

    with pytest.warns(UndefinedMetricWarning, match="only one class"):  # AUC is undefined, and says so
        m = evaluate_run(evaluated.run_dir, data=ext, n_boot=50, progress=False, cache_dir=cache_dir).metrics
    assert m["class_counts"] == {"NORMAL": 12, "PNEUMONIA": 0} and m["external"] is True
    calls = [r["predicted_label"] for r in _read_csv(Path(m["run"]) / "eval" / "site_normals-all" / "predictions.csv")]
    assert m["specificity"]["value"] == pytest.approx(calls.count("NORMAL") / 12)
    assert m["sensitivity"]["value"] is None or np.isnan(m["sensitivity"]["value"])


def test_external_csv_of_one_class_measures_that_class(evaluated, cache_dir, tmp_path):
    """The same from a label table: a CSV listing only normal films evaluates (it used to be refused
    as "only one class"), and training still refuses it."""
    from sklearn.exceptions import UndefinedMetricWarning

    from lungxray.data.readers import from_csv

    table = tmp_path / "site_normals.csv"
    table.write_text("file,label\n" + "".join(f"{p},NORMAL\n" for p in xray_files(12, "NORMAL")))
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        m = evaluate_run(evaluated.run_dir, data=table, n_boot=50, progress=False, cache_dir=cache_dir).metrics
    assert m["class_counts"] == {"NORMAL": 12, "PNEUMONIA": 0} and m["external"] is True
    assert 0.0 <= m["specificity"]["value"] <= 1.0
    with pytest.raises(DataError, match="only one class"):
        from_csv(table)


def test_external_data_with_other_classes_is_a_data_error(evaluated, cache_dir, tmp_path):
    ext = _external_folder(tmp_path / "other", {"NORMAL": "NORMAL", "COVID": "PNEUMONIA"}, n=3)
    with pytest.raises(DataError, match=r"COVID.*do not match the run's classes"):
        evaluate_run(evaluated.run_dir, data=ext, n_boot=0, progress=False, cache_dir=cache_dir)


def test_user_errors(evaluated, cache_dir, tmp_path):
    with pytest.raises(ConfigError, match="split"):
        evaluate_run(evaluated.run_dir, split="tset", progress=False, cache_dir=cache_dir)
    with pytest.raises(RunError, match="not a run directory"):
        evaluate_run(tmp_path / "nope", progress=False, cache_dir=cache_dir)
    with pytest.raises(DataError, match="does not exist"):
        evaluate_run(evaluated.run_dir, data=tmp_path / "missing", progress=False, cache_dir=cache_dir)


# ----------------------------------------------------------------------------------------- multiclass


@pytest.fixture(scope="module")
def covid_run(tmp_path_factory, cache_dir):
    """A 3-class cnn-small run (64 px, 2 epochs, 120 covid19 images)."""
    import torch

    from lungxray.config import load_config
    from lungxray.training import train

    require_data(COVID)
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs") / "covid"
    cfg = load_config(None, {
        "name": "covid", "out": str(out), "data.path": str(COVID), "data.max_images": 120,
        "data.size": 64, "data.cache_dir": str(cache_dir), "train.epochs": 2, "train.batch_size": 32,
    })  # fmt: skip
    train(cfg, progress=False)
    return out


def test_multiclass_evaluation(covid_run, cache_dir):
    result = evaluate_run(covid_run, n_boot=100, progress=False, cache_dir=cache_dir)
    m = result.metrics
    classes = ["Normal", "Covid", "Viral Pneumonia"]
    assert m["task"] == "multiclass" and m["classes"] == classes
    for k in ("accuracy", "macro_auc", "macro_f1", "macro_recall", "macro_specificity"):
        _check_ci(m[k])
    assert set(m["per_class"]) == set(classes)
    matrix = np.array(m["confusion"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == m["n"]
    rows = _read_csv(result.out_dir / "predictions.csv")
    assert len(rows) == m["n"]
    for r in rows:
        scores = [float(r[f"score_{c}"]) for c in classes]
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert r["predicted_label"] == classes[int(np.argmax(scores))]
    assert sum(r["correct"] == "1" for r in rows) == np.trace(matrix)
    names = {p.name for p in (result.out_dir / "figures").glob("*.png")}
    assert {"confusion.png", "roc_multiclass.png", "learning_curves.png"} <= names
    text = result.report_path.read_text()
    assert "roc.png" not in names  # the binary curves are not drawn for a multi-class task
    assert "Per class" in text and "Viral Pneumonia" in text
    console = Console(record=True, width=160)
    render_summary(result, console)
    assert "Macro AUC" in console.export_text()


def test_shortcut_audit_is_skipped_with_a_note_without_lungs(evaluated):
    d = evaluated.metrics["shortcut"]
    assert "skipped" in d and "train-lungs" in d["skipped"]
    assert "train-lungs" in evaluated.report_path.read_text()


def test_shortcut_audit_runs_with_a_lung_run(tiny_run, cache_dir, tmp_path, one_thread):
    """`lungxray evaluate --lungs` adds the audit to metrics.json and the report (lung net: random weights)."""
    pytest.importorskip("segmentation_models_pytorch")
    lungs = random_lung_run(tmp_path / "lungs")
    run = _copy_run(tiny_run, tmp_path / "run")
    result = evaluate_run(run, n_boot=20, progress=False, cache_dir=cache_dir, lungs=lungs)
    d = result.metrics["shortcut"]
    assert d["n"] == result.metrics["n"] and d["mask_model"] == "lungs"
    assert set(d["occlusion"]) >= {"plain", "lungs_blanked", "only_lungs"}
    assert d["occlusion"]["plain"]["auc"] == pytest.approx(result.metrics["auc"]["value"], abs=1e-6)
    assert "Shortcut audit" in result.report_path.read_text()


def test_predictions_csv_guards_against_formula_injection(tmp_path):
    from lungxray.data.manifest import Manifest
    from lungxray.evaluation.evaluate import _write_predictions

    m = Manifest(paths=("=cmd|' /C calc'!A0", "-2"), labels=np.array([[1, 0], [0, 1]], np.float32),
                 classes=("NORMAL", "@finding"), task="binary", patients=("+p1", "p2"), splits=("test", "test"))  # fmt: skip
    _write_predictions(tmp_path / "predictions.csv", m, np.array([[0.2], [0.9]]), np.array([0, 1]))
    rows = _read_csv(tmp_path / "predictions.csv")
    assert rows[0]["path"] == "'=cmd|' /C calc'!A0" and rows[0]["patient"] == "'+p1"
    assert rows[1]["path"] == "-2"  # a number stays a number
    assert rows[1]["true_label"] == "'@finding" and rows[1]["predicted_label"] == "'@finding"
    assert [f.name for f in tmp_path.iterdir()] == ["predictions.csv"]  # written atomically, no temp left

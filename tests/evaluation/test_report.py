"""build_report on hand-made run directories: self-contained HTML, escaping, every task's tables."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lungxray import DISCLAIMER
from lungxray.errors import RunError
from lungxray.evaluation import plots
from lungxray.evaluation.metrics import evaluate_predictions
from lungxray.evaluation.report import build_report

EVIL = '<script>alert("x")</script>'


def _run(tmp_path: Path, task: str, classes: list[str], **extra) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    info = {
        "format_version": 1,  # a version-1 file: the report reads old runs through RunCard's upgrade
        "name": f"demo {EVIL}", "architecture": "cnn-small", "in_chans": 1, "input_size": 64,
        "normalization": {"mean": 0.449, "std": 0.226}, "classes": classes, "task": task,
        "threshold_strategy": "max-f1", "disclaimer": DISCLAIMER,
        "training": {"data": "/data/chest_xray", "counts": {"train": dict.fromkeys(classes, 10),
                     "val": dict.fromkeys(classes, 3), "test": dict.fromkeys(classes, 4)},
                     "epochs_run": 3, "best_epoch": 2, "seconds": 12.5, "images_per_s": 80.0,
                     "device": "cpu", "parameters": 503857},
        **extra,
    }  # fmt: skip
    (run / "model.json").write_text(json.dumps(info))
    return run


def _write_eval(run: Path, body: dict, figures: dict | None = None) -> Path:
    folder = run / "eval" / "test"
    folder.mkdir(parents=True)
    body = {**body, "split": "test", "eval_name": "test", "run": str(run), "n_patients": 60,
            "data": str(run), "unreadable": [{"path": f"/x/{EVIL}.png", "reason": "truncated"}]}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(body))
    for name, fig in (figures or {}).items():
        plots.save_figure(fig, folder / "figures" / name)
    return folder


def _binary_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-rng.normal(2 * y - 1, 1.0)))
    return y, p


def test_binary_report_is_self_contained_and_escaped(tmp_path):
    classes = ["NORMAL", f"PNEUMONIA{EVIL}"]
    run = _run(tmp_path, "binary", classes, threshold=0.37)
    y, p = _binary_data()
    body = evaluate_predictions("binary", y, p, classes, threshold=0.37, groups=np.arange(80) // 2, n_boot=50)
    figures = {"roc.png": plots.roc_curve(y, p, threshold=0.37), "zzz_extra.png": plots.pr_curve(y, p),
               "error_gallery.png": plots.error_gallery(np.zeros((2, 16, 16), np.uint8), ["a", "b"])}  # fmt: skip
    _write_eval(run, body, figures)
    path = build_report(run, "test")
    assert path == run / "eval" / "test" / "report.html"
    text = path.read_text()
    assert EVIL not in text and html.escape(EVIL) in text  # every string from the run is escaped
    assert "<script" not in text.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", text, re.I)
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 3
    assert html.escape(DISCLAIMER) in text
    assert "chosen on the validation split with strategy &ldquo;max-f1&rdquo;" in text
    assert "0.370" in text and "at 0.5" in text
    # headline metrics with their CIs
    auc = body["auc"]
    assert f"{auc['value']:.3f}" in text and f"[{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" in text
    assert "ROC curve" in text and "Zzz extra" in text  # known caption, and a fallback one
    assert "Most confident errors" in text and "truncated" in text  # gallery and unreadable list
    assert "503,857" in text and "pediatric" in text  # model summary and data-origin note
    assert "supports and does not replace" in text
    assert text.index("Decision support only") < text.index("<h2>Data</h2>")  # disclaimer up front


def test_multiclass_and_multilabel_reports_have_per_class_tables(tmp_path):
    rng = np.random.default_rng(1)
    classes = ["Normal", "Covid", "Viral Pneumonia"]
    y = rng.integers(0, 3, 60)
    prob = rng.dirichlet(np.ones(3), 60)
    prob[np.arange(48), y[:48]] += 1.0  # right with confidence on 48 images, at random on 12
    prob /= prob.sum(1, keepdims=True)
    (tmp_path / "mc").mkdir()
    run = _run(tmp_path / "mc", "multiclass", classes)
    _write_eval(run, evaluate_predictions("multiclass", y, prob, classes, n_boot=30))
    text = build_report(run, "test").read_text()
    assert "Per class" in text and "Viral Pneumonia" in text and "Macro AUC" in text
    assert "No error gallery was saved" in text  # errors exist, but no gallery figure was written

    labels = ["Effusion", "Nodule"]
    yl = rng.integers(0, 2, (60, 2)).astype(float)
    yl[0, 1] = np.nan
    pl = np.clip(yl * 0.5 + rng.uniform(0, 0.5, (60, 2)), 0, 1)
    pl = np.nan_to_num(pl, nan=0.3)
    (tmp_path / "ml").mkdir()
    run = _run(tmp_path / "ml", "multilabel", labels, thresholds=[0.4, 0.6])
    body = evaluate_predictions("multilabel", yl, pl, labels, thresholds=[0.4, 0.6], n_boot=30)
    _write_eval(run, body, {"auc_per_label.png": plots.per_label_auc_bars(labels, [body["per_class"][c]["auc"]
                                                                                    for c in labels])})  # fmt: skip
    text = build_report(run, "test").read_text()
    assert "<td>Effusion</td>" in text and "AUC Effusion" not in text  # in the per-class table only
    assert "Per-finding thresholds were chosen on the validation split" in text
    assert "AUC per finding" in text


def test_missing_evaluation_is_a_run_error(tmp_path):
    run = _run(tmp_path, "binary", ["NORMAL", "PNEUMONIA"], threshold=0.5)
    with pytest.raises(RunError, match="lungxray evaluate"):
        build_report(run, "test")
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "metrics.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        build_report(run, "test")


def test_report_shows_paths_relative_to_the_data_root(tmp_path):
    """A shared report.html names files as they are inside the data set, never by absolute path."""
    classes = ["NORMAL", "PNEUMONIA"]
    run = _run(tmp_path, "binary", classes, threshold=0.5)
    y, p = _binary_data()
    body = evaluate_predictions("binary", y, p, classes, threshold=0.5, groups=np.arange(80) // 2, n_boot=0)
    folder = _write_eval(run, body)
    metrics = json.loads((folder / "metrics.json").read_text())
    root = "/home/alice/hospital_b"
    metrics.update(external=True, data=root,
                   unreadable=[{"path": f"{root}/test/NORMAL/scan7.png", "reason": "truncated"}])  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    text = build_report(run, "test").read_text()
    assert "test/NORMAL/scan7.png" in text and "hospital_b" in text
    assert "/home/alice" not in text and "/data/chest_xray" not in text and str(tmp_path) not in text

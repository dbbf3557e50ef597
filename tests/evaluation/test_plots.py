"""Each figure builds without pyplot, saves a real PNG, draws into a given Axes, and shows the right numbers."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn import metrics as skm

from lungxray.evaluation import plots


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-rng.normal(1.5 * (2 * y - 1), 1.2)))
    return y, s


def _check_png(fig, path):
    assert isinstance(fig, Figure)
    out = plots.save_figure(fig, path)
    assert out.stat().st_size > 5000
    with Image.open(out) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas


def _texts(fig):
    out = []
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
        out.append(ax.get_title())
    return out


def _own_axes(n=1):
    fig = Figure(figsize=(4 * n, 4))
    axes = fig.subplots(1, n)
    return fig, axes


def test_confusion_matrix_two_panels_with_counts_and_fractions(tmp_path):
    cm = np.array([[50, 10], [5, 100]])
    fig = plots.confusion_matrix(cm, ["NORMAL", "PNEUMONIA"])
    _check_png(fig, tmp_path / "cm.png")
    assert len(fig.axes) == 2
    texts = _texts(fig)
    for expected in ("50", "10", "5", "100", "83%", "17%", "95%"):
        assert expected in texts
    same = plots.confusion_matrix({"tp": 100, "fp": 10, "tn": 50, "fn": 5}, ["NORMAL", "PNEUMONIA"])
    assert {"50", "100", "83%"} <= set(_texts(same))


def test_confusion_matrix_accepts_one_ax_or_a_pair(tmp_path):
    fig, ax = _own_axes()
    assert plots.confusion_matrix(np.eye(3) * 7 + 1, ["a", "b", "c"], ax=ax) is fig
    assert "8\n(80%)" in _texts(fig)  # 8 of 10 in the row
    _check_png(fig, tmp_path / "one.png")
    fig2, pair = _own_axes(2)
    assert plots.confusion_matrix(np.eye(3) * 7 + 1, ["a", "b", "c"], ax=pair) is fig2


def test_roc_curve_legend_shows_auc_and_operating_point(tmp_path):
    y, s = _data()
    fig = plots.roc_curve(y, s, threshold=0.4)
    _check_png(fig, tmp_path / "roc.png")
    texts = " ".join(_texts(fig))
    assert f"AUC = {skm.roc_auc_score(y, s):.3f}" in texts
    sens = np.mean(s[y == 1] >= 0.4)
    assert f"sens {sens:.2f}" in texts
    fig2, ax = _own_axes()
    assert plots.roc_curve(y, s, ax=ax) is fig2


def test_pr_curve_shows_ap_and_prevalence(tmp_path):
    y, s = _data()
    fig = plots.pr_curve(y, s, threshold=0.5)
    _check_png(fig, tmp_path / "pr.png")
    texts = " ".join(_texts(fig))
    assert f"AP = {skm.average_precision_score(y, s):.3f}" in texts
    assert f"prevalence = {y.mean():.2f}" in texts
    fig2, ax = _own_axes()
    assert plots.pr_curve(y, s, ax=ax) is fig2


def test_calibration_diagram(tmp_path):
    y, s = _data(500)
    fig = plots.calibration_diagram(y, s)
    _check_png(fig, tmp_path / "cal.png")
    assert len(fig.axes) == 2
    assert any("ECE = " in t for t in _texts(fig))
    fig2, ax = _own_axes()
    assert plots.calibration_diagram(y, s, ax=ax) is fig2
    _check_png(fig2, tmp_path / "cal_ax.png")


def test_score_histograms(tmp_path):
    y, s = _data()
    fig = plots.score_histograms(y, s, ["NORMAL", "PNEUMONIA"], threshold=0.37)
    _check_png(fig, tmp_path / "hist.png")
    texts = " ".join(_texts(fig))
    assert "threshold 0.37" in texts and f"true NORMAL (n={(y == 0).sum()})" in texts
    fig2, ax = _own_axes()
    assert plots.score_histograms(y, s, ax=ax) is fig2


def test_learning_curves_from_csv_like_rows(tmp_path):
    history = [
        {
            "epoch": str(e),
            "train_loss": str(1 / e),
            "val_loss": 1.2 / e,
            "val_auc": 0.7 + 0.03 * e,
            "lr": 1e-3 / e,
        }
        for e in range(1, 9)
    ]
    history[3]["val_auc"] = ""  # a missing value is a gap, not an error
    fig = plots.learning_curves(history, best_epoch=6, title="run")
    _check_png(fig, tmp_path / "lc.png")
    assert len(fig.axes) == 3
    assert {"train_loss", "val_loss", "val_auc"} <= set(_texts(fig))
    fig2, ax = _own_axes()
    assert plots.learning_curves(history, ax=ax) is fig2
    with pytest.raises(ValueError, match="empty"):
        plots.learning_curves([])


def test_fold_learning_curves_draw_a_row_per_member(tmp_path):
    fold = lambda k: [{"epoch": e, "train_loss": 1 / e, "val_loss": (1 + k) / e, "val_auc": 0.8 + 0.01 * e,  # noqa: E731
                       "lr": 1e-3} for e in range(1, 6)]  # fmt: skip
    fig = plots.fold_learning_curves([fold(0), fold(1), fold(2)], best_epochs=[4, None, 5])
    _check_png(fig, tmp_path / "folds.png")
    assert len(fig.axes) == 9  # 3 folds x (loss, validation metrics, learning rate)
    texts = set(_texts(fig))
    assert {"Fold 0: loss", "Fold 2: loss", "best epoch 4", "best epoch 5"} <= texts
    assert "best epoch None" not in texts
    with pytest.raises(ValueError, match="non-empty"):
        plots.fold_learning_curves([fold(0), []])


def test_per_label_auc_bars_from_metrics_json_entries(tmp_path):
    per_class = {
        "Atelectasis": {"value": 0.81, "ci_low": 0.78, "ci_high": 0.84},
        "Hernia": {"value": None, "ci_low": None, "ci_high": None},
        "Effusion": {"value": 0.88, "ci_low": 0.86, "ci_high": 0.9},
    }
    fig = plots.per_label_auc_bars(list(per_class), list(per_class.values()), reference={"Effusion": 0.864})
    _check_png(fig, tmp_path / "bars.png")
    texts = _texts(fig)
    assert {"0.810", "0.880", "n/a"} <= set(texts)
    fig2, ax = _own_axes()
    assert plots.per_label_auc_bars(["a", "b"], [0.7, 0.9], ax=ax) is fig2


def test_error_gallery_gray_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    titles = [f"true: PNEUMONIA\npred: NORMAL ({p:.2f})" for p in np.linspace(0.1, 0.4, 5)]
    fig = plots.error_gallery(images, titles, title_colors=["red"] * 5)
    _check_png(fig, tmp_path / "gallery.png")
    assert titles[2] in _texts(fig)
    fig2, axes = _own_axes(2)
    assert plots.error_gallery(rng.random((2, 16, 16, 3)), ["a", "b"], ax=axes) is fig2
    with pytest.raises(ValueError, match="titles"):
        plots.error_gallery(images, titles[:2])


def test_multiclass_roc(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    p = rng.dirichlet(np.ones(3), 150)
    p[np.arange(150), y] += 0.6
    p /= p.sum(axis=1, keepdims=True)
    fig = plots.multiclass_roc(y, p, ["Covid", "Normal", "Viral Pneumonia"])
    _check_png(fig, tmp_path / "mroc.png")
    auc = skm.roc_auc_score((y == 0).astype(int), p[:, 0])
    assert f"Covid (AUC = {auc:.3f})" in _texts(fig)
    fig2, ax = _own_axes()
    assert plots.multiclass_roc(y, p, ["a", "b", "c"], ax=ax) is fig2

"""Matplotlib figures of an evaluation: confusion matrix, ROC, PR, calibration, score histograms,
learning curves, per-label AUC bars, error galleries.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot, so no global state and no
GUI backend), takes ``ax=None`` (draw into your own axes instead) and returns the Figure. Predictions
are positive when ``score >= threshold``, as in ``lungxray.evaluation.metrics``.

Example::

    fig = roc_curve(y_test, p_test, threshold=0.42)
    save_figure(fig, "runs/x/eval/test/figures/roc.png")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn import metrics as skm

from lungxray.evaluation.metrics import calibration_curve_data

__all__ = [
    "calibration_diagram",
    "confusion_matrix",
    "error_gallery",
    "learning_curves",
    "multiclass_roc",
    "per_label_auc_bars",
    "pr_curve",
    "roc_curve",
    "save_figure",
    "score_histograms",
]

_SINGLE = (5.5, 4.6)  # inches: one readable panel
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as an image (format from the suffix, PNG recommended); creates parent folders."""
    from lungxray.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:  # atomic and durable; the temp name hides the format: pass it
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, bbox_inches="tight",
                    facecolor="white")  # fmt: skip
    return path


def _root(ax: Axes) -> Figure:
    fig = ax.figure
    return getattr(fig, "figure", None) or fig  # a SubFigure's .figure is the root Figure


def _axes(ax: Axes | None, figsize: tuple[float, float] = _SINGLE) -> tuple[Figure, Axes]:
    if ax is not None:
        return _root(ax), ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _style(ax: Axes, title: str | None, xlabel: str, ylabel: str) -> None:
    if title:
        ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _binary_inputs(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} entries but score has {len(s)}.")
    return y, s


def _rates_at(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    pred = s >= threshold
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
    div = lambda a, b: a / b if b else math.nan  # noqa: E731
    return {"sens": div(tp, tp + fn), "spec": div(tn, tn + fp), "prec": div(tp, tp + fp)}


# --------------------------------------------------------------------------- confusion matrix


def _draw_matrix(
    ax: Axes, values: np.ndarray, text: list[list[str]], classes: Sequence[str], title: str
) -> None:
    c = len(classes)
    ax.imshow(values, cmap="Blues", vmin=0.0, vmax=max(float(values.max()), 1e-9))
    size = max(8, 20 - 2 * c)
    for i in range(c):
        for j in range(c):
            dark = values[i, j] > 0.55 * values.max()
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=size,
                    color="white" if dark else "black", fontweight="bold")  # fmt: skip
    ax.set_xticks(range(c), labels=classes, rotation=30 if c > 3 else 0, ha="right" if c > 3 else "center")
    ax.set_yticks(range(c), labels=classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title, fontsize=12)


def confusion_matrix(
    cm: Any, classes: Sequence[str], *, ax: Axes | Sequence[Axes] | None = None, title: str | None = None
) -> Figure:
    """Confusion matrix as counts and as row-normalised fractions (rows = true class).

    Args:
        cm: (C, C) counts, rows = truth, columns = prediction; or a binary ``{"tp","fp","tn","fn"}``
            dict (then ``classes`` = (negative, positive)).
        ax: None (two panels), a pair of Axes (counts, normalised), or one Axes (each cell shows
            the count and its row percentage, coloured by the row fraction).
    """
    if isinstance(cm, Mapping):
        cm = [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]]
    cm = np.asarray(cm, dtype=np.float64)
    classes = [str(c) for c in classes]
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(
            f"cm must be ({len(classes)}, {len(classes)}) for classes {classes}, got {cm.shape}."
        )
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    counts = [[f"{int(v)}" for v in row] for row in cm]
    fracs = [[f"{v:.0%}" for v in row] for row in norm]
    suffix = f" - {title}" if title else ""
    if isinstance(ax, Axes):
        both = [
            [f"{a}\n({b})" for a, b in zip(r1, r2, strict=True)] for r1, r2 in zip(counts, fracs, strict=True)
        ]
        _draw_matrix(ax, norm, both, classes, f"Confusion matrix{suffix}")
        return _root(ax)
    if ax is None:
        fig = Figure(figsize=(4.2 * 2 + max(0, len(classes) - 3) * 1.0, 4.4), layout="constrained")
        ax = fig.subplots(1, 2)
    else:
        fig = _root(ax[0])
    _draw_matrix(ax[0], cm, counts, classes, f"Counts{suffix}")
    _draw_matrix(ax[1], norm, fracs, classes, f"Row-normalised (recall){suffix}")
    return fig


# --------------------------------------------------------------------------- ROC / PR


def roc_curve(
    y_true: Any,
    score: Any,
    *,
    threshold: float | None = None,
    ax: Axes | None = None,
    label: str = "model",
    title: str | None = "ROC curve",
) -> Figure:
    """ROC curve with AUC in the legend, the chance diagonal and the operating point at ``threshold``."""
    y, s = _binary_inputs(y_true, score)
    fig, ax = _axes(ax)
    fpr, tpr, _ = skm.roc_curve(y, s)
    auc = skm.roc_auc_score(y, s)
    ax.plot(fpr, tpr, color=_COLORS[0], lw=2, label=f"{label} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC = 0.5)")
    if threshold is not None:
        r = _rates_at(y, s, threshold)
        ax.plot(1 - r["spec"], r["sens"], "o", ms=9, color=_COLORS[1], zorder=5,
                label=f"threshold {threshold:.3g}: sens {r['sens']:.2f}, spec {r['spec']:.2f}")  # fmt: skip
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=9)
    _style(ax, title, "False positive rate (1 - specificity)", "True positive rate (sensitivity)")
    return fig


def pr_curve(
    y_true: Any,
    score: Any,
    *,
    threshold: float | None = None,
    ax: Axes | None = None,
    label: str = "model",
    title: str | None = "Precision-recall curve",
) -> Figure:
    """Precision-recall curve with AP in the legend, the prevalence baseline and the operating point."""
    y, s = _binary_inputs(y_true, score)
    fig, ax = _axes(ax)
    precision, recall, _ = skm.precision_recall_curve(y, s)
    ap = skm.average_precision_score(y, s)
    prevalence = float(y.mean())
    ax.step(recall, precision, where="post", color=_COLORS[0], lw=2, label=f"{label} (AP = {ap:.3f})")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence = {prevalence:.2f}")
    if threshold is not None:
        r = _rates_at(y, s, threshold)
        ax.plot(r["sens"], r["prec"], "o", ms=9, color=_COLORS[1], zorder=5,
                label=f"threshold {threshold:.3g}: recall {r['sens']:.2f}, precision {r['prec']:.2f}")  # fmt: skip
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower left", fontsize=9)
    _style(ax, title, "Recall (sensitivity)", "Precision (PPV)")
    return fig


def multiclass_roc(
    y_true_int: Any, prob: Any, classes: Sequence[str], *, ax: Axes | None = None, title: str | None = None
) -> Figure:
    """One-vs-rest ROC curve per class, each with its AUC; macro AUC in the title."""
    y = np.asarray(y_true_int).astype(np.int64).ravel()
    p = np.asarray(prob, dtype=np.float64)
    fig, ax = _axes(ax, (6.0, 5.0))
    aucs = []
    for k, name in enumerate(classes):
        yk = (y == k).astype(np.int64)
        if 0 < yk.sum() < len(yk):
            fpr, tpr, _ = skm.roc_curve(yk, p[:, k])
            aucs.append(skm.roc_auc_score(yk, p[:, k]))
            ax.plot(fpr, tpr, lw=2, color=_COLORS[k % len(_COLORS)], label=f"{name} (AUC = {aucs[-1]:.3f})")
        else:
            ax.plot([], [], color=_COLORS[k % len(_COLORS)], label=f"{name} (AUC undefined: one class)")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=9)
    macro = f"macro AUC = {np.mean(aucs):.3f}" if aucs else "AUC undefined"
    _style(ax, title or f"One-vs-rest ROC ({macro})", "False positive rate", "True positive rate")
    return fig


# --------------------------------------------------------------------------- calibration / scores


def calibration_diagram(
    y_true: Any,
    prob: Any,
    *,
    n_bins: int = 10,
    ax: Axes | Sequence[Axes] | None = None,
    title: str | None = "Calibration",
) -> Figure:
    """Reliability diagram (fraction positive vs mean predicted probability per bin) with ECE, and a
    histogram of predicted probabilities (below it; on a twin axis when one Axes is given)."""
    data = calibration_curve_data(y_true, prob, n_bins)
    p = np.asarray(prob, dtype=np.float64).ravel()
    if isinstance(ax, Axes):
        fig, top, bottom = _root(ax), ax, ax.twinx()
    elif ax is None:
        fig = Figure(figsize=(5.5, 6.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        top, bottom = ax
        fig = _root(top)
    mean_p, frac = np.asarray(data["mean_predicted"]), np.asarray(data["fraction_positive"])
    ok = np.isfinite(frac)
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    top.plot(mean_p[ok], frac[ok], "o-", color=_COLORS[0], lw=2, label=f"model (ECE = {data['ece']:.3f})")
    top.set_xlim(0, 1)
    top.set_ylim(-0.01, 1.01)
    top.legend(loc="upper left", fontsize=9)
    _style(top, title, "Mean predicted probability", "Fraction of positives")
    bottom.hist(p, bins=data["bin_edges"], color=_COLORS[0], alpha=0.25 if isinstance(ax, Axes) else 0.7)
    bottom.set_ylabel("Images")
    if not isinstance(ax, Axes):
        bottom.set_xlabel("Predicted probability")
        bottom.grid(True, alpha=0.3)
    return fig


def score_histograms(
    y_true: Any,
    score: Any,
    classes: Sequence[str] = ("negative", "positive"),
    *,
    threshold: float | None = None,
    bins: int = 30,
    ax: Axes | None = None,
    title: str | None = "Scores by true class",
) -> Figure:
    """Histogram of the positive-class score for each true class, with the threshold as a line."""
    y, s = _binary_inputs(y_true, score)
    fig, ax = _axes(ax, (6.0, 4.2))
    edges = np.linspace(min(0.0, s.min()), max(1.0, s.max()), bins + 1)
    for k, name in enumerate(classes[:2]):
        ax.hist(
            s[y == k],
            bins=edges,
            alpha=0.55,
            color=_COLORS[k],
            label=f"true {name} (n={int((y == k).sum())})",
        )
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.3g}")
    ax.legend(fontsize=9)
    _style(ax, title, f"Score ({classes[1] if len(classes) > 1 else 'positive'} probability)", "Images")
    return fig


# --------------------------------------------------------------------------- training / multilabel


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    out = []
    for row in history:
        v = row.get(key)
        try:
            out.append(float(v) if v not in (None, "") else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out)


def learning_curves(
    history: Sequence[Mapping[str, Any]],
    *,
    best_epoch: int | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    title: str | None = None,
) -> Figure:
    """Loss, validation metrics and learning rate per epoch, from ``history.csv`` rows.

    ``history``: dicts with ``epoch`` and any of ``train_loss``, ``val_loss``, ``val_<metric>``, ``lr``
    (numbers or numeric strings). ``ax``: None (up to three panels), or a sequence of Axes
    (losses, metrics, lr), or one Axes (losses, with validation metrics on a twin axis).
    """
    if not history:
        raise ValueError("history is empty: no epoch has been recorded.")
    keys = list(dict.fromkeys(k for row in history for k in row))
    epoch = _column(history, "epoch") if "epoch" in keys else np.arange(1, len(history) + 1, dtype=float)
    losses = [k for k in keys if k.endswith("loss")]
    metrics = [k for k in keys if k.startswith("val_") and not k.endswith("loss")]
    has_lr = "lr" in keys
    if isinstance(ax, Axes):
        fig, panels = _root(ax), [ax, ax.twinx() if metrics else None, None]
    elif ax is None:
        n = 1 + bool(metrics) + has_lr
        fig = Figure(figsize=(4.6 * n, 3.8), layout="constrained")
        made = list(np.atleast_1d(fig.subplots(1, n)))
        panels = [made.pop(0), made.pop(0) if metrics else None, made.pop(0) if has_lr else None]
    else:
        seq = list(ax) + [None, None]
        fig, panels = _root(seq[0]), seq[:3]
    loss_ax, metric_ax, lr_ax = panels
    for i, k in enumerate(losses):
        loss_ax.plot(epoch, _column(history, k), "o-", ms=3, lw=2, color=_COLORS[i % 8], label=k)
    _style(loss_ax, "Loss", "Epoch", "Loss")
    if metric_ax is not None:
        for i, k in enumerate(metrics):
            metric_ax.plot(epoch, _column(history, k), "s-", ms=3, lw=2, color=_COLORS[(i + 2) % 8], label=k)
        metric_ax.set_ylabel("Validation metric")
        if metric_ax is not loss_ax and not isinstance(ax, Axes):
            _style(metric_ax, "Validation metrics", "Epoch", "Value")
        metric_ax.legend(fontsize=9, loc="lower right")
    if lr_ax is not None and has_lr:
        lr_ax.plot(epoch, _column(history, "lr"), "-", lw=2, color=_COLORS[4])
        _style(lr_ax, "Learning rate", "Epoch", "Learning rate")
    if best_epoch is not None:
        for a in (loss_ax, metric_ax if not isinstance(ax, Axes) else None):
            if a is not None:
                a.axvline(best_epoch, color="black", ls=":", lw=1.5, label=f"best epoch {best_epoch}")
    loss_ax.legend(fontsize=9, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def fold_learning_curves(histories: Sequence[Sequence[Mapping[str, Any]]],
                         best_epochs: Sequence[int | None] = ()) -> Figure:  # fmt: skip
    """``learning_curves`` of each member of a k-fold ensemble, one row of panels per fold (fold 0 first).

    ``histories``: one history.csv row list per fold (each non-empty); ``best_epochs``: per fold, or ().
    """
    if not histories or any(not h for h in histories):
        raise ValueError("every fold needs a non-empty history.")
    has_lr = any("lr" in row for h in histories for row in h)
    n = 2 + has_lr
    fig = Figure(figsize=(4.6 * n, 3.4 * len(histories)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(histories), n))
    for j, h in enumerate(histories):
        best = best_epochs[j] if j < len(best_epochs) else None
        learning_curves(h, best_epoch=best, ax=list(axes[j]))
        axes[j][0].set_title(f"Fold {j}: loss")
    return fig


def _value(v: Any) -> float:
    if isinstance(v, Mapping):
        v = v.get("value")
    return math.nan if v is None else float(v)


def per_label_auc_bars(
    labels: Sequence[str],
    aucs: Sequence[Any],
    *,
    ci_low: Sequence[float | None] | None = None,
    ci_high: Sequence[float | None] | None = None,
    reference: Mapping[str, float] | None = None,
    ax: Axes | None = None,
    title: str | None = "AUC per label",
) -> Figure:
    """Horizontal AUC bars per label, sorted, with CI whiskers and optional published reference AUCs.

    ``aucs``: floats or metrics.json ``{"value", "ci_low", "ci_high"}`` dicts (their CIs are used when
    ``ci_low``/``ci_high`` are not given); NaN/None (one class only) is shown as "n/a".
    ``reference``: e.g. CheXNet's per-label AUCs, drawn as black diamonds.
    """
    labels = [str(x) for x in labels]
    vals = np.array([_value(a) for a in aucs])
    if ci_low is None and all(isinstance(a, Mapping) for a in aucs):
        ci_low = [a.get("ci_low") for a in aucs]
        ci_high = [a.get("ci_high") for a in aucs]
    order = np.argsort(np.nan_to_num(vals, nan=-1.0))
    fig, ax = _axes(ax, (6.5, max(3.0, 0.38 * len(labels) + 1.2)))
    ypos = np.arange(len(labels))
    shown = np.nan_to_num(vals[order], nan=0.0)
    ax.barh(ypos, shown, color=_COLORS[0], alpha=0.8, label="this model")
    if ci_low is not None and ci_high is not None:
        lo = np.array([math.nan if v is None else float(v) for v in ci_low])[order]
        hi = np.array([math.nan if v is None else float(v) for v in ci_high])[order]
        ok = np.isfinite(lo) & np.isfinite(hi)
        err = np.vstack([shown - lo, hi - shown])[:, ok]
        ax.errorbar(
            shown[ok], ypos[ok], xerr=np.clip(err, 0, None), fmt="none", ecolor="black", capsize=3, lw=1
        )
    # the axis starts at 0.5 (chance) unless an AUC or its CI is below it: then those must stay visible
    low = [x for x in (*vals, *(lo if ci_low is not None and ci_high is not None else ())) if np.isfinite(x)]
    left = min(0.5, math.floor(10 * min(low, default=0.5)) / 10)
    for y, v in zip(ypos, vals[order], strict=True):
        ax.text(left + 0.01, y, "n/a" if not np.isfinite(v) else f"{v:.3f}", va="center", fontsize=9,
                color="white" if np.isfinite(v) and v > left + 0.1 else "black")  # fmt: skip
    if reference:
        ref = [reference.get(labels[i], math.nan) for i in order]
        ax.plot(ref, ypos, "D", color="black", ms=5, label="reference")
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(ypos, labels=[labels[i] for i in order])
    ax.set_xlim(left, 1.0)
    ax.legend(loc="lower right", fontsize=9)
    _style(ax, title, "AUC (one label vs rest)", "")
    ax.grid(True, axis="x", alpha=0.3)
    ax.grid(False, axis="y")
    return fig


# --------------------------------------------------------------------------- gallery


def error_gallery(
    images: Any,
    titles: Sequence[str],
    *,
    ncols: int | None = None,
    title_colors: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    title: str | None = None,
) -> Figure:
    """Grid of images with captions (e.g. "true: PNEUMONIA / pred: NORMAL 0.23").

    Args:
        images: (K, H, W) gray or (K, H, W, 3) RGB (e.g. heatmap overlays), uint8 or float in [0, 1].
        titles: K captions. ``title_colors``: optional K caption colours (e.g. red for errors).
        ax: None (a new grid), or K Axes (one Axes when K == 1).
    """
    imgs = np.asarray(images)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[-1] not in (3, 4)):
        raise ValueError(f"images must be (K, H, W) or (K, H, W, 3), got shape {imgs.shape}.")
    k = len(imgs)
    if len(titles) != k:
        raise ValueError(f"{k} images but {len(titles)} titles.")
    if ax is None:
        ncols = ncols or min(k, 4) or 1
        nrows = max(1, math.ceil(k / ncols))
        fig = Figure(figsize=(2.8 * ncols, 3.1 * nrows), layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(nrows, ncols)).ravel())
    else:
        axes = [ax] if isinstance(ax, Axes) else list(ax)
        if len(axes) < k:
            raise ValueError(f"{k} images need {k} Axes, got {len(axes)}.")
        fig = _root(axes[0])
    for i, a in enumerate(axes):
        a.set_axis_off()
        if i >= k:
            continue
        img = imgs[i]
        vmax = 255 if img.dtype == np.uint8 else 1.0
        a.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=vmax, interpolation="nearest")
        color = title_colors[i] if title_colors is not None else "black"
        a.set_title(str(titles[i]), fontsize=9, color=color)
    if title:
        fig.suptitle(title)
    return fig

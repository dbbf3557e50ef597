"""The report's static content: what each figure shows and how to read it, and the page's CSS."""

from __future__ import annotations

# file name -> (title, how to read it); figures are shown in this order, unknown ones after them.
FIGURE_CAPTIONS: dict[str, tuple[str, str]] = {
    "confusion.png": (
        "Confusion matrix",
        "Rows are the true class, columns the model's call at the operating threshold. Left: image "
        "counts; right: each row as a fraction, so the diagonal reads as the sensitivity (recall) of "
        "each class. Off-diagonal cells are errors.",
    ),
    "roc.png": (
        "ROC curve",
        "Each point is one possible threshold: sensitivity (up) against false-positive rate (right). "
        "The closer the curve hugs the top-left corner the better; the diagonal is guessing. The red "
        "dot is the operating point the model actually uses (threshold chosen on validation).",
    ),
    "roc_multiclass.png": (
        "ROC curves, one class against the rest",
        "For each class, sensitivity against false-positive rate when that class is called against all "
        "others. AUC 1 is perfect separation, 0.5 is guessing.",
    ),
    "pr.png": (
        "Precision-recall curve",
        "Precision (of the images called positive, how many are) against recall (sensitivity). The "
        "dashed line is the prevalence: what a model that guesses would reach. The red dot is the "
        "operating point.",
    ),
    "calibration.png": (
        "Calibration",
        "Top: of the images given a probability near x, the fraction that truly were positive. On the "
        "diagonal, a score of 0.8 means 80 % of such images are positive. Below the diagonal the model "
        "is over-confident. Bottom: how many images received each probability. ECE is the average gap.",
    ),
    "score_histograms.png": (
        "Scores by true class",
        "The model's probability of the positive class, separately for truly negative and truly "
        "positive images. Good separation shows as two distinct humps; images on the wrong side of "
        "the dashed threshold are the errors.",
    ),
    "auc_per_label.png": (
        "AUC per finding",
        "Discrimination of each finding (one label against its absence), with 95 % CI whiskers. Labels "
        "with few positive images have wide intervals.",
    ),
    "learning_curves.png": (
        "Learning curves",
        "Loss and validation metrics per training epoch. A validation loss that rises while the "
        "training loss falls indicates over-fitting; the dotted line marks the epoch kept.",
    ),
}


CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1b1f24; background: #fff; line-height: 1.5; margin: 0; }
main { max-width: 980px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.8rem; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3rem; margin-top: 2.2em; padding-bottom: 0.2em; border-bottom: 2px solid #e3e6ea; }
h3 { font-size: 1.05rem; margin: 1.6em 0 0.3em; }
.sub { color: #57606a; margin: 0 0 1em; }
.disclaimer { border: 2px solid #b00020; background: #fff4f4; color: #5c0011; padding: 12px 16px;
  border-radius: 6px; font-weight: 600; margin: 16px 0; }
.note { border-left: 4px solid #0969da; background: #f3f8ff; padding: 10px 14px; margin: 12px 0; }
.warn { border-left: 4px solid #bf8700; background: #fff8e5; padding: 10px 14px; margin: 12px 0; }
table { border-collapse: collapse; margin: 10px 0 14px; font-size: 0.95rem; }
th, td { border: 1px solid #d0d7de; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: #57606a; font-size: 0.88em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 28px; }
@media (max-width: 760px) { .grid { grid-template-columns: 1fr; } }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; display: block; }
figcaption { color: #3d444d; font-size: 0.93rem; margin-top: 6px; max-width: 46em; }
figcaption b { color: #1b1f24; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .v { font-size: 1.5rem; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .l { color: #57606a; font-size: 0.85rem; }
footer { margin-top: 3em; color: #57606a; font-size: 0.85rem; }
code { background: #f6f8fa; padding: 0 4px; border-radius: 3px; font-size: 0.9em; }
"""

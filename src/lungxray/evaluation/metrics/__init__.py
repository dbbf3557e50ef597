"""Metrics over numpy arrays: binary, multi-class and multi-label metrics, operating thresholds,
calibration and patient-grouped bootstrap confidence intervals. One implementation of each metric.

Modules (by concept):

* ``binary``: confusion counts, accuracy / sensitivity / specificity / precision / npv / f1,
  ``roc_auc``, ``average_precision``, ``binary_metrics`` (all of them at one threshold).
* ``calibration``: ``brier_score``, ``expected_calibration_error``, ``calibration_curve_data``.
* ``threshold``: ``choose_threshold`` (youden | max-f1 | 0.5 | sensitivity>=x | specificity>=x).
* ``multiclass`` / ``multilabel``: ``multiclass_metrics``, ``multilabel_metrics``.
* ``bootstrap``: patient-grouped bootstrap as resampling weights; ``bootstrap_ci`` for any callable.
* ``paired``: ``auc_difference``, two models on the same images with a paired bootstrap CI.
* ``summary``: ``evaluate_predictions``, the metrics.json body. ``validation``: ``validation_scores``.

Conventions used everywhere in lungxray:

* A prediction is **positive when ``score >= threshold``** (a score equal to the threshold is positive).
* A ratio whose denominator is zero is ``NaN``, never 0: "undefined" must not read as "always wrong".
* A metric that needs both classes (AUC, average precision) is ``NaN`` with an
  ``UndefinedMetricWarning`` when only one class is present; averages over classes use ``nanmean``
  on purpose, so one undefined label does not hide the others (as MONAI's ``compute_roc_auc``).
* Every metric takes ``sample_weight`` (None, (N,) or (B, N)): a weight counts an image that many
  times. A bootstrap replicate is such a weighting, so the point estimate (None) and the bootstrap
  ((B, N): one row per replicate, (B,) results) run the same code.

Example::

    t = choose_threshold(y_val, p_val, "youden")          # validation data only
    body = evaluate_predictions("binary", y_test, p_test, ("normal", "pneumonia"), threshold=t,
                                groups=test_patients)      # the metrics.json body
"""

from lungxray.evaluation.metrics.binary import (
    BINARY_METRICS,
    accuracy,
    average_precision,
    binary_metrics,
    confusion_counts,
    f1,
    npv,
    precision,
    roc_auc,
    sensitivity,
    specificity,
)
from lungxray.evaluation.metrics.bootstrap import (
    BootstrapCI,
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_replicates,
    bootstrap_samples,
    bootstrap_weights,
    percentile_ci,
)
from lungxray.evaluation.metrics.calibration import (
    brier_score,
    calibration_curve_data,
    expected_calibration_error,
)
from lungxray.evaluation.metrics.multiclass import multiclass_metrics
from lungxray.evaluation.metrics.multilabel import multilabel_metrics
from lungxray.evaluation.metrics.paired import auc_difference
from lungxray.evaluation.metrics.summary import evaluate_predictions
from lungxray.evaluation.metrics.threshold import choose_threshold
from lungxray.evaluation.metrics.validation import validation_scores

__all__ = [
    "BINARY_METRICS",
    "BootstrapCI",
    "accuracy",
    "auc_difference",
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_replicates",
    "bootstrap_samples",
    "bootstrap_weights",
    "brier_score",
    "calibration_curve_data",
    "choose_threshold",
    "confusion_counts",
    "evaluate_predictions",
    "expected_calibration_error",
    "f1",
    "multiclass_metrics",
    "multilabel_metrics",
    "npv",
    "percentile_ci",
    "precision",
    "roc_auc",
    "sensitivity",
    "specificity",
    "validation_scores",
]

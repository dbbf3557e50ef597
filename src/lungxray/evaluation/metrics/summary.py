"""The metrics.json body: every metric with a patient-bootstrap CI, JSON-safe.

For each task one closure ``values(w)`` computes all reported metrics as a dict keyed by name (a
string, or ``("per_class", class, metric)``) with the package's metric functions under weights ``w``:
``values(None)`` is the point estimate and ``bootstrap_replicates(values, ...)`` the bootstrap
distribution of each named column, so both come from the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lungxray.config import TASKS
from lungxray.errors import DataError, check_option
from lungxray.evaluation.metrics import _checks as ck
from lungxray.evaluation.metrics.binary import BINARY_METRICS, RANKING_METRICS, _counts, rates, threshold_free
from lungxray.evaluation.metrics.bootstrap import bootstrap_replicates, percentile_ci
from lungxray.evaluation.metrics.multiclass import CLASS_METRICS, multiclass_values
from lungxray.evaluation.metrics.multilabel import (
    LABEL_METRICS,
    multilabel_inputs,
    multilabel_values,
    thresholds_vector,
)

Values = Callable[[np.ndarray | None], dict[Any, Any]]  # weights -> {column name: value(s)}


def _clean(x: Any) -> Any:
    """Plain-Python, JSON-safe copy: numpy scalars -> float/int, NaN/inf -> None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


class _Estimates:
    """Point values and bootstrap CIs of the named columns of ``values``; ``used`` counts ``headline``."""

    def __init__(
        self, values: Values, n_items: int, headline: Any, *, groups: Any, n_boot: int, ci: float, seed: int
    ):
        self.point = values(None)
        samples = bootstrap_replicates(values, n_items, groups=groups, n=n_boot, seed=seed) if n_boot else {}
        self.cis = {name: percentile_ci(col, ci) for name, col in samples.items()}
        self.used = self.cis[headline].used if n_boot else 0

    def entry(self, name: Any) -> dict[str, float]:
        low, high = self.cis.get(name, (math.nan, math.nan))
        return {"value": self.point[name], "ci_low": low, "ci_high": high}

    def entries(self, names: Sequence[str], prefix: tuple = ()) -> dict[str, dict[str, float]]:
        return {m: self.entry((*prefix, m) if prefix else m) for m in names}


def evaluate_predictions(
    task: str,
    y_true: Any,
    scores: Any,
    classes: Sequence[str],
    *,
    threshold: float | None = None,
    thresholds: Any = None,
    groups: Any = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The body of ``metrics.json``: every metric with a bootstrap CI, JSON-safe (NaN -> None).

    The threshold(s) are given, never chosen here: they come from validation data
    (``choose_threshold``) and stay fixed across bootstrap resamples.

    Args:
        task: "binary" | "multiclass" | "multilabel".
        y_true: binary (N,) 0/1 of ``classes[1]``; multiclass (N,) int; multilabel (N, C) 1/0/NaN.
        scores: binary (N,) probability of ``classes[1]``; multiclass/multilabel (N, C) probabilities.
        threshold: binary operating threshold (default 0.5). ``thresholds``: multilabel, per label.
        groups: (N,) patient ids; the bootstrap then resamples patients ("unit": "patient").
        n_boot: bootstrap resamples (0: no CIs); ``ci``: coverage; ``seed``: resampling seed.

    Returns:
        binary: {auc, accuracy, sensitivity, specificity, precision, f1, average_precision, npv, brier,
        ece: {value, ci_low, ci_high}, threshold, n, class_counts, confusion {tp, fp, tn, fn},
        "at_0.5" (same metrics at 0.5, only when threshold != 0.5), bootstrap {n, unit, used, ci, seed}}
        where "used" counts the resamples in which the headline metric (binary: auc; multiclass:
        accuracy; multilabel: macro_auc) was defined.
        multiclass: accuracy, brier, macro_{precision,recall,specificity,f1,auc}, weighted_f1 (with CIs),
        per_class {name: {precision, recall, specificity, f1, auc with CIs, support}}, confusion.
        multilabel: macro_auc, macro_average_precision (with CIs), per_class {name: {auc,
        average_precision, sensitivity, specificity with CIs, n, n_pos, threshold}}.
    """
    check_option(task, TASKS, "task")
    classes = [str(c) for c in classes]
    if n_boot < 0:
        raise DataError(f"n_boot must be >= 0, got {n_boot}.")
    boot = {"groups": groups, "n_boot": int(n_boot), "ci": ci, "seed": seed}
    if task == "binary":
        body, used = _evaluate_binary(y_true, scores, classes, threshold, **boot)
    elif task == "multiclass":
        body, used = _evaluate_multiclass(y_true, scores, classes, **boot)
    else:
        body, used = _evaluate_multilabel(y_true, scores, classes, thresholds, **boot)
    body["bootstrap"] = {
        "n": int(n_boot),
        "unit": "patient" if groups is not None else "image",
        "used": int(used),
        "ci": float(ci),
        "seed": int(seed),
    }
    return _clean({"task": task, "classes": classes, **body})


def _evaluate_binary(y_true, scores, classes, threshold, **boot) -> tuple[dict, int]:
    if len(classes) != 2:
        raise DataError(f"a binary task needs 2 classes (negative, positive), got {classes}.")
    y, s = ck.binary_inputs(y_true, scores, what="scores")
    t = 0.5 if threshold is None else float(threshold)
    at = {"": t, "at_0.5/": 0.5} if t != 0.5 else {"": t}

    def values(w):
        out = threshold_free(y, s, w)  # the same for every threshold
        for prefix, thr in at.items():
            counts = _counts(y, s, thr, w)
            out.update({prefix + k: v for k, v in rates(counts).items()})
            out.update({f"{prefix}confusion/{k}": v for k, v in counts.items()} if w is None else {})
        return out

    est = _Estimates(values, len(y), "auc", **boot)
    n_pos = int(y.sum())
    confusion = {k: est.point[f"confusion/{k}"] for k in ("tp", "fp", "tn", "fn")}
    body = {
        **est.entries(BINARY_METRICS),
        "threshold": t,
        "positive_class": classes[1],
        "n": len(y),
        "class_counts": {classes[0]: len(y) - n_pos, classes[1]: n_pos},
        "confusion": confusion,
    }
    if t != 0.5:
        body["at_0.5"] = {
            "threshold": 0.5,
            # auc, average_precision, brier and ece do not depend on the threshold: the same columns
            **{m: est.entry(m if m in RANKING_METRICS else f"at_0.5/{m}") for m in BINARY_METRICS},
            "confusion": {k: est.point[f"at_0.5/confusion/{k}"] for k in ("tp", "fp", "tn", "fn")},
        }
    return body, est.used


def _evaluate_multiclass(y_true, scores, classes, **boot) -> tuple[dict, int]:
    p = ck.prob_2d(scores, len(classes), "scores")
    y = ck.class_indices(y_true, len(p), classes)
    head = ["accuracy", "brier"] + [f"macro_{m}" for m in CLASS_METRICS] + ["weighted_f1"]

    def values(w):
        v = multiclass_values(y, p, classes, w)
        out = {"accuracy": v["accuracy"], "brier": v["brier"], "weighted_f1": v["weighted"]["f1"]}
        out.update({f"macro_{m}": v["macro"][m] for m in CLASS_METRICS})
        out.update({("per_class", c, m): v["per_class"][c][m] for c in classes for m in CLASS_METRICS})
        if w is None:
            out.update(support=v["support"], confusion=v["confusion"])
        return out

    est = _Estimates(values, len(y), "accuracy", **boot)
    support = [int(x) for x in est.point["support"]]
    body = est.entries(head)
    body["per_class"] = {
        c: {**est.entries(CLASS_METRICS, ("per_class", c)), "support": support[i]}
        for i, c in enumerate(classes)
    }
    body.update(
        n=len(y),
        class_counts=dict(zip(classes, support, strict=True)),
        confusion={"labels": classes, "matrix": est.point["confusion"].tolist()},
    )
    return body, est.used


def _evaluate_multilabel(y_true, scores, classes, thresholds, **boot) -> tuple[dict, int]:
    y, p = multilabel_inputs(y_true, scores, len(classes))
    t = thresholds_vector(thresholds, len(classes))

    def values(w):
        v = multilabel_values(y, p, classes, t, w)
        out = {m: v[m] for m in ("macro_auc", "macro_average_precision")}
        out.update({("per_class", c, m): v["per_class"][c][m] for c in classes for m in LABEL_METRICS})
        return out

    est = _Estimates(values, len(y), "macro_auc", **boot)
    known = ~np.isnan(y)
    n_pos = {c: int(np.nansum(y[:, k])) for k, c in enumerate(classes)}
    body = est.entries(["macro_auc", "macro_average_precision"])
    body["per_class"] = {
        c: {
            **est.entries(LABEL_METRICS, ("per_class", c)),
            **{"n": int(known[:, k].sum()), "n_pos": n_pos[c], "threshold": float(t[k])},
        }
        for k, c in enumerate(classes)
    }
    body.update(n=len(y), thresholds=t.tolist(), class_counts=n_pos)
    return body, est.used

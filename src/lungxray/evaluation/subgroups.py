"""Subgroup reporting for multi-source runs: metrics per data source, and leave-one-source-out configs.

``metrics_by_source`` runs ``evaluate_predictions`` on each source's rows at the run's stored
threshold (the subgroup table regulators ask for); ``evaluate_run`` stores it as
``metrics.json["by_source"]`` when the evaluated rows come from more than one source, and the report
shows it as a table. ``leave_one_source_out(cfg)`` gives, per source of a multi-source recipe, the
recipe trained on all other sources (``benchmarks/leave_one_source_out.py`` trains and evaluates them).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from lungxray.config import Config, SourceConfig
from lungxray.errors import ConfigError, DataError
from lungxray.evaluation.metrics import evaluate_predictions

__all__ = ["by_source_section", "leave_one_source_out", "metrics_by_source"]

SUBGROUP_METRICS = ("auc", "sensitivity", "specificity", "accuracy", "precision", "f1")


def metrics_by_source(
    task: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    threshold: float | None = None,
    thresholds: Any = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{source: evaluate_predictions(rows of that source) + {"n_patients"}}``, sources in first-seen
    order; a source whose rows cannot be scored (e.g. no patients to resample) gets ``{"n", "error"}``.
    Metrics undefined on a subgroup (AUC of a one-class source) are None, as in metrics.json."""
    names = np.asarray(sources, dtype=object)
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(sources):
        rows = np.flatnonzero(names == name)
        g = None if groups is None else np.asarray(groups, dtype=object)[rows]
        try:
            body = evaluate_predictions(
                task, y_true[rows], scores[rows], classes, threshold=threshold, thresholds=thresholds,
                groups=g, n_boot=n_boot, ci=ci, seed=seed,
            )  # fmt: skip
        except DataError as exc:
            out[str(name)] = {"n": int(len(rows)), "error": str(exc)}
            continue
        body["n_patients"] = int(len(set(g.tolist()))) if g is not None else int(len(rows))
        out[str(name)] = body
    return out


def leave_one_source_out(cfg: Config) -> list[tuple[SourceConfig, Config]]:
    """Per source of ``cfg.data.sources``: (the held-out source, ``cfg`` trained on all the others),
    each named ``<name>-without-<source>`` with its own run directory. Needs at least two sources."""
    sources = list(cfg.data.sources)
    if len(sources) < 2:
        raise ConfigError("leave-one-source-out needs a recipe with at least two data.sources.")
    out = []
    for held in sources:
        name = f"{cfg.name}-without-{held.source_name}"
        others = [s for s in sources if s is not held]
        run_dir = cfg.run_dir.parent / name
        train_cfg = replace(cfg, name=name, out=str(run_dir), data=replace(cfg.data, sources=others))
        out.append((held, train_cfg.validate()))
    return out


def _cell(entry: Any) -> str:
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "<td>n/a</td>"
    text = f"{entry['value']:.3f}"
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f' <span class="ci">[{entry["ci_low"]:.3f}, {entry["ci_high"]:.3f}]</span>'
    return f'<td class="num">{text}</td>'


def by_source_section(m: dict) -> str:
    """HTML: the per-source table of ``metrics.json["by_source"]`` ('' when absent)."""
    groups = m.get("by_source") or {}
    if not groups:
        return ""
    names = [k for k in SUBGROUP_METRICS if any(k in g for g in groups.values())]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["source", "n", "patients", "class counts", *names])
    rows = []
    for source, g in groups.items():
        counts = ", ".join(f"{html.escape(str(c))} {v}" for c, v in (g.get("class_counts") or {}).items())
        cells = "".join(_cell(g.get(k)) for k in names) if "error" not in g else (
            f'<td colspan="{len(names)}">{html.escape(g["error"])}</td>')  # fmt: skip
        rows.append(
            f"<tr><td>{html.escape(source)}</td><td class=\"num\">{g.get('n')}</td>"
            f"<td class=\"num\">{g.get('n_patients', '')}</td><td>{counts}</td>{cells}</tr>"
        )
    return (
        "<h2>By data source</h2><p class=\"note\">The same model and stored threshold on each source's "
        "rows (patient-bootstrap CIs). Small sources give wide intervals; a metric needing both classes "
        "is n/a on a one-class source.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )

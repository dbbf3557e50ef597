"""The quality table's pure half: per-run results -> one row per (data set, recipe) -> markdown.

``benchmarks/quality.py`` trains and evaluates; each run leaves ``RUN/quality/result.json`` (a per-run
result, see ``flatten``). This module reads those, aggregates over seeds (mean, sample SD, the
envelope of the per-seed 95% CIs), adds the published figures (never run here) and renders the
markdown block placed between ``MARK_BEGIN`` and ``MARK_END`` in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

MARK_BEGIN = "<!-- QUALITY-TABLE -->"
MARK_END = "<!-- /QUALITY-TABLE -->"
SECTION = "## Quality table (issue 11)"

# the published figures quoted by issue 11; never run here
PUBLISHED: list[dict[str, Any]] = [
    {
        "recipe": "ResNet-18, 128 px (ImageNet-pretrained)",
        "source": "MedMNIST+ (Doerrich et al., Sci Rep 2025)",
        "auc": 0.979,
        "accuracy": 0.899,
        "note": "PneumoniaMNIST; 3-seed means; ACC at 0.5",
    },
    {
        "recipe": "ResNet-18, 224 px (ImageNet-pretrained)",
        "source": "MedMNIST+ (Doerrich et al., Sci Rep 2025)",
        "auc": 0.980,
        "accuracy": 0.911,
        "note": "PneumoniaMNIST; 3-seed means; ACC at 0.5",
    },
    {
        "recipe": "DenseNet-121, 128 px (ImageNet-pretrained)",
        "source": "MedMNIST+ (Doerrich et al., Sci Rep 2025)",
        "auc": 0.988,
        "accuracy": 0.898,
        "note": "PneumoniaMNIST; 3-seed means; ACC at 0.5",
    },
    {
        "recipe": "DINO ViT-B/16 linear probe",
        "source": "MedMNIST+ (Doerrich et al., Sci Rep 2025)",
        "auc": 0.989,
        "accuracy": 0.916,
        "note": "PneumoniaMNIST; 3-seed means; ACC at 0.5",
    },
    {
        "recipe": "ResNet-18/50 from scratch",
        "source": "MedMNIST v2 (Yang et al. 2023)",
        "auc": "0.944-0.962",
        "accuracy": None,
        "note": "PneumoniaMNIST, 28 and 224 px",
    },
    {
        "recipe": "Google AutoML Vision",
        "source": "MedMNIST v2 (Yang et al. 2023)",
        "auc": 0.991,
        "accuracy": 0.946,
        "note": "PneumoniaMNIST",
    },
    {
        "recipe": "Inception V3 (ImageNet-pretrained)",
        "source": "Kermany et al., Cell 2018",
        "auc": 0.968,
        "accuracy": 0.928,
        "note": "checkpoint picked on the test split",
    },
]

BINARY = ("auc", "accuracy", "sensitivity", "specificity", "f1", "accuracy_at05", "sensitivity_at05",
          "specificity_at05", "threshold")  # fmt: skip
MULTICLASS = ("accuracy", "macro_f1", "macro_auc", "macro_recall")
SHORTCUT = ("cam_in_lungs", "cam_bottom_ratio", "auc_plain", "auc_lungs_blanked", "auc_only_lungs")
EXTERNAL = ("ext_lung_masks_specificity", "ext_lung_masks_ood_rate", "ext_hannover_sensitivity",
            "ext_hannover_ood_rate", "ext_lung_masks_flagged_rate", "ext_hannover_flagged_rate",
            "ext_lung_masks_specificity_unflagged", "ext_hannover_sensitivity_unflagged")  # fmt: skip


# ------------------------------------------------------------------------------------ per run


def _value(entry: Any) -> float | None:
    """``{"value": v, ...}`` or a bare number -> float; None when missing or not finite."""
    v = entry.get("value") if isinstance(entry, dict) else entry
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ci(entry: Any) -> tuple[float, float] | None:
    if not isinstance(entry, dict):
        return None
    lo, hi = _value(entry.get("ci_low")), _value(entry.get("ci_high"))
    return None if lo is None or hi is None else (lo, hi)


def metric_entries(part: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A compact test part (``quality.compact_metrics``) -> {key: {value, ci_low, ci_high} or number}."""
    out: dict[str, Any] = {}
    for k, v in part.items():
        if k == "recall":
            out.update({f"{prefix}recall_{c}": e for c, e in v.items()})
        elif k not in ("n", "n_patients", "n_removed", "classes", "task"):
            out[prefix + k] = v
    return out


def flatten(result: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, tuple[float, float]]]:
    """A per-run result -> ({key: value}, {key: 95% CI}) over every reported figure.

    Keys: the test metrics (``auc``, ``accuracy``, ..., ``recall_<class>``), the same with a
    ``dedup_`` prefix (test with cross-split duplicates removed), the shortcut figures (``SHORTCUT``)
    and the external ones (``EXTERNAL``).
    """
    entries = metric_entries(result.get("test") or {})
    dedup = result.get("test_dedup")
    if dedup:
        entries.update(metric_entries(dedup, "dedup_"))
    sc = result.get("shortcut") or {}
    entries.update({k: sc.get(k) for k in SHORTCUT if k in sc})
    ext = result.get("external") or {}
    for name, key, metric in (("lung_masks", "ext_lung_masks", "specificity"),
                              ("hannover_covid19", "ext_hannover", "sensitivity")):  # fmt: skip
        part = ext.get(name) or {}
        if metric in part:
            entries[f"{key}_{metric}"] = part[metric]
            entries[f"{key}_ood_rate"] = part.get("ood_rate")
            if part.get("flagged_rate") is not None:  # a population gate was attached (lungxray.gate)
                entries[f"{key}_flagged_rate"] = part["flagged_rate"]
                entries[f"{key}_{metric}_unflagged"] = part.get(f"{metric}_unflagged")
    values = {k: _value(v) for k, v in entries.items()}
    cis = {k: c for k, v in entries.items() if (c := _ci(v)) is not None}
    return values, cis


# ------------------------------------------------------------------------------------ aggregate


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample SD (ddof 1) of the defined values; SD None with fewer than two."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, sd


def aggregate(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-run results -> one row per (dataset, recipe), in first-seen order.

    Each row: dataset, recipe, n_seeds, seeds, task, epochs (per seed, as trained), epochs_recipe,
    capped (fewer epochs configured than the recipe's), bf16_seeds (trained under bf16 autocast), runs,
    and for every figure K: ``K_mean``,
    ``K_sd``, ``K_values`` (per seed) and ``K_ci`` ([min low, max high] of the per-seed 95% CIs, when
    the figure has CIs). Shortcut / external notes (``shortcut_note``, ``external_note``) say why
    those figures are absent.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["recipe"]), []).append(r)
    rows = []
    for (dataset, recipe), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        flat = [flatten(r) for r in runs]
        keys = list(dict.fromkeys(k for values, _ in flat for k in values))
        row: dict[str, Any] = {
            "dataset": dataset,
            "recipe": recipe,
            "n_seeds": len(runs),
            "seeds": [r["seed"] for r in runs],
            "task": runs[0].get("task"),
            "classes": runs[0].get("classes"),
            "epochs": [r.get("epochs") for r in runs],
            "epochs_config": [r.get("epochs_config") for r in runs],
            "epochs_recipe": runs[0].get("epochs_recipe"),
            "folds": runs[0].get("folds"),
            "threshold_strategy": runs[0].get("threshold_strategy"),
            "threshold_chosen_on": runs[0].get("threshold_chosen_on"),
            "capped": any((r.get("epochs_config") or 0) < (r.get("epochs_recipe") or 0) for r in runs),
            "n_test": runs[0].get("test", {}).get("n"),
            "n_test_duplicates": [r.get("n_test_duplicates") for r in runs],
            "training_seconds": [r.get("training_seconds") for r in runs],
            "bf16_seeds": [r["seed"] for r in runs if r.get("bf16")],
            "runs": [r.get("run") for r in runs],
        }
        for k in keys:
            vals = [values.get(k) for values, _ in flat]
            row[f"{k}_mean"], row[f"{k}_sd"] = mean_sd(vals)
            row[f"{k}_values"] = vals
            cis = [c[k] for _, c in flat if k in c]
            if cis:
                row[f"{k}_ci"] = [min(c[0] for c in cis), max(c[1] for c in cis)]
        for part in ("shortcut", "external"):
            notes = {(r.get(part) or {}).get("skipped") for r in runs} - {None}
            if notes:
                row[f"{part}_note"] = "; ".join(sorted(notes))
        rows.append(row)
    return rows


def published_rows() -> list[dict[str, Any]]:
    """The literature figures as JSON rows, marked ``published: true`` (never run here)."""
    return [
        {"dataset": "chest_xray", "recipe": p["recipe"], "published": True, "source": p["source"],
         "auc_mean": p["auc"], "accuracy_mean": p["accuracy"], "note": p["note"]}
        for p in PUBLISHED
    ]  # fmt: skip


def load_results(runs_root: Path) -> list[dict[str, Any]]:
    """Every ``RUNS/<dataset>/<recipe>/seed<S>/quality/result.json`` and ``.../error.json`` under the root."""
    out = []
    for path in sorted(Path(runs_root).glob("*/*/seed*/quality/*.json")):
        if path.name in ("result.json", "error.json"):
            out.append(json.loads(path.read_text()))
    return out


# ------------------------------------------------------------------------------------ markdown


def fmt(row: dict[str, Any], key: str, ci: bool = False, pct: bool = False) -> str:
    """``mean ± sd [ci]`` of ``key`` in ``row``; "-" when absent."""
    m, sd = row.get(f"{key}_mean"), row.get(f"{key}_sd")
    if m is None:
        return "-"

    def f(x: float) -> str:
        return f"{100 * x:.1f}%" if pct else f"{x:.3f}"

    text = f(m) + (f" ± {f(sd)}" if sd is not None else "")
    if ci and row.get(f"{key}_ci"):
        lo, hi = row[f"{key}_ci"]
        text += f" [{f(lo)}, {f(hi)}]"
    return text


def _recipe_cell(row: dict[str, Any]) -> str:
    epochs = sorted({e for e in row["epochs"] if e is not None})
    ep = "/".join(map(str, epochs)) or "?"
    mark = (" †" if row.get("capped") else "") + (" ‡" if row.get("bf16_seeds") else "")
    return f"{row['recipe']}{mark} | {ep} of {row.get('epochs_recipe')} | {row['n_seeds']}"


def _table(header: Sequence[str], lines: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines, ""]


def _errors(errors: list[dict[str, Any]], dataset: str) -> list[str]:
    seen: dict[str, str] = {}
    for e in errors:
        if e["dataset"] == dataset:
            seen.setdefault(e["recipe"], e["error"])
    return [f"- {r}: could not run here: {msg}" for r, msg in seen.items()] + ([""] if seen else [])


def render_markdown(
    rows: list[dict[str, Any]], errors: Sequence[dict[str, Any]] = (), *, lungs_note: str = ""
) -> str:
    """The block between the markers: one table per data set, the shortcut and external tables, the
    published rows; capped rows marked †, rows with bf16-trained seeds ‡."""
    errors = list(errors)
    by = {d: [r for r in rows if r["dataset"] == d] for d in ("chest_xray", "covid19", "nih_sample")}
    out = [
        "Generated by `benchmarks/quality.py` from the runs found (re-render: `--render-only`). Cells: mean ± SD",
        "over seeds; brackets: the envelope (lowest low, highest high) of the per-seed 95% patient-bootstrap CIs.",
        "Threshold: each recipe's own strategy, stored in model.json at training (a fixed 0.5 for the published",
        "recipes; for ours chosen on the validation split, or on the out-of-fold predictions of a k-fold recipe:",
        "`threshold_chosen_on` in quality.json); checkpoints are picked on validation and the test split is",
        "evaluated once per run. † = trained fewer epochs than the recipe (`--max-epochs`): not the published recipe.",
        "‡ = some seeds trained under bf16 autocast (`train.cpu_fast_paths`; which: `bf16_seeds` in quality.json),",
        "the others in float32; evaluation is float32 for every run.",
        "",
        "### chest_xray (Kermany official test split)",
        "",
    ]
    head = ["recipe", "epochs", "seeds", "test images", "AUC", "accuracy", "sensitivity", "specificity", "acc / sens / spec at 0.5",
            "threshold"]  # fmt: skip
    lines = [
        f"| {_recipe_cell(r)} | {r.get('n_test') or '-'} | {fmt(r, 'auc', True)} | {fmt(r, 'accuracy', True)} "
        f"| {fmt(r, 'sensitivity', True)} "
        f"| {fmt(r, 'specificity', True)} | {fmt(r, 'accuracy_at05')} / {fmt(r, 'sensitivity_at05')} / "
        f"{fmt(r, 'specificity_at05')} | {fmt(r, 'threshold')} |"
        for r in by["chest_xray"]
    ]
    out += _table(head, lines) + _errors(errors, "chest_xray")
    dups = {
        r["recipe"]: max([d or 0 for d in r.get("n_test_duplicates", [])], default=0)
        for r in by["chest_xray"]
    }
    if any(dups.values()):
        out += [
            "Test images that duplicate a train/val image (exact or near, `lungxray audit`): "
            + ", ".join(f"{k} {v}" for k, v in dups.items())
            + "; the figures without them are the `dedup_*` fields of quality.json.",
            "",
        ]
    out += ["Published (not run here; other splits or pretraining, for orientation only):", ""]
    pub = [f"| {p['recipe']} | {p['source']} | {p['auc']} | {p['accuracy'] if p['accuracy'] is not None else '-'} "
           f"| {p['note']} |" for p in PUBLISHED]  # fmt: skip
    out += _table(["model", "source", "AUC", "accuracy", "note"], pub)

    out += ["#### Shortcut audit (chest_xray test split)", ""]
    sc = [
        r
        for r in by["chest_xray"]
        if r.get("cam_in_lungs_mean") is not None or r.get("auc_lungs_blanked_mean")
    ]
    if sc:
        out += _table(
            ["recipe", "Grad-CAM mass in lungs", "bottom-band ratio", "AUC plain", "AUC lungs blanked",
             "AUC only lungs"],
            [f"| {r['recipe']} | {fmt(r, 'cam_in_lungs')} | {fmt(r, 'cam_bottom_ratio')} | {fmt(r, 'auc_plain')} "
             f"| {fmt(r, 'auc_lungs_blanked', True)} | {fmt(r, 'auc_only_lungs', True)} |" for r in sc],
        )  # fmt: skip
    else:
        notes = {r.get("shortcut_note") for r in by["chest_xray"]} - {None}
        out += [f"Not computed: {lungs_note or '; '.join(sorted(notes)) or 'no chest_xray run yet'}", ""]

    out += [
        "#### External films (chest_xray runs at their stored threshold; reported separately, never pooled)",
        "",
    ]
    ext = [r for r in by["chest_xray"] if r.get("ext_lung_masks_specificity_mean") is not None
           or r.get("ext_hannover_sensitivity_mean") is not None]  # fmt: skip
    def ext_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, bool, bool]]) -> list[str]:
        """One row per recipe: (header, key, with CI, as percent) per column after the recipe."""
        return _table(["recipe", *(c[0] for c in columns)],
                      ["| " + " | ".join([r["recipe"], *(fmt(r, k, ci, pct) for _, k, ci, pct in columns)]) + " |"
                       for r in rows])  # fmt: skip

    if ext:
        out += ext_table(ext, [("specificity, lung_masks normal films", "ext_lung_masks_specificity", True, False),
                               ("OOD-flagged", "ext_lung_masks_ood_rate", False, True),
                               ("sensitivity, hannover_covid19", "ext_hannover_sensitivity", True, False),
                               ("OOD-flagged", "ext_hannover_ood_rate", False, True)])  # fmt: skip
    else:
        out += ["Not computed yet.", ""]
    gated = [r for r in ext if r.get("ext_lung_masks_flagged_rate_mean") is not None]
    if gated:
        out += ["With the population gate attached (`lungxray attach-gate`, docs/gate.md): the share of films",
                "flagged by the OOD check OR the gate, and the rate on the films left unflagged.", ""]
        out += ext_table(gated, [("lung_masks normal: flagged", "ext_lung_masks_flagged_rate", False, True),
                                 ("specificity of the unflagged", "ext_lung_masks_specificity_unflagged", False, False),
                                 ("hannover: flagged", "ext_hannover_flagged_rate", False, True),
                                 ("sensitivity of the unflagged", "ext_hannover_sensitivity_unflagged", False, False)])  # fmt: skip

    out += ["### covid19 (3 classes; test with the cross-split duplicates kept / removed)", "",
            "Read with care: every Normal and Viral Pneumonia film of this set is a Kermany (pediatric, "
            "Guangzhou) film, most from Kermany's official test split, while the Covid films are adults' "
            "from other sources, so \"Covid vs the rest\" is also \"adult elsewhere vs child in Guangzhou\" "
            "(docs/benchmarks.md, \"covid19 is made of Kermany films\"). Duplicates removed: the test films that "
            "`lungxray audit` pairs with a train film (by hash, or by rank correlation for re-contrasted copies).",
            ""]  # fmt: skip
    lines = []
    for r in by["covid19"]:
        classes = r.get("classes") or []
        dups = sorted({d for d in r.get("n_test_duplicates", []) if d is not None})
        rec = "; ".join(f"{c} {fmt(r, f'recall_{c}')} / {fmt(r, f'dedup_recall_{c}')}" for c in classes)
        lines.append(
            f"| {_recipe_cell(r)} | {'/'.join(map(str, dups)) or '-'} | {fmt(r, 'accuracy', True)} | "
            f"{fmt(r, 'dedup_accuracy', True)} | {fmt(r, 'macro_f1')} | {fmt(r, 'dedup_macro_f1')} | {rec} |"
        )
    out += _table(["recipe", "epochs", "seeds", "test images removed (duplicate train/val)", "accuracy (kept)", "accuracy (removed)",
                   "macro-F1 (kept)", "macro-F1 (removed)", "recall per class (kept / removed)"], lines)  # fmt: skip
    out += _errors(errors, "covid19")

    out += [
        "### nih_sample (any finding vs No Finding; patient-grouped split; the 2018 thesis: ~60% accuracy)",
        "",
    ]
    lines = [
        f"| {_recipe_cell(r)} | {r.get('n_test') or '-'} | {fmt(r, 'auc', True)} | {fmt(r, 'accuracy', True)} | "
        f"{fmt(r, 'sensitivity', True)} | {fmt(r, 'specificity', True)} |"
        for r in by["nih_sample"]
    ]
    out += _table(
        ["recipe", "epochs", "seeds", "test images", "AUC", "accuracy", "sensitivity", "specificity"], lines
    )
    out += _errors(errors, "nih_sample")
    return "\n".join(out).rstrip() + "\n"


def splice(doc: str, block: str) -> str:
    """``doc`` with the text between the markers replaced by ``block``; the section and markers are
    appended when absent."""
    if MARK_BEGIN in doc and MARK_END in doc:
        head, rest = doc.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        return f"{head}{MARK_BEGIN}\n{block}{MARK_END}{tail}"
    return f"{doc.rstrip()}\n\n{SECTION}\n\n{MARK_BEGIN}\n{block}{MARK_END}\n"

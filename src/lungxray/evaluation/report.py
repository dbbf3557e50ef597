"""One self-contained HTML report of a run's evaluation, readable offline and by a clinician.

Figures are embedded as base64 PNG, the CSS is inline, and there is no script and no external link, so
the file can be mailed or archived and opens anywhere. Every string from the run is ``html.escape``-d.

Example::

    path = build_report("runs/cpu-default", "test")    # after evaluate_run wrote eval/test/
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from lungxray import DISCLAIMER, __version__
from lungxray.errors import RunError
from lungxray.evaluation.report_assets import CSS, FIGURE_CAPTIONS
from lungxray.evaluation.shortcut import shortcut_section
from lungxray.evaluation.subgroups import by_source_section
from lungxray.io import atomic_write_text
from lungxray.runcard import RunCard

__all__ = ["FIGURE_CAPTIONS", "build_report", "headline_rows"]

GALLERY = "error_gallery.png"
# Multi-panel figures take the full width; the others sit two per row.
WIDE_FIGURES = frozenset({"confusion.png", "learning_curves.png", "auc_per_label.png"})

# Known public data sets -> where the images come from (limits of what the metrics say).
_ORIGINS = (
    (
        ("chest_xray", "kermany", "paultimothymooney"),
        "Kermany et al. (2018) pediatric chest X-rays: children aged 1 to 5 years from a single "
        "centre (Guangzhou Women and Children's Medical Center). Performance on adults, other "
        "hospitals or other scanners is unknown.",
    ),
    (
        ("covid19", "covid"),
        "A public COVID-19 radiography collection assembled from several web sources of varying "
        "quality and age groups; images of one class often come from one source, so a model can learn "
        "the source instead of the disease.",
    ),
    (
        ("nih", "chestx-ray14", "chestxray14"),
        "NIH ChestX-ray14 (Wang et al. 2017), one US hospital; labels were text-mined from radiology "
        "reports and are estimated to be about 90 % accurate.",
    ),
)



def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _e(v)


def _metric_cell(entry: Any) -> str:
    """``{"value", "ci_low", "ci_high"}`` -> a right-aligned cell "0.912 [0.880, 0.940]"."""
    if not isinstance(entry, dict):
        return f'<td class="num">{_num(entry)}</td>'
    ci = ""
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        ci = f' <span class="ci">[{_num(entry["ci_low"])}, {_num(entry["ci_high"])}]</span>'
    return f'<td class="num">{_num(entry.get("value"))}{ci}</td>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Rows are lists of ready-made ``<td>`` cells (already escaped)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(x: Any, num: bool = False) -> str:
    return f'<td class="num">{_num(x)}</td>' if num else f"<td>{_e(x)}</td>"


def _where(path: object, root: object = None) -> str:
    """A path as the report shows it: relative to the data ``root`` when inside it, else its last
    component (a report is shared: no absolute paths, user names or mount points in it)."""
    if not path:
        return ""
    p = Path(str(path))
    if root:
        base = Path(str(root))
        base = base.parent if base.suffix.lower() == ".csv" else base  # a label table: its folder
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            pass
    return p.name if p.is_absolute() else p.as_posix()


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _origin(source: str, classes: list[str]) -> str | None:
    low = source.lower()
    for keys, text in _ORIGINS:
        if any(k in low for k in keys):
            return text
    if {c.lower() for c in classes} == {"normal", "pneumonia"}:
        return _ORIGINS[0][1]
    return None


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "n/a"
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# ----------------------------------------------------------------------------------------- sections


def headline_rows(body: dict, per_label: bool = True) -> list[tuple[str, Any, Any]]:
    """(label, metric at the stored threshold, metric at 0.5 or None) for the headline table;
    ``per_label``: a multi-label table also lists each label's AUC."""
    task = body.get("task", "binary")
    if task == "binary":
        at05 = body.get("at_0.5", {})
        names = [("AUC", "auc"), ("Accuracy", "accuracy"), ("Sensitivity (recall)", "sensitivity"),
                 ("Specificity", "specificity"), ("Precision (PPV)", "precision"), ("F1", "f1"),
                 ("Average precision", "average_precision")]  # fmt: skip
        threshold_free = {"auc", "average_precision"}
        return [(label, body.get(k), None if k in threshold_free else at05.get(k)) for label, k in names]
    if task == "multiclass":
        names = [("Accuracy", "accuracy"), ("Macro AUC (one-vs-rest)", "macro_auc"),
                 ("Macro sensitivity (recall)", "macro_recall"), ("Macro specificity", "macro_specificity"),
                 ("Macro precision", "macro_precision"), ("Macro F1", "macro_f1"), ("Weighted F1", "weighted_f1")]  # fmt: skip
        return [(label, body.get(k), None) for label, k in names]
    rows = [("Macro AUC", body.get("macro_auc"), None),
            ("Macro average precision", body.get("macro_average_precision"), None)]  # fmt: skip
    if not per_label:
        return rows
    return rows + [(f"AUC {c}", v.get("auc"), None) for c, v in body.get("per_class", {}).items()]


def _or_na(value: Any) -> Any:
    return "n/a" if value is None else value


def _header(card: RunCard, m: dict) -> str:
    name = card.name
    return (
        f"<h1>{_e(name)}: evaluation on {_e(m.get('eval_name', m.get('split')))}</h1>"
        f'<p class="sub">{_e(card.architecture)} &middot; {_e(m.get("task"))} &middot; classes '
        f"{_e(', '.join(m.get('classes', [])))} &middot; evaluated {_e(m.get('created', ''))}</p>"
        f'<div class="disclaimer" role="note">{_e(card.disclaimer or DISCLAIMER)}</div>'
    )


def _cards(m: dict) -> str:
    task = m.get("task")
    if task == "binary":
        keys = [("AUC", "auc"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("F1", "f1")]
    elif task == "multiclass":
        keys = [("Accuracy", "accuracy"), ("Macro AUC", "macro_auc"), ("Macro F1", "macro_f1")]
    else:
        keys = [("Macro AUC", "macro_auc"), ("Macro AP", "macro_average_precision")]
    cards = []
    for label, k in keys:
        v = m.get(k) or {}
        ci = ""
        if v.get("ci_low") is not None and v.get("ci_high") is not None:
            ci = f"95 % CI {_num(v['ci_low'], 2)} to {_num(v['ci_high'], 2)}"
        cards.append(
            f'<div class="card"><div class="v">{_num(v.get("value"))}</div>'
            f'<div class="l">{_e(label)}<br>{_e(ci)}</div></div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _data_section(card: RunCard, m: dict) -> str:
    training = card.training
    counts = training.counts
    classes = list(card.classes)
    rows = []
    for split in ("train", "val", "test"):
        c = counts.get(split, {})
        if c:
            rows.append(
                [_td(split)] + [_td(c.get(k, 0), True) for k in classes] + [_td(sum(c.values()), True)]
            )
    parts = [
        "<h2>Data</h2>",
        f"<p>Training data: <code>{_e(_where(training.data) or 'unknown')}</code>. Images per split and class "
        "at training time (for a multi-label task an image counts once per finding):</p>",
        _table(["split", *classes, "total"], rows) if rows else "",
        '<p class="note">Splits are grouped by patient: all images of one patient are in the same split, '
        "so the test images come from patients the model never saw during training or threshold "
        "selection.</p>",
    ]
    evaluated = ", ".join(f"{_e(k)} {_e(v)}" for k, v in m.get("class_counts", {}).items())
    what = (
        f"the {_e(m.get('split'))} split recorded when the run was trained"
        if not m.get("external")
        else f"another data set, <code>{_e(_where(m.get('data')))}</code>"
        + (
            " (all its images)"
            if str(m.get("eval_name", "")).endswith("-all")
            else f" ({_e(m.get('split'))} folder)"
        )
    )
    parts.append(
        f"<p>Evaluated: {what}: <b>{_e(m.get('n'))} images</b> of {_e(m.get('n_patients'))} patients "
        f"({evaluated}).</p>"
    )
    if m.get("unreadable"):
        items = "".join(
            f"<li><code>{_e(_where(u['path'], m.get('data')))}</code>: {_e(u['reason'])}</li>"
            for u in m["unreadable"][:20]
        )
        parts.append(
            f'<div class="warn">{len(m["unreadable"])} unreadable image(s) were skipped:<ul>{items}</ul></div>'
        )
    if m.get("overlap_with_training"):
        parts.append(
            f'<div class="warn">{_e(m["overlap_with_training"])} of the evaluated images were used to train or '
            "validate this model (the same file, or a copy of it); the metrics below are optimistic.</div>"
        )
    if card.training.copies_across_splits:
        parts.append(
            f'<div class="warn">When this model was trained, {_e(card.training.copies_across_splits)} image(s) '
            "of its validation or test split were copies of images of an earlier split (leakage; "
            "<code>lungxray audit</code> lists them): its own test figures are optimistic.</div>"
        )
    if m.get("overlap_with_test"):
        parts.append(
            f'<div class="warn">{_e(m["overlap_with_test"])} of the evaluated images are copies of this '
            "model's own test split: this set is not independent of it.</div>"
        )
    return "".join(parts)


def _shift_section(m: dict) -> str:
    """Does the evaluated set differ from the training data? (set-level KS test vs validation)"""
    sh = m.get("shift")
    if not sh:
        return ""
    if "summary" not in sh:
        return f"<h2>Does this set differ from the training data?</h2><p>Not tested: {_e(sh.get('skipped'))}.</p>"
    rows = "".join(
        f"<tr><td>{_e(f['name'])}</td><td>{f['statistic']:.3f}</td><td>{f['p_value']:.2g}</td></tr>"
        for f in sh.get("per_feature", [])
    )
    verdict = (
        '<div class="warn">Yes: the metrics in this report describe a population unlike the one the '
        "model was trained and calibrated on; its threshold and its OOD flags may not hold here.</div>"
        if sh.get("fired") else ""
    )
    gate = m.get("population_gate") or {}
    flags = (
        f"<p>Flagged per image: {100 * m['ood_flagged']:.1f}% by the OOD check" if m.get("ood_flagged") is not None else "<p>"
    ) + (
        f"; {gate['flagged']} of {gate['n']} ({100 * gate['share']:.1f}%) by the population gate, as unlike the "
        "films the model was trained on (docs/gate.md).</p>" if gate.get("n") else ".</p>"
    )
    return (
        "<h2>Does this set differ from the training data?</h2>" + flags +
        f"<p>{_e(sh['summary'])}. Two-sample Kolmogorov-Smirnov tests of the per-image OOD distance and "
        f"score against {_e(sh['n_ref'])} validation images (Bonferroni-combined p = {sh['p_value']:.2g}, "
        f"fires below {sh['alpha']}).</p>{verdict}"
        f"<table><tr><th>column</th><th>KS statistic</th><th>p</th></tr>{rows}</table>"
    )


def _model_section(card: RunCard, m: dict) -> str:
    t = card.training
    params = t.parameters
    rows = [
        ("Architecture", card.architecture),
        ("Parameters", f"{params:,}" if isinstance(params, int) else "n/a"),
        (
            "Input",
            f"{card.input_size} x {card.input_size} px, {card.in_chans} channel(s), resize: {card.resize}",
        ),  # fmt: skip
        ("Preprocessing", card.preprocessing.describe()),
        ("Epochs run / best epoch kept", f"{_or_na(t.epochs_run)} / {_or_na(t.best_epoch)}"),
        ("Training time", _duration(t.seconds)),
        ("Training throughput", f"{_or_na(t.images_per_s)} images/s"),
        ("Training device", _or_na(t.device)),
        (
            "Evaluation",
            f"{_duration(m.get('seconds'))}, {m.get('images_per_s', 'n/a')} images/s on "
            f"{m.get('device', 'n/a')}",
        ),  # fmt: skip
        ("Created", card.created or "n/a"),
    ]
    body = "".join(f"<tr><th>{_e(a)}</th>{_td(b)}</tr>" for a, b in rows)
    return f"<h2>Model and training</h2><table><tbody>{body}</tbody></table>"


def _metrics_section(card: RunCard, m: dict) -> str:
    strategy = m.get("threshold_strategy") or card.threshold_strategy
    task = m.get("task")
    ci = int(round(100 * m.get("bootstrap", {}).get("ci", 0.95)))
    boot = m.get("bootstrap", {})
    parts = ["<h2>Results</h2>"]
    if task == "binary":
        t = m.get("threshold")
        parts.append(
            f'<p class="note">Operating threshold <b>{_num(t)}</b>: an image is called '
            f"<b>{_e(m.get('positive_class'))}</b> when its score is at least this. The threshold was "
            f"<b>chosen on the validation split with strategy &ldquo;{_e(strategy)}"
            "&rdquo;</b> and then fixed: it was not tuned on the images evaluated here. The column "
            "&ldquo;at 0.5&rdquo; shows the same model at the default threshold 0.5 for comparison.</p>"
        )
    elif task == "multilabel":
        parts.append(
            '<p class="note">Per-finding thresholds were chosen on the validation split with strategy '
            f"&ldquo;{_e(strategy)}&rdquo; and then fixed.</p>"
        )
    else:
        parts.append('<p class="note">Each image is assigned the class with the highest probability.</p>')
    has05 = task == "binary" and "at_0.5" in m
    header = [
        "Metric",
        f"at threshold {_num(m.get('threshold'))} [{ci} % CI]" if task == "binary" else f"value [{ci} % CI]",
    ]
    if has05:
        header.append(f"at 0.5 [{ci} % CI]")
    rows = []
    for label, value, at05 in headline_rows(m, per_label=False):  # the per-class table follows
        row = [_td(label), _metric_cell(value)]
        if has05:
            row.append(_metric_cell(at05) if at05 is not None else _td("same (threshold-free)"))
        rows.append(row)
    parts.append(_table(header, rows))
    if task in ("multiclass", "multilabel"):
        names = (("precision", "recall", "specificity", "f1", "auc") if task == "multiclass"
                 else ("auc", "average_precision", "sensitivity", "specificity"))  # fmt: skip
        extra = "support" if task == "multiclass" else "n_pos"
        rows = [
            [_td(c)] + [_metric_cell(v.get(k)) for k in names] + [_td(v.get(extra), True)]
            for c, v in m.get("per_class", {}).items()
        ]
        parts.append("<h3>Per class</h3>" + _table(["class", *names, extra], rows))
    if task == "binary" and m.get("confusion"):
        c = m["confusion"]
        parts.append(
            f"<p>At the operating threshold: {_e(c.get('tp'))} true positives, {_e(c.get('fn'))} missed "
            f"(false negatives), {_e(c.get('fp'))} false alarms (false positives), {_e(c.get('tn'))} true "
            "negatives.</p>"
        )
    parts.append(
        f'<p class="sub">{ci} % confidence intervals: percentile bootstrap with {_e(boot.get("n"))} '
        f"resamples of {_e(boot.get('unit', 'patient'))}s (seed {_e(boot.get('seed'))}). Sensitivity is the "
        "share of truly positive images called positive; specificity the share of truly negative images "
        "called negative; precision the share of positive calls that are right.</p>"
    )
    return "".join(parts)


def _n_errors(m: dict) -> int | None:
    """Wrong calls at the operating point, from the metrics (None when they do not say)."""
    c = m.get("confusion")
    if m.get("task") == "binary" and isinstance(c, dict) and "fp" in c:
        return int(c["fp"]) + int(c["fn"])
    if m.get("task") == "multiclass" and isinstance(c, dict) and "matrix" in c:
        matrix = c["matrix"]
        return int(sum(map(sum, matrix)) - sum(matrix[i][i] for i in range(len(matrix))))
    return None


def _figures_section(folder: Path, m: dict) -> str:
    files = {p.name: p for p in sorted(folder.glob("*.png")) if p.name != GALLERY} if folder.is_dir() else {}
    order = [n for n in FIGURE_CAPTIONS if n in files] + [n for n in files if n not in FIGURE_CAPTIONS]
    wide, grid = [], []
    for n in order:
        title, text = FIGURE_CAPTIONS.get(n, (n.removesuffix(".png").replace("_", " ").capitalize(), ""))
        html_fig = (
            f"<figure>{_img(files[n], title)}<figcaption><b>{_e(title)}.</b> {_e(text)}</figcaption></figure>"
        )
        (wide if n in WIDE_FIGURES else grid).append(html_fig)
    parts = (
        ["<h2>Figures</h2>", *wide[:1], f'<div class="grid">{"".join(grid)}</div>', *wide[1:]]
        if order
        else []
    )
    gallery = folder / GALLERY
    parts.append("<h2>Most confident errors</h2>")
    if gallery.is_file():
        parts.append(
            f"<figure>{_img(gallery, 'error gallery')}<figcaption>The images the model got wrong with the "
            "highest confidence, missed findings (false negatives) first, each with its true label and "
            "score. Look for patterns: devices, text markers, unusual exposure or positioning, or labels "
            "that look wrong.</figcaption></figure>"
        )
    elif _n_errors(m) == 0:
        parts.append("<p>No errors at the operating threshold.</p>")
    else:
        parts.append("<p>No error gallery was saved with this evaluation.</p>")
    return "".join(parts)


def _clinician_section(card: RunCard, m: dict) -> str:
    source = str(m.get("data") or card.training.data or "")
    origin = _origin(source + " " + str(card.training.data or ""), list(card.classes))
    items = [
        "This model <b>supports and does not replace</b> a radiologist. Its output is a probability "
        "from one image, without the patient's history, examination, prior images or other views.",
        "The figures above describe this data set only. Accuracy in another hospital, population, "
        "age group or scanner can be much lower; check it on local data before any use.",
    ]
    if origin:
        items.append(f"Data origin: {_e(origin)}")
    wide = [
        k for k in ("auc", "sensitivity", "specificity", "accuracy", "macro_auc")
        if isinstance(m.get(k), dict) and m[k].get("ci_low") is not None and m[k].get("ci_high") is not None
        and m[k]["ci_high"] - m[k]["ci_low"] > 0.1
    ]  # fmt: skip
    n = m.get("n") or 0
    if n < 300:
        items.append(
            f"The evaluation set is small ({_e(n)} images of {_e(m.get('n_patients'))} patients): the "
            "confidence intervals are wide, and the true performance may lie anywhere inside them."
        )
    elif wide:
        items.append(
            f"Some confidence intervals span more than 10 percentage points ({_e(', '.join(wide))}): the "
            "true performance may lie anywhere inside them."
        )
    if m.get("task") == "binary":
        items.append(
            "At the chosen threshold the model misses some positive images (see the sensitivity and the "
            "false negatives above); a negative call never rules a finding out."
        )
    lis = "".join(f"<li>{x}</li>" for x in items)
    return f"<h2>For clinicians: what this means and its limits</h2><ul>{lis}</ul>"


def _render(card: RunCard, m: dict, folder: Path) -> str:
    title = f"{card.name} - evaluation ({m.get('eval_name', m.get('split'))})"
    body = "".join(
        [
            _header(card, m),
            _cards(m),
            _data_section(card, m),
            _shift_section(m),
            _model_section(card, m),
            _metrics_section(card, m),
            by_source_section(m),
            _figures_section(folder / "figures", m),
            shortcut_section(m) if "shortcut" in m else "",
            _clinician_section(card, m),
            f"<footer>Generated by lungxray {_e(__version__)} from <code>{_e(_where(m.get('run')))}</code>. "
            "Files beside this report: metrics.json (every number above), predictions.csv (one row "
            f"per image), figures/. {_e(DISCLAIMER)}</footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def build_report(run_dir: str | Path, split: str) -> Path:
    """Write ``<run_dir>/eval/<split>/report.html`` from model.json, metrics.json and figures/*.png.

    ``split`` is the evaluation folder name ("test", or "<folder>-<split>" for another data set).
    Returns the path. Raises RunError when the run or that evaluation does not exist.
    """
    run_dir = Path(run_dir)
    card = RunCard.read(run_dir)
    folder = run_dir / "eval" / split
    path = folder / "metrics.json"
    if not path.is_file():
        raise RunError(f"{path} does not exist: run `lungxray evaluate {run_dir}` first.")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); evaluate the run again.") from None
    out = folder / "report.html"
    atomic_write_text(out, _render(card, metrics, folder))
    return out

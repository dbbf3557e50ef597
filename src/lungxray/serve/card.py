"""The model card served at ``GET /api/model``: what the model does, how well, and where it fails.

Built from model.json (classes, threshold and how it was chosen, training counts) and, when the run
was evaluated, ``RUN/eval/test/metrics.json`` (test metrics with bootstrap CIs, and the shortcut audit
when ``evaluate --lungs`` ran) and every external evaluation (``evaluate --data OTHER``). Server paths are
never exposed: the training data is named by its folder name only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lungxray import DISCLAIMER
from lungxray.runcard import RunCard

INTENDED_USE = (
    "A second look for trained readers of frontal chest radiographs that resemble the training data: "
    "it flags images for attention and shows where the model looked. Every result must be reviewed "
    "by a clinician; it is not a diagnosis."
)


def _training_summary(card: RunCard) -> dict[str, Any]:
    t = card.training
    data = t.data or t.csv
    keys = ("counts", "epochs_run", "best_epoch", "seconds", "images_per_s", "device", "unreadable")
    summary = {k: getattr(t, k) for k in keys if getattr(t, k) is not None}
    summary["data"] = Path(str(data)).name if data else None
    summary["n_images"] = t.n_images
    return summary


def read_test_metrics(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/eval/test/metrics.json`` as a dict, or None when the run was not evaluated (or it is bad)."""
    path = Path(run_dir) / "eval" / "test" / "metrics.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def shortcut_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The test evaluation's shortcut audit, reduced to what a reader of the card needs, or None.

    ``cam_in_lungs``: share of the Grad-CAM mass inside the lung fields (``lung_area`` is their share of
    the image); ``auc_*``: test AUC as is, with the lung fields blanked, and with only the lung fields
    kept. A model that reads the lungs loses its AUC when they are blanked.
    """
    audit = (metrics or {}).get("shortcut")
    if not isinstance(audit, dict) or "occlusion" not in audit:
        return None
    occ, cam = audit.get("occlusion", {}), audit.get("cam_mass", {})

    def auc(key: str) -> dict[str, Any] | None:
        r = occ.get(key)
        if not isinstance(r, dict) or r.get("auc") is None:
            return None
        ci = r.get("ci") or [None, None]
        return {"value": r["auc"], "ci_low": ci[0], "ci_high": ci[1]}

    return {
        "n": audit.get("n"),
        "method": audit.get("method"),
        "lung_area": audit.get("lung_area"),
        "cam_in_lungs": cam.get("lungs", {}).get("mass"),
        "cam_bottom_band": cam.get("bottom", {}).get("mass"),
        "auc_plain": auc("plain"),
        "auc_lungs_blanked": auc("lungs_blanked"),
        "auc_only_lungs": auc("only_lungs"),
    }


def external_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``RUN/eval/<name>/metrics.json`` written by ``lungxray evaluate RUN --data OTHER``, reduced
    to its name, size, class counts, the binary rates at the stored threshold and the shift test."""
    out = []
    for path in sorted(Path(run_dir).glob("eval/*/metrics.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(doc, dict) or not doc.get("external"):
            continue
        shift = doc.get("shift") if isinstance(doc.get("shift"), dict) else {}
        out.append({
            "name": str(doc.get("eval_name") or path.parent.name),
            "n": doc.get("n"),
            "class_counts": doc.get("class_counts"),
            **{k: doc.get(k) for k in ("auc", "sensitivity", "specificity", "accuracy")},
            "shift_fired": shift.get("fired"),
            "shift_p": shift.get("p_value"),
            "ood_flagged": doc.get("ood_flagged"),
            "gate_flagged": (doc.get("population_gate") or {}).get("share"),
            # the run's own films among them (evaluation.overlap): optimistic / not an independent set
            "overlap_with_training": doc.get("overlap_with_training"),
            "overlap_with_test": doc.get("overlap_with_test"),
        })  # fmt: skip
    return out


def population_gate(run_dir: Path) -> dict[str, Any] | None:
    """The attached population gate's record (``RUN/gate/gate.json``) with a plain note, or None."""
    from lungxray.gate import GATE_DIR, GATE_RECORD

    path = Path(run_dir) / GATE_DIR / GATE_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {**record, "note": "a second classifier that tells films of the training population from films "
            "of other populations; a flagged image gets a warning, its score is not validated for it"}  # fmt: skip


def _limitations(card: RunCard, training: dict[str, Any], metrics: dict[str, Any] | None) -> list[str]:
    strategy = card.threshold_strategy
    n = training.get("n_images") or "an unknown number of"
    source = training.get("data") or "its training source"
    items = [
        f"Trained on {n} images from {source}: accuracy on other hospitals, scanners, patient groups "
        "(e.g. children versus adults) and projections can be markedly lower.",
        f"The decision threshold was chosen on the validation split ({strategy!r}) and is fixed; "
        "it sets the trade-off between missed findings and false alarms.",
        "Heatmaps (Grad-CAM) show which regions raised the score; they are not a segmentation "
        "and do not locate disease.",
        "The out-of-distribution flag catches images unlike the training X-rays (photographs, other "
        "body parts), not every subtle difference in population or equipment.",
        "Probabilities may be miscalibrated on data unlike the training set.",
    ]
    if metrics is None:
        items.append("This run has no test-set evaluation yet (run `lungxray evaluate RUN`).")
    else:
        items.append(
            "Test metrics come from a held-out split of the same source as the training data; "
            "they are not a clinical validation."
        )
    return items


def model_card(run_dir: Path, run_card: RunCard) -> dict[str, Any]:
    """The JSON model card of a run (see the module docstring)."""
    classes = list(run_card.classes)
    task = run_card.task
    training = _training_summary(run_card)
    metrics = read_test_metrics(run_dir)
    strategy = run_card.threshold_strategy
    ood = run_card.ood
    cal = run_card.calibration
    card: dict[str, Any] = {
        "name": run_card.name,
        "architecture": run_card.architecture,
        "created": run_card.created,
        "lungxray_version": run_card.lungxray_version,
        "task": task,
        "classes": classes,
        "positive_class": run_card.positive_class,
        "input_size": run_card.input_size,
        # the image pipeline in force (lung-focused options too): docs/lungs.md
        "preprocessing": {**run_card.preprocessing.to_dict(), "summary": run_card.preprocessing.describe()},
        "threshold": run_card.threshold,
        "thresholds": run_card.threshold_map() if task == "multilabel" else None,
        "threshold_strategy": strategy,
        "threshold_note": (
            "argmax of the class probabilities (no threshold)"
            if task == "multiclass"
            else f"chosen on the validation split with the {strategy!r} rule, before any test data was seen"
            if cal.split == "val"
            else f"chosen on the out-of-fold predictions of the {cal.n} training images (a k-fold ensemble) "
            f"with the {strategy!r} rule, before any test data was seen"
            if cal.split == "oof"
            else f"chosen on {cal.split!r} ({cal.n} images) with the {strategy!r} rule on {cal.created}"
        ),
        "ood": {
            "method": ood.method,
            "threshold": ood.threshold,
            "note": "Mahalanobis distance of the image's features to the training X-rays; above the "
            "threshold (a high percentile of validation X-rays) the result is flagged as unreliable.",
        }
        if ood is not None
        else None,
        "training": training,
        "test_metrics": metrics,
        "shortcut_audit": shortcut_summary(metrics),
        "external": external_evaluations(run_dir),
        "population_gate": population_gate(run_dir),
        "intended_use": INTENDED_USE,
        "limitations": _limitations(run_card, training, metrics),
        "disclaimer": run_card.disclaimer or DISCLAIMER,
        "population": run_card.population or "not stated",
        "calibration": {
            "name": cal.name,
            "split": cal.split,
            "strategy": cal.strategy,
            "threshold": cal.threshold,
            "created": cal.created,
        },
        # site adaptations of the weights (calibrate --adapt-bn), oldest first; [] for a model as trained
        "site_adaptation": [
            {"name": c.name, "created": c.created, "images": c.adapted_on}
            for c in run_card.calibrations
            if c.adapted_on
        ],
        "calibrations": [c.to_dict() for c in run_card.calibrations],
    }
    return card

"""Shortcut audit: does a classifier read the lungs, or the hospital (markers, borders, devices)?

Two measurements, both on the model-ready uint8 images (N, S, S) and lung-field masks (N, S, S):

(a) **Explanation mass** (``cam_mass``): the share of each image's Grad-CAM heat inside the lung
    fields, outside them, and in the border bands (bottom 15%, top 15%, left / right 10% of the
    image), beside the share of the image's AREA each region covers. ``ratio`` = mean mass share /
    mean area share: 1 means the heat is spread like the pixels, above 1 it concentrates there.
(b) **Occlusion** (``occlusion_auc``): the AUC of the model's positive score on the plain images, with
    the lung fields blanked, and with everything BUT the lung fields blanked. Blanked pixels are set
    to the image's own mean gray (``fill="mean"``, the default: it keeps the global brightness the
    model saw, so the change is the missing content, not a darker image) or to 0 (``fill="zero"``).
    A model that reads the lungs loses its AUC in the first case and keeps it in the second. 95%
    CIs come from a bootstrap over patients (images grouped by ``groups``), the same resamples for the
    three conditions, so the differences are paired.

The lung fields: the lung model's masks of the model-ready images; for a lung-focused run (crop, mask
outside the lungs), the fields its own pipeline found on each decoded file, cropped like its input
(``pipeline_lung_fields``): segmenting a masked input again finds only part of the lungs (on the Kermany
validation split, 13% of the image instead of ~24%), so its "lungs blanked" left the rest visible.

Without a lung-mask model (``lung_run=None``) the audit is skipped: the result is
``{"shortcut": {"skipped": NO_MASK_NOTE, "n": N}}`` and the report section says how to get one;
it never raises for that.

Example::

    doc = audit_shortcuts("runs/cpu-default", "runs/lungs", x_uint8, y, paths)
    doc["shortcut"]["cam_mass"]["lungs"]["mass"]          # e.g. 0.41
    html = shortcut_section(doc)
"""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lungxray.errors import LungXrayError, check_option
from lungxray.evaluation.metrics import roc_auc
from lungxray.evaluation.metrics.bootstrap import bootstrap_weights, percentile_ci

BANDS = {"bottom": 0.15, "top": 0.15, "left": 0.10, "right": 0.10}
REGIONS = ("lungs", "outside", *BANDS)
CONDITIONS = ("plain", "lungs_blanked", "only_lungs")
FILLS = ("mean", "zero")
NO_MASK_NOTE = (
    "shortcut audit skipped: no lung-field model given. Train one with "
    "`lungxray train-lungs DATA/lung_masks --out runs/lungs` and pass `--lungs runs/lungs`."
)


# --------------------------------------------------------------------------------------- regions


def region_masks(lungs: np.ndarray) -> dict[str, np.ndarray]:
    """Lung masks (N, S, S) bool -> {region: (N, S, S) bool} for ``REGIONS``.

    The bands are fixed fractions of the image side: rows ``>= (1 - 0.15) S`` (bottom), rows
    ``< 0.15 S`` (top), columns ``< 0.10 S`` (left) and ``>= 0.90 S`` (right); they may overlap the lungs.
    """
    lungs = np.asarray(lungs, bool)
    if lungs.ndim != 3:
        raise ValueError(f"expected lung masks (N, H, W), got shape {lungs.shape}")
    n, h, w = lungs.shape
    out = {"lungs": lungs, "outside": ~lungs}
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    band = {
        "bottom": rows >= h - round(BANDS["bottom"] * h),
        "top": rows < round(BANDS["top"] * h),
        "left": cols < round(BANDS["left"] * w),
        "right": cols >= w - round(BANDS["right"] * w),
    }
    for name, m in band.items():
        out[name] = np.broadcast_to(np.broadcast_to(m, (h, w))[None], (n, h, w))
    return out


def cam_mass(heat: np.ndarray, lungs: np.ndarray) -> dict[str, Any]:
    """Share of explanation mass and of area per region.

    Args:
        heat: (N, S, S) non-negative heatmaps (e.g. Grad-CAM in [0, 1]).
        lungs: (N, S, S) bool lung-field masks, same shape.

    Returns:
        ``{region: {"mass", "area", "ratio"}, ..., "n": images used, "n_zero_heat": images left out
        because their heatmap is all zero}``; ``mass`` and ``area`` are means over images of the
        per-image shares, ``ratio`` = mass / area (NaN when the area is 0). With no usable image
        every figure is NaN.
    """
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float64)), 0, None)
    lungs = np.asarray(lungs, bool)
    if heat.shape != lungs.shape or heat.ndim != 3:
        raise ValueError(f"heat {heat.shape} and lungs {lungs.shape} must both be (N, S, S)")
    total = heat.reshape(len(heat), -1).sum(1)
    used = total > 0
    out: dict[str, Any] = {}
    for name, m in region_masks(lungs).items():
        area = m.reshape(len(m), -1).mean(1)
        mass = (heat * m).reshape(len(heat), -1).sum(1)[used] / total[used] if used.any() else np.array([])
        a = float(area[used].mean()) if used.any() else float("nan")
        s = float(mass.mean()) if len(mass) else float("nan")
        out[name] = {"mass": s, "area": a, "ratio": s / a if a > 0 else float("nan")}
    out["n"] = int(used.sum())
    out["n_zero_heat"] = int((~used).sum())
    return out


# ------------------------------------------------------------------------------------- occlusion


def occlude(x: np.ndarray, region: np.ndarray, fill: str = "mean") -> np.ndarray:
    """Copy of uint8 images (N, S, S) with ``region`` (N, S, S) bool set to the fill value.

    ``fill="mean"``: each image's own mean gray (over the whole image, before blanking), rounded;
    ``fill="zero"``: 0.
    """
    check_option(fill, FILLS, "occlusion fill")
    x = np.asarray(x)
    region = np.asarray(region, bool)
    if x.shape != region.shape:
        raise ValueError(f"images {x.shape} and region {region.shape} must have the same shape")
    out = x.copy()
    if fill == "mean":
        value = np.rint(x.reshape(len(x), -1).mean(1)).astype(x.dtype)
    else:
        value = np.zeros(len(x), x.dtype)
    for i in range(len(x)):
        out[i][region[i]] = value[i]
    return out


def _auc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> Any:
    """ROC AUC through the metrics package: a float, or (B,) for (B, N) bootstrap weights; NaN with one class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a one-class set: NaN, said once by auc_table
        return roc_auc(y, s, sample_weight=w)


def auc_table(
    scores: dict[str, np.ndarray],
    y: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    threshold: float | None = None,
) -> dict[str, Any]:
    """AUC per condition with patient-bootstrap 95% CIs, and the paired change from ``plain``.

    Args:
        scores: condition -> (N,) positive-class scores (``plain`` first for the deltas).
        y: (N,) 0/1 labels. With a single class the AUCs are None (a warning says so) and only the
            mean score and the positive rate are informative.
        groups: patient id per image; resamples draw patients (all their images); default one per image.
        threshold: the run's operating threshold; adds ``positive_rate`` (share of images called positive).

    Returns:
        ``{condition: {"auc", "ci": [lo, hi], "mean_score", "positive_rate"?, "delta_auc"?,
        "delta_ci"?}, "n", "n_pos", "n_boot"}``.
    """
    y = np.asarray(y).astype(int).reshape(-1)
    single = len(np.unique(y)) < 2
    if single:
        warnings.warn("occlusion AUC needs both classes; this set has one, so there is no AUC.", stacklevel=2)
    weights = None
    if not single and n_boot > 0:
        weights = np.concatenate(list(bootstrap_weights(len(y), groups=groups, n=n_boot, seed=seed)))
    boot: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {}
    for cond, s in scores.items():
        s = np.asarray(s, np.float64).reshape(-1)
        # one class: no AUC (None, JSON null: metrics.json is strict JSON); the mean score still speaks
        row: dict[str, Any] = {"auc": None if single else float(_auc(y, s)),
                               "mean_score": float(s.mean()) if len(s) else None}  # fmt: skip
        if threshold is not None:
            row["positive_rate"] = float((s >= threshold).mean()) if len(s) else None
        if weights is not None:
            boot[cond] = np.asarray(_auc(y, s, weights), np.float64)
            row["ci"] = _ci(boot[cond])
        out[cond] = row
    base = next(iter(scores), None)
    for cond in scores:
        if cond != base and base in boot:
            out[cond]["delta_auc"] = out[cond]["auc"] - out[base]["auc"]
            out[cond]["delta_ci"] = _ci(boot[cond] - boot[base])
    out.update({"n": int(len(y)), "n_pos": int(y.sum()), "n_boot": int(n_boot)})
    return out


def _ci(values: np.ndarray) -> list[float]:
    return [float(v) for v in percentile_ci(np.asarray(values, np.float64))]


def occlusion_auc(
    score_fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    lungs: np.ndarray,
    *,
    fill: str = "mean",
    groups: Sequence[str] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    threshold: float | None = None,
) -> dict[str, Any]:
    """AUC of ``score_fn`` on the plain images, with the lungs blanked, and with only the lungs kept.

    ``score_fn``: uint8 (N, S, S) -> (N,) positive-class scores. Returns ``auc_table``'s dict plus
    ``"fill"``.
    """
    lungs = np.asarray(lungs, bool)
    scores = {
        "plain": score_fn(x),
        "lungs_blanked": score_fn(occlude(x, lungs, fill)),
        "only_lungs": score_fn(occlude(x, ~lungs, fill)),
    }
    out = auc_table(scores, y, groups=groups, n_boot=n_boot, seed=seed, threshold=threshold)
    out["fill"] = fill
    return out


# ---------------------------------------------------------------------------------------- runner


def audit_shortcuts(
    run_dir: str | os.PathLike,
    lung_run: Any,
    images: np.ndarray,
    y: np.ndarray,
    paths: Sequence[str] | None = None,
    *,
    lungs: np.ndarray | None = None,
    fill: str = "mean",
    n_boot: int = 200,
    seed: int = 0,
    method: str = "gradcam",
    batch_size: int = 32,
) -> dict[str, Any]:
    """The shortcut audit of a classifier run on one image set, as a metrics.json fragment.

    Args:
        run_dir: classifier run directory (binary for the occlusion AUCs; CAM mass for any task).
        lung_run: lung-field run directory or ``LungModel``; None skips the audit (see NO_MASK_NOTE)
            unless ``lungs`` is given.
        images: model-ready uint8 (N, S, S) at the classifier's input size.
        y: (N,) 0/1 labels (binary runs; ``classes[1]`` positive).
        paths: file per image; patients for the bootstrap come from their names.
        lungs: (N, S, S) bool masks to use instead of the model's (e.g. ground truth).

    Returns:
        ``{"shortcut": {"cam_mass": {...}, "occlusion": {...}, "mask_model": name, "n": N,
        "lung_area": mean lung share of the image, "empty_masks": count, "method", "fill"}}``;
        a part that cannot be computed holds ``{"skipped": reason}``.
    """
    from lungxray.data.manifest import patient_id_from_name
    from lungxray.predict import Predictor

    x = np.asarray(images)
    n = int(len(x))
    if lung_run is None and lungs is None:
        return {"shortcut": {"skipped": NO_MASK_NOTE, "n": n}}
    predictor = Predictor.load(run_dir)
    if lungs is None:
        from lungxray.segmentation import load_lung_model, predict_lung_masks

        lm = lung_run if hasattr(lung_run, "card") else load_lung_model(lung_run)
        lungs, mask_model = predict_lung_masks(lm, x), lm.name
        if predictor.preprocessor.needs_lungs and paths is not None:
            lungs, found = pipeline_lung_fields(predictor.preprocessor, paths, lungs)
            mask_model = f"the run's own lung fields (RUN/lungs, on the decoded images; {found} of {n})"
    else:
        lungs, mask_model = np.asarray(lungs, bool), "given masks"
    doc: dict[str, Any] = {
        "mask_model": mask_model,
        "n": n,
        "lung_area": float(lungs.mean()) if n else float("nan"),
        "empty_masks": int((lungs.reshape(n, -1).sum(1) == 0).sum()) if n else 0,
        "method": method,
    }
    prob, _ = predictor.predict_images(x, batch_size=batch_size)
    try:
        from lungxray.explain import heatmaps_for_inputs

        targets = [predictor.card.explain_target(p) for p in prob]
        heat = np.concatenate(
            [
                heatmaps_for_inputs(predictor, x[i : i + batch_size], targets[i : i + batch_size], method=method)
                for i in range(0, n, batch_size)
            ]
        ) if n else np.zeros_like(x, np.float32)
        doc["cam_mass"] = cam_mass(heat, lungs)
    except LungXrayError as exc:
        doc["cam_mass"] = {"skipped": str(exc)}
    if predictor.task != "binary":
        doc["occlusion"] = {"skipped": f"occlusion AUC is computed for binary runs; this one is {predictor.task}."}
    else:
        def score(xs: np.ndarray) -> np.ndarray:
            return predictor.card.scores(predictor.predict_images(xs, batch_size=batch_size)[0])[:, 1]

        groups = [patient_id_from_name(p) for p in paths] if paths is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a one-class set: NaN AUCs, said in the section
            doc["occlusion"] = occlusion_auc(
                score, x, y, lungs, fill=fill, groups=groups, n_boot=n_boot, seed=seed,
                threshold=predictor.card.threshold,
            )
    return {"shortcut": doc}


def pipeline_lung_fields(pre: Any, paths: Sequence[str], fallback: np.ndarray) -> tuple[np.ndarray, int]:
    """The lung fields a lung-focused run's pipeline finds on each decoded file, in its input's frame:
    ((N, S, S) bool, how many were found). A file without plausible lungs (or unreadable now) keeps its
    row of ``fallback`` (the lung model on the model input)."""
    from lungxray.data.imageio import read_image
    from lungxray.errors import ImageReadError

    out, found = np.array(fallback, bool, copy=True), 0
    for i, path in enumerate(paths):
        try:
            mask = pre.lung_fields(read_image(path), out.shape[-1])
        except (ImageReadError, OSError):
            continue
        if mask is not None:
            out[i], found = mask, found + 1
    return out, found


def load_audit_set(
    run_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    split: str = "test",
    *,
    max_images: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    """Images for ``audit_shortcuts``: (uint8 (N, S, S) at the run's input size, y (N,), paths,
    ground-truth lung masks (N, S, S) bool or None).

    ``data``: None = the run's own ``split`` (its splits.csv); a folder of class folders (optionally
    under train/val/test; ``split`` is used when such a folder exists, else every image); or a
    lung_masks folder (``index.csv`` with image, mask, finding): its ``normal`` films, label 0, with
    their hand-drawn masks. ``max_images``: a seeded subsample. Unreadable files are reported and skipped.
    """
    from PIL import Image

    from lungxray.data.imageio import read_image
    from lungxray.data.manifest import Manifest
    from lungxray.data.preprocess import crop_to_box, to_model_input
    from lungxray.data.readers import from_folders
    from lungxray.errors import DataError, ImageReadError
    from lungxray.focus import Preprocessor
    from lungxray.runcard import RunCard

    card = RunCard.read(run_dir)
    size, resize = card.input_size, card.resize
    pre = Preprocessor.for_run(card, run_dir)  # the run's pipeline; masks get the same crop
    root = None if data is None else os.fspath(data)
    mask_files: list[str] | None = None
    if root is not None and os.path.isfile(os.path.join(root, "index.csv")):
        import csv

        with open(os.path.join(root, "index.csv"), newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("finding", "normal") == "normal"]
        paths = [os.path.join(root, r["image"]) for r in rows]
        mask_files = [os.path.join(root, r["mask"]) for r in rows]
        y = np.zeros(len(paths), int)
    else:
        if root is None:
            m = Manifest.from_splits_csv(os.path.join(os.fspath(run_dir), "splits.csv"), classes=list(card.classes), task=card.task)
        else:
            m = from_folders(root)
            if tuple(m.classes) != tuple(card.classes):
                raise DataError(f"{root} has classes {list(m.classes)}; the run expects {list(card.classes)}.")
        part = m.split(split)
        m = part if len(part) else m
        paths, y = list(m.paths), m.targets
    keep = np.arange(len(paths))
    if max_images is not None and max_images < len(paths):
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
    images, ys, kept, masks = [], [], [], []
    for i in keep:
        try:
            focused = pre.process(read_image(paths[i]))
            images.append(focused.image)
            if mask_files is not None:
                with Image.open(mask_files[i]) as im:
                    mask = crop_to_box(np.asarray(im.convert("L"), np.float32) / 255, focused.box)
                    masks.append(to_model_input(mask, size, resize) >= 128)
        except (ImageReadError, OSError) as exc:
            print(f"skipped {paths[i]}: {exc}")
            continue
        ys.append(int(np.asarray(y[i]).reshape(-1)[0]))
        kept.append(str(paths[i]))
    if not images:
        raise DataError(f"no readable image in {root or run_dir} ({split}).")
    gt = np.stack(masks) if mask_files is not None else None
    return np.stack(images), np.array(ys), kept, gt


# ------------------------------------------------------------------------------------------ HTML


def _f(v: Any, pct: bool = False) -> str:
    if not isinstance(v, (int, float)) or not np.isfinite(v):
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def shortcut_section(doc: dict[str, Any]) -> str:
    """HTML section (a ``<section>`` string) for the report from ``audit_shortcuts``'s dict
    (the whole document or its ``"shortcut"`` value)."""
    d = doc.get("shortcut", doc)
    head = "<section id='shortcut'><h2>Shortcut audit: does the model read the lungs?</h2>"
    if "skipped" in d:
        return f"{head}<p>{html.escape(d['skipped'])}</p></section>"
    parts = [
        head,
        f"<p>{d.get('n', 0)} images; lung fields from <code>{html.escape(str(d.get('mask_model')))}</code> "
        f"(mean lung area {_f(d.get('lung_area'), True)}, {d.get('empty_masks', 0)} empty masks).</p>",
    ]
    cm = d.get("cam_mass", {})
    if "skipped" in cm:
        parts.append(f"<p>Explanation mass: skipped ({html.escape(cm['skipped'])}).</p>")
    elif cm:
        rows = "".join(
            f"<tr><td>{r}</td><td>{_f(cm[r]['mass'], True)}</td><td>{_f(cm[r]['area'], True)}</td>"
            f"<td>{_f(cm[r]['ratio'])}</td></tr>"
            for r in REGIONS
            if r in cm
        )
        parts.append(
            f"<h3>Grad-CAM mass by region</h3><table><tr><th>region</th><th>mass share</th>"
            f"<th>area share</th><th>mass / area</th></tr>{rows}</table>"
            "<p>Bands: bottom / top 15%, left / right 10% of the image. A ratio above 1 means the "
            "explanation concentrates there.</p>"
        )
    oc = d.get("occlusion", {})
    if "skipped" in oc:
        parts.append(f"<p>Occlusion: skipped ({html.escape(oc['skipped'])}).</p>")
    elif oc:
        def ci(r: dict[str, Any], key: str) -> str:
            lo, hi = r.get(key, [float("nan")] * 2)
            return f" [{_f(lo)}, {_f(hi)}]" if np.isfinite(lo) else ""

        fill = "the image's mean gray" if oc.get("fill", "mean") == "mean" else "0"
        rows = "".join(
            f"<tr><td>{c.replace('_', ' ')}</td><td>{_f(oc[c]['auc'])}{ci(oc[c], 'ci')}</td>"
            f"<td>{_f(oc[c].get('delta_auc'))}{ci(oc[c], 'delta_ci')}</td>"
            f"<td>{_f(oc[c].get('positive_rate'), True)}</td></tr>"
            for c in CONDITIONS
            if c in oc
        )
        parts.append(
            f"<h3>Occlusion (blanked pixels set to {fill})</h3><table><tr><th>condition</th><th>AUC [95% CI]</th>"
            f"<th>change [95% CI]</th><th>called positive</th></tr>{rows}</table>"
            "<p>A model that reads the lungs loses its AUC when the lungs are blanked and keeps it "
            "when only the lungs are shown. CIs: bootstrap over patients.</p>"
        )
    parts.append("</section>")
    return "".join(parts)

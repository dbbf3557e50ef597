"""`lungxray calibrate RUN --data SITE`: adapt a finished binary run to a new site, in a NEW run directory.

Labeled site sample (``calibrate_site``): a folder of class folders or a label CSV, classes aligned
with the run's as ``lungxray evaluate --data`` does. On it the operating threshold is re-chosen
(``strategy``; samples too small for it are refused, saying how many of each class are needed) and a
temperature is fitted; sensitivity / specificity at the old and the new threshold are reported with
patient-bootstrap CIs (the new threshold's figures are measured on the sample it was chosen on, hence
optimistic; ``benchmarks/site_calibration.py`` measures the honest cross-fitted figures).

Unlabeled site images (``adapt_prevalence``): the site's prevalence is estimated by EM on the model's
posteriors (Saerens et al. 2002) after bias-corrected temperature scaling fitted on the run's
validation split (Alexandari et al. 2020), with BBSE (Lipton et al. 2018) as a check, both with
patient-bootstrap CIs; the threshold is moved for the prior change (``threshold_for_prior``). This
corrects a change of PREVALENCE only, never a change in how the images look: the set-level shift test
runs first and its warning is part of the result.

Where the temperature goes: it is stored in the new calibration entry (``Calibration.temperature``)
for calibrated-probability reporting ONLY. Decisions stay exact and identical everywhere (predict,
evaluate, serve, export all share ``RunCard.decide`` on the RAW model probability): the chosen
threshold is expressed on the raw probability scale. For binary models temperature scaling is
monotone, so a threshold on the calibrated scale and its raw-scale image make the same decisions.

The original run is never modified: the new card is written into a copy (``out``, default
``RUN-site``), which must not exist yet.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungxray.calibrate import _cache_dir, _now, predict_images, set_shift
from lungxray.errors import RunError
from lungxray.runcard import Calibration, RunCard

NOTE_PREVALENCE = (
    "this corrects only a change of prevalence (how many images are positive), not a change in how "
    "the images look (scanner, population, view); the score's ranking is not re-checked"
)


@dataclass
class SiteResult:
    """What a site calibration did: the new card and where it was written, and the figures behind it."""

    card: RunCard
    out: Path
    n: int
    n_pos: int
    comparison: dict[str, Any] = field(default_factory=dict)  # compare_operating_points (labeled)
    prevalence: dict[str, Any] = field(default_factory=dict)  # EM / BBSE estimates (unlabeled)
    shift: Any = None  # ShiftResult of the site set against the run's validation, or None
    notes: list[str] = field(default_factory=list)
    adapted_on: int = 0  # site images the BatchNorm statistics were adapted on (0: not adapted)


def fingerprint(paths: list[str]) -> str:
    """sha1 over the sorted sha1s of the files' bytes: the same images give the same fingerprint."""
    digests = []
    for p in paths:
        h = hashlib.sha1()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.hexdigest())
    return hashlib.sha1("\n".join(sorted(digests)).encode()).hexdigest()


def _load_binary(run: str | os.PathLike, out: str | os.PathLike | None):
    from lungxray.rundir import load_run

    src = Path(run)
    loaded = load_run(src)
    if loaded.card.task != "binary" or loaded.card.threshold is None:
        raise RunError(f"{src} is a {loaded.card.task} run; site calibration supports binary runs only.")
    target = Path(out) if out is not None else Path(f"{str(src).rstrip('/')}-site")
    if target.exists():
        raise RunError(f"{target} already exists; site calibration writes a NEW run directory (--out).")
    return src, loaded, target


def _write(src: Path, target: Path, card: RunCard, cal: Calibration) -> RunCard:
    new = card.with_calibration(cal)
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("checkpoint.pt", "eval"))
    new.write(target)
    return new


def calibrate_site(
    run: str | os.PathLike,
    data: str | os.PathLike,
    *,
    strategy: str | None = None,
    out: str | os.PathLike | None = None,
    name: str = "site",
    n_boot: int = 1000,
    progress: bool = False,
    adapt_bn: bool = False,
    adapt_on: str | os.PathLike | None = None,
) -> SiteResult:
    """Re-choose the threshold and fit a temperature on a labeled site sample; write a NEW run.

    ``adapt_bn``: first adapt the model's BatchNorm statistics to the site (AdaBN, ``adapt_run``) on the
    sample's images plus the unlabeled images of ``adapt_on`` (a folder; implies ``adapt_bn``), then
    choose on the ADAPTED model's scores; the new run holds the adapted weights and its refitted OOD
    check. Measured gain: docs/site-calibration.md, "Site adaptation of BatchNorm statistics".

    Raises:
        DataError: classes that differ from the run's, no readable image, a sample too small for
            ``strategy`` (the message says how many positives and negatives it needs).
        RunError: not a binary run, ``out`` exists.
    """
    from lungxray.evaluation.evaluate import _external_manifest, _run_config
    from lungxray.site import (
        check_sample_size,
        choose_site_threshold,
        compare_operating_points,
        fit_temperature,
        to_logits,
    )  # fmt: skip

    src, loaded, target = _load_binary(run, out)
    card = loaded.card
    strategy = strategy or card.threshold_strategy
    cfg = _run_config(src)
    m = _external_manifest(data, cfg, list(card.classes), card.task)
    keep, prob, dist = predict_images(loaded, m.paths, cache_dir=cfg.data.cache_dir, progress=progress)
    m = m.subset(keep)
    y, p, groups = np.asarray(m.targets).astype(int), prob[:, 0].astype(np.float64), np.asarray(m.patients)
    check_sample_size(y, strategy)  # before any adaptation: refuse too-small samples first
    adapted, p_new, notes = None, p, []
    if adapt_bn or adapt_on is not None:
        adapted, p_new = _adapt(src, loaded, list(m.paths), adapt_on, progress)
        notes = [adapted.note] if adapted.note else []
    site = choose_site_threshold(y, p_new, strategy, groups=groups)
    temperature, _ = fit_temperature(to_logits(p_new), y)
    cmp = compare_operating_points(y, p, card.threshold, site.threshold, groups=groups, n_boot=n_boot, p_new=p_new)
    how = "" if adapted is None else (
        f"; BatchNorm statistics adapted (AdaBN) on {adapted.n_images} site images, threshold on the "
        "adapted model's probability"
    )  # fmt: skip
    cal = Calibration(
        strategy=strategy, split="site", threshold=site.threshold, temperature=round(temperature, 6),
        name=name, created=_now(), n=len(y), fingerprint=fingerprint(list(m.paths)),
        notes=f"labeled site sample {data}: {site.n_pos} positive, {site.n_neg} negative, "
        f"{site.n_patients} patients; threshold on the raw model probability, temperature for "
        f"calibrated-probability reporting only{how}",
        adapted_on=None if adapted is None else adapted.n_images,
    )  # fmt: skip
    shift = set_shift(src, loaded, dist if dist is not None else np.full(len(p), np.nan), p)
    if adapted is None:
        new = _write(src, target, card, cal)
    else:
        new = _write_adapted(src, target, card, cal, adapted)
    return SiteResult(new, target, len(y), int(y.sum()), comparison=cmp, shift=shift, notes=notes,
                      adapted_on=0 if adapted is None else adapted.n_images)  # fmt: skip


def _adapt(src: Path, loaded, labeled: list[str], adapt_on, progress: bool):
    """(AdaptedRun, P(positive) (N,) of the labeled images by the adapted model)."""
    from lungxray.adapt_run import adapt_run
    from lungxray.calibrate import run_images
    from lungxray.inference import predict_batches
    from lungxray.predict import expand_inputs

    card = loaded.card
    extra = [str(q) for q in expand_inputs([str(adapt_on)])] if adapt_on is not None else []
    cached = run_images(card, src, labeled + extra, cache_dir=_cache_dir(src), progress=progress)
    images = np.array(cached.images[np.flatnonzero(cached.ok)])
    adapted = adapt_run(src, loaded, images, progress=progress)
    skipped = int((~np.asarray(cached.ok)).sum())
    if skipped:
        adapted.note = "; ".join(
            x for x in (adapted.note, f"{skipped} of the {len(extra)} --adapt-on images could not be read and were skipped") if x
        )  # fmt: skip
    prob, _ = predict_batches(adapted.model, images[: len(labeled)], task="binary",
                              normalization=card.normalization, device=torch.device("cpu"),
                              in_chans=card.in_chans)  # fmt: skip
    return adapted, prob[:, 0].astype(np.float64)


def _write_adapted(src: Path, target: Path, card: RunCard, cal: Calibration, adapted) -> RunCard:
    """The new run of an adapted model: adapted weights, refitted OOD arrays (or none), the new card."""
    from dataclasses import replace

    from lungxray.models.tta import unwrap_tta
    from lungxray.rundir import save_weights

    new = replace(card, ood=adapted.ood).with_calibration(cal)
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("checkpoint.pt", "eval", "reference.csv"))
    save_weights(target / "model.safetensors", unwrap_tta(adapted.model).state_dict(), adapted.ood_arrays)
    new.write(target)
    return new


def adapt_prevalence(
    run: str | os.PathLike,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    name: str = "site-prevalence",
    n_boot: int = 200,
    progress: bool = False,
) -> SiteResult:
    """Estimate an unlabeled site's prevalence (EM after BCTS; BBSE check) and move the threshold for it.

    ``data``: a folder (searched recursively) or image files. The temperature and bias are fitted on
    the run's validation split (splits.csv val rows). Writes a NEW run whose calibration entry holds
    the prior-adjusted threshold (raw probability scale) and the estimate in ``notes``.
    """
    from lungxray.data.manifest import Manifest
    from lungxray.predict import expand_inputs
    from lungxray.prevalence import bbse_prevalence, bootstrap_prevalence, em_prevalence, threshold_for_prior
    from lungxray.site import apply_temperature, fit_temperature, to_logits

    src, loaded, target = _load_binary(run, out)
    card = loaded.card
    splits = src / "splits.csv"
    if not splits.is_file():
        raise RunError(f"{src} has no splits.csv: the validation split to calibrate on is unknown.")
    cache = _cache_dir(src)
    paths = [str(p) for p in expand_inputs([str(data)])]
    keep, prob, dist = predict_images(loaded, paths, cache_dir=cache, progress=progress)
    paths = [paths[i] for i in keep]
    p_site = prob[:, 0].astype(np.float64)
    notes = []
    shift = set_shift(src, loaded, dist if dist is not None else np.full(len(p_site), np.nan), p_site)
    if shift is not None and shift.fired:
        notes.append(
            f"WARNING: the shift test fired (p = {shift.p_value:.2g}): these images differ from the "
            "training data, while a prevalence estimate assumes they look alike; prefer a labeled site "
            "calibration (lungxray calibrate RUN --data LABELED_SITE)"
        )

    val = Manifest.from_splits_csv(splits, classes=list(card.classes), task=card.task).split("val")
    vkeep, vprob, _ = predict_images(loaded, val.paths, cache_dir=cache, progress=progress)
    y_val = np.asarray(val.subset(vkeep).targets).astype(int)
    p_val = vprob[:, 0].astype(np.float64)
    temperature, bias = fit_temperature(to_logits(p_val), y_val, bias=True)
    q_site = apply_temperature(p_site, temperature, bias)
    pi = float(y_val.mean())
    t_raw = float(card.threshold)
    em = bootstrap_prevalence(q_site, lambda a: em_prevalence(a, pi), n_boot=n_boot)
    bbse = bootstrap_prevalence(
        (p_site >= t_raw).astype(int), lambda a: bbse_prevalence(y_val, p_val >= t_raw, a, 2)[1], n_boot=n_boot
    )
    t_cal = float(apply_temperature(np.array([t_raw]), temperature, bias)[0])
    t_cal_new = threshold_for_prior(t_cal, pi, float(np.clip(em[0], 1e-4, 1 - 1e-4)))
    t_new = _raw_threshold(t_cal_new, temperature, bias)
    prev = {
        "em": dict(zip(("estimate", "low", "high"), em, strict=True)),
        "bbse": dict(zip(("estimate", "low", "high"), bbse, strict=True)),
        "validation_prior": pi, "temperature": temperature, "bias": float(bias),
        "threshold_old": t_raw, "threshold_new": t_new, "n": len(p_site),
    }  # fmt: skip
    cal = Calibration(
        strategy=f"prior-adjusted({card.threshold_strategy})", split="site-unlabeled", threshold=t_new,
        temperature=round(temperature, 6), bias=round(float(bias), 6), name=name, created=_now(), n=len(p_site),
        fingerprint=fingerprint(paths),
        notes=f"EM prevalence {em[0]:.3f} [{em[1]:.3f}, {em[2]:.3f}] (validation {pi:.3f}), BBSE "
        f"{bbse[0]:.3f}; bias-corrected temperature {temperature:.3f}, bias {float(bias):.3f} on val; "
        f"{NOTE_PREVALENCE}",
    )  # fmt: skip
    new = _write(src, target, card, cal)
    notes.append(NOTE_PREVALENCE)
    return SiteResult(new, target, len(p_site), 0, prevalence=prev, shift=shift, notes=notes)


def _raw_threshold(t_cal: float, temperature: float, bias: float) -> float:
    """The raw-probability threshold whose calibrated value ``sigmoid(logit(t) / T + b)`` is ``t_cal``."""
    if not 0.0 < t_cal < 1.0:
        return float(t_cal)
    z = (np.log(t_cal) - np.log1p(-t_cal) - float(bias)) * float(temperature)
    return float(1.0 / (1.0 + np.exp(-z)))


def render_site(result: SiteResult, console: Any) -> None:
    """Print what a site calibration found and wrote."""
    cmp, prev = result.comparison, result.prevalence
    if cmp:
        console.print(f"site sample: {cmp['n']} images, {cmp['n_pos']} positive (95% patient-bootstrap CIs)")
        if result.adapted_on:
            ood = "refitted on the run's training images" if result.card.ood else "none (see below)"
            console.print(f"  BatchNorm statistics adapted (AdaBN) on {result.adapted_on} site images; OOD check: {ood}")
        new_what = "new (adapted, in-sample)" if result.adapted_on else "new (site, in-sample)"
        for key, what in (("old", "old (validation)"), ("new", new_what)):
            r = cmp[key]
            cells = "  ".join(
                f"{m} {r[m]['value']:.3f} [{r[m]['low']:.3f}, {r[m]['high']:.3f}]"
                for m in ("sensitivity", "specificity")
            )
            console.print(f"  {what:<22} threshold {r['threshold']:.4g}: {cells}")
        console.print(
            f"  temperature {result.card.calibration.temperature:.3f} (stored for calibrated "
            "probabilities; decisions use the threshold on the raw model probability)"
        )
    if prev:
        em, bb = prev["em"], prev["bbse"]
        console.print(
            f"site prevalence (EM after bias-corrected temperature scaling): {em['estimate']:.3f} "
            f"[{em['low']:.3f}, {em['high']:.3f}]; BBSE check {bb['estimate']:.3f} [{bb['low']:.3f}, "
            f"{bb['high']:.3f}]; validation {prev['validation_prior']:.3f}; {prev['n']} images"
        )
        console.print(f"  threshold {prev['threshold_old']:.4g} -> {prev['threshold_new']:.4g}")
    if result.shift is not None:
        colour = "yellow" if result.shift.fired else "dim"
        console.print(f"[{colour}]shift test: {result.shift.summary}[/]")
    for note in result.notes:
        console.print(f"[yellow]{note}[/]" if note.startswith("WARNING") else note)
    console.print(f"[green]new run written to {result.out}[/] (the original run is unchanged)")

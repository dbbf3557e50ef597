"""Site calibration: temperature scaling, a site's own operating threshold, and an honest protocol.

A threshold chosen on a validation split rarely transfers to another hospital. With a labeled local
sample a site may (1) rescale the model's confidence (temperature scaling, optionally bias-corrected as
Alexandari, Kundaje & Shrikumar, ICML 2020) and (2) re-choose the operating threshold with the same
strategy grammar as training (``"youden"``, ``"max-f1"``, ``"0.5"``, ``"sensitivity>=0.95"``,
``"specificity>=0.9"``). ``crossfit_site_calibration`` measures what that buys without ever choosing
on the images it evaluates. Pure functions: arrays in, numbers out; the CLI and the run card
(``Calibration``) record the result.

Minimum sample (``required_sample``), so that the chosen threshold is estimable at all:

* ``"0.5"``: nothing (no choice is made).
* ``"youden"`` / ``"max-f1"``: >= 20 positives and >= 20 negatives (both rates are optimised).
* ``"sensitivity>=x"``: more than ``2 / (1 - x)`` positives, i.e. one missed positive moves the
  sensitivity by less than half the allowed miss rate ``(1 - x) / 2`` (x = 0.95: 41 positives; 0.9:
  21); and >= 20 negatives, whose specificity is what the choice maximises. x = 1 cannot be estimated.
* ``"specificity>=x"``: the mirror image (negatives > 2 / (1 - x), >= 20 positives).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from lungxray.config import parse_threshold_strategy
from lungxray.errors import DataError
from lungxray.evaluation.metrics import choose_threshold
from lungxray.evaluation.metrics.bootstrap import bootstrap_weights, percentile_ci
from lungxray.resampling import grouped_folds, stratified_subsample

MIN_PER_CLASS = 20
_EPS = 1e-7


# --------------------------------------------------------------------------- temperature


def to_logits(prob: Any, task: str = "binary") -> np.ndarray:
    """Probabilities -> logits: multiclass (N, K) softmax outputs -> log-probabilities; binary (N,) and
    multilabel (N, K) sigmoid outputs -> the logit of each entry (the inverse of the output activation)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    if task == "multiclass":
        return np.log(p)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _nll(params: np.ndarray, z: np.ndarray, y: np.ndarray, bias: bool) -> float:
    inv_t = math.exp(-params[0])
    if z.ndim == 1:
        a = z * inv_t + (params[1] if bias else 0.0)
        return float(np.mean(np.logaddexp(0.0, a) - y * a))  # -log sigmoid(a) for y=1, -log(1-s) for 0
    b = params[1:] if bias else 0.0
    return float(-np.mean(_log_softmax(z * inv_t + b)[np.arange(len(y)), y]))


def fit_temperature(logits: Any, y: Any, *, bias: bool = False) -> tuple[float, float | np.ndarray]:
    """Temperature T (and bias b) minimising the NLL of ``sigmoid(z / T + b)`` or ``softmax(z / T + b)``.

    Args:
        logits: (N,) binary logits, or (N, K) multiclass logits / log-probabilities (see ``to_logits``).
        y: (N,) labels: 0/1 for binary, 0..K-1 for multiclass.
        bias: also fit a bias (binary: a scalar; multiclass: a (K,) vector, centred to sum to 0), the
            bias-corrected temperature scaling of Alexandari et al. 2020, recommended before EM.

    Returns:
        ``(T, b)``: T > 0 (1.0 = unchanged); b 0.0 / zeros((K,)) without ``bias``.

    Raises:
        DataError: shape mismatch, non-finite logits, or labels of one class only.

    >>> T, b = fit_temperature(to_logits(p_val), y_val, bias=True)
    >>> p_site = apply_temperature(p_test, T, b)
    """
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    yy = np.asarray(y).astype(int).reshape(-1)
    if z.ndim not in (1, 2) or len(z) != len(yy) or not len(yy):
        raise DataError(
            f"fit_temperature: logits (N,) or (N, K) and y (N,) needed; got {z.shape}, {yy.shape}."
        )
    if not np.isfinite(z).all():
        raise DataError("fit_temperature: logits must be finite (clip probabilities via to_logits).")
    if len(np.unique(yy)) < 2:
        raise DataError("fit_temperature: the labels hold one class only; a temperature cannot be fitted.")
    k = 1 if z.ndim == 1 else z.shape[1]
    x0 = np.zeros(1 + (k if bias else 0))
    res = minimize(
        _nll, x0, args=(z, yy, bias), method="L-BFGS-B", bounds=[(-5.0, 5.0)] + [(-20, 20)] * (len(x0) - 1)
    )
    t = float(math.exp(res.x[0]))
    if z.ndim == 1:
        return t, float(res.x[1]) if bias else 0.0
    b = res.x[1:] - res.x[1:].mean() if bias else np.zeros(k)
    return t, b


def apply_temperature(prob: Any, temperature: float, bias: Any = 0.0, task: str = "binary") -> np.ndarray:
    """Recalibrated probabilities: binary (N,) ``sigmoid(logit(p) / T + b)``; multiclass (N, K) softmax."""
    z = to_logits(prob, task) / float(temperature)
    if task == "binary":
        return _sigmoid(z + float(bias))
    return np.exp(_log_softmax(z + np.asarray(bias, dtype=np.float64)))


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class SiteThreshold:
    """A threshold chosen on a site's labeled sample; ``sensitivity`` / ``specificity`` are on that
    same sample, hence optimistic (see ``crossfit_site_calibration`` for honest figures)."""

    strategy: str
    threshold: float
    n: int
    n_pos: int
    n_neg: int
    n_patients: int
    sensitivity: float
    specificity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def required_sample(strategy: str) -> tuple[int, int]:
    """(positives, negatives) a labeled sample needs for ``strategy`` (rule in the module docstring)."""
    kind, target = parse_threshold_strategy(strategy)
    if kind == "0.5":
        return 0, 0
    if kind in ("youden", "max-f1"):
        return MIN_PER_CLASS, MIN_PER_CLASS
    if target is None or target >= 1.0:
        raise DataError(
            f"{strategy!r}: a target of 1 cannot be estimated from a finite sample; ask for e.g. {kind}>=0.99."
        )
    need = max(MIN_PER_CLASS, math.floor(2.0 / (1.0 - target) + 1e-9) + 1)
    return (need, MIN_PER_CLASS) if kind == "sensitivity" else (MIN_PER_CLASS, need)


def check_sample_size(y: Any, strategy: str) -> None:
    """Raise DataError, saying how many of each class are needed, when ``y`` is too small for ``strategy``."""
    need_pos, need_neg = required_sample(strategy)
    yy = np.asarray(y).astype(int).reshape(-1)
    n_pos, n_neg = int(yy.sum()), int(len(yy) - yy.sum())
    if n_pos < need_pos or n_neg < need_neg:
        raise DataError(
            f"the labeled sample is too small for {strategy!r}: it holds {n_pos} positive and {n_neg} "
            f"negative images; it needs at least {need_pos} positive and {need_neg} negative "
            f"(add {max(0, need_pos - n_pos)} positive and {max(0, need_neg - n_neg)} negative)."
        )


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    pos = p >= t
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    sens = float((pos & (y == 1)).sum() / n_pos) if n_pos else math.nan
    spec = float((~pos & (y == 0)).sum() / n_neg) if n_neg else math.nan
    return sens, spec


def choose_site_threshold(y: Any, p: Any, strategy: str, *, groups: Any = None) -> SiteThreshold:
    """Choose the operating threshold on a site's labeled sample, refusing samples too small for it.

    Args:
        y: (N,) 0/1 labels. p: (N,) P(positive) in [0, 1]. strategy: as ``choose_threshold``.
        groups: (N,) patient ids, counted into ``n_patients`` (else every image is a patient).

    Raises:
        DataError: too few positives / negatives for the strategy (the message says how many).
        ConfigError: unknown strategy.
    """
    yy = np.asarray(y).astype(int).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    check_sample_size(yy, strategy)
    t = choose_threshold(yy, pp, strategy)
    sens, spec = _rates(yy, pp, t)
    n_pat = len(yy) if groups is None else len(np.unique(np.asarray(groups)))
    return SiteThreshold(
        strategy, float(t), len(yy), int(yy.sum()), int(len(yy) - yy.sum()), n_pat, sens, spec
    )


# --------------------------------------------------------------------------- comparisons


def _weighted_rates(w: np.ndarray, y: np.ndarray, dec: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity / specificity / accuracy per bootstrap row of weights ``w`` (B, N); dec (N,) or (S, N)."""
    d = np.atleast_2d(dec).astype(np.float64)  # (S, N) decisions, S seeds averaged below
    pos, neg = w @ y, w @ (1 - y)
    tp = (w @ (d * y).T).T  # (S, B)
    tn = (w @ ((1 - d) * (1 - y)).T).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": np.mean(tp / pos, axis=0),
            "specificity": np.mean(tn / neg, axis=0),
            "accuracy": np.mean((tp + tn) / (pos + neg), axis=0),
        }


def rates_with_cis(
    y: np.ndarray, dec: np.ndarray, groups: Any, n_boot: int, seed: int, ci: float
) -> dict[str, Any]:
    """Point values and patient-bootstrap percentile CIs of the rates of decisions ``dec`` (N,) or (S, N)."""
    point = {k: float(v[0]) for k, v in _weighted_rates(np.ones((1, len(y))), y, dec).items()}
    boot: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for w in bootstrap_weights(len(y), groups=groups, n=n_boot, seed=seed):
        for k, v in _weighted_rates(w, y, dec).items():
            boot[k].append(v)
    out: dict[str, Any] = {}
    for k, v in point.items():
        lo, hi = percentile_ci(np.concatenate(boot[k]), ci) if n_boot else (math.nan, math.nan)
        out[k] = {"value": v, "low": lo, "high": hi}
    return out


def _check_binary(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y).astype(int).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(yy) != len(pp) or not len(yy):
        raise DataError(f"y and p must be non-empty and of equal length; got {len(yy)} and {len(pp)}.")
    if not set(np.unique(yy)) <= {0, 1}:
        raise DataError("y must hold 0/1 labels.")
    return yy, pp


def compare_operating_points(
    y: Any,
    p: Any,
    old_t: float,
    new_t: float,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    p_new: Any = None,
) -> dict[str, Any]:
    """Sensitivity / specificity / accuracy at the old and the new threshold, with patient-bootstrap CIs.

    ``p_new`` (N,): the new operating point's own scores when the model changed too (a site-adapted
    run, ``adapt_run``); default ``p``.

    Returns ``{"old": {"threshold", "sensitivity": {"value", "low", "high"}, ...}, "new": {...},
    "n", "n_pos"}``; both use the same resamples, so the intervals are comparable.
    """
    yy, pp = _check_binary(y, p)
    pn = pp if p_new is None else _check_binary(yy, p_new)[1]
    out: dict[str, Any] = {"n": len(yy), "n_pos": int(yy.sum())}
    for name, t, scores in (("old", old_t, pp), ("new", new_t, pn)):
        out[name] = {"threshold": float(t), **rates_with_cis(yy, scores >= t, groups, n_boot, seed, ci)}
    return out


def crossfit_site_calibration(
    y: Any,
    p: Any,
    groups: Any,
    strategy: str,
    *,
    folds: int = 2,
    seeds: tuple[int, ...] = (0, 1, 2),
    n_labeled: int | None = None,
    reference_threshold: float | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    check_size: bool = True,
) -> dict[str, Any]:
    """Honest site-calibration figures: choose on one patient-grouped fold, evaluate on the other(s).

    For each seed: patients are dealt into ``folds`` stratified folds; for each fold the threshold is
    chosen (``strategy``) on the OTHER folds (optionally on only ``n_labeled`` images drawn from them,
    stratified by label) and applied to this fold; the held-out decisions are pooled so every image
    is evaluated once per seed. Nothing is chosen on the images it is evaluated on.

    Args:
        y: (N,) 0/1 labels; p: (N,) P(positive); groups: (N,) patient ids (None: images).
        strategy: threshold strategy; reference_threshold: the validation threshold ("before").
        check_size: refuse (DataError) a calibration half too small for the strategy; when False the
            figures are still computed and ``meets_minimum`` says whether every half was large enough.

    Returns:
        dict: ``site`` (pooled sensitivity / specificity / accuracy, each {value, low, high}: the value
        averages seeds; the CI resamples patients with the seeds' decisions fixed), ``per_seed``
        (the same point values per seed), ``thresholds`` (seed x fold), ``ceiling`` (the same
        strategy chosen on each evaluated fold itself: what any threshold could do there; for
        reporting only, never used to choose), ``ceiling_whole`` (one threshold chosen on all the
        images: the best a single threshold could do on this set; reporting only), ``before`` (at ``reference_threshold``, if given),
        ``meets_minimum``, ``n``, ``n_pos``, ``n_labeled``, ``strategy``, ``folds``, ``seeds``.
    """
    yy, pp = _check_binary(y, p)
    if folds < 2:
        raise DataError(f"cross-fitting needs at least 2 folds, got {folds}.")
    need_pos, need_neg = required_sample(strategy)
    site = np.zeros((len(seeds), len(yy)), dtype=bool)
    ceil = np.zeros_like(site)
    thresholds: list[list[float]] = []
    meets = True
    for s, seed in enumerate(seeds):
        fold = grouped_folds(yy, groups, folds=folds, seed=seed)
        rng = np.random.default_rng([seed, 1])
        row: list[float] = []
        for f in range(folds):
            held = fold == f
            cal = np.flatnonzero(~held)
            if n_labeled is not None:
                cal = stratified_subsample(yy, cal, n_labeled, rng)
            n_pos = int(yy[cal].sum())
            ok = n_pos >= need_pos and len(cal) - n_pos >= need_neg
            meets &= ok
            if check_size and not ok:
                check_sample_size(yy[cal], strategy)
            with warnings.catch_warnings():  # a too-small sample is marked below (meets_minimum), not warned
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                t = choose_threshold(yy[cal], pp[cal], strategy) if 0 < n_pos < len(cal) else 0.5
            row.append(float(t))
            site[s, held] = pp[held] >= t
            t_best = choose_threshold(yy[held], pp[held], strategy, finite_sample=False)  # the oracle
            ceil[s, held] = pp[held] >= t_best
        thresholds.append(row)
    t_whole = choose_threshold(yy, pp, strategy, finite_sample=False)  # one threshold, all images: the oracle
    out: dict[str, Any] = {
        "strategy": strategy,
        "folds": folds,
        "seeds": list(seeds),
        "n": len(yy),
        "n_pos": int(yy.sum()),
        "n_labeled": n_labeled,
        "meets_minimum": bool(meets),
        "thresholds": thresholds,
        "site": rates_with_cis(yy, site, groups, n_boot, 0, ci),
        "per_seed": [
            {k: float(v[0]) for k, v in _weighted_rates(np.ones((1, len(yy))), yy, d).items()} for d in site
        ],
        "ceiling": rates_with_cis(yy, ceil, groups, n_boot, 0, ci),
        "ceiling_whole": {"threshold": float(t_whole), **rates_with_cis(yy, pp >= t_whole, groups, n_boot, 0, ci)},
    }
    if reference_threshold is not None:
        out["before"] = {
            "threshold": float(reference_threshold),
            **rates_with_cis(yy, pp >= reference_threshold, groups, n_boot, 0, ci),
        }
    return out


def labeled_size_curve(
    y: Any,
    p: Any,
    groups: Any,
    strategy: str,
    sizes: tuple[int, ...] = (25, 50, 100, 200),
    *,
    repeats: int = 5,
    n_boot: int = 200,
    ci: float = 0.95,
) -> list[dict[str, Any]]:
    """Cross-fitted site figures against the number of labeled images used to choose the threshold.

    One ``crossfit_site_calibration`` per size with ``n_labeled=size`` and seeds ``0..repeats-1``
    (each seed redraws both the folds and the labeled subsample); sizes below the strategy's minimum
    are measured anyway and marked ``meets_minimum: False`` (``calibrate`` would refuse them).
    Returns one dict per size: ``n_labeled``, ``meets_minimum``, ``site``, ``ceiling``, ``ceiling_whole``,
    ``thresholds``, ``per_seed``.
    """
    rows = []
    for size in sizes:
        r = crossfit_site_calibration(
            y,
            p,
            groups,
            strategy,
            seeds=tuple(range(repeats)),
            n_labeled=int(size),
            n_boot=n_boot,
            ci=ci,
            check_size=False,
        )
        rows.append(
            {k: r[k] for k in ("n_labeled", "meets_minimum", "site", "ceiling", "ceiling_whole", "thresholds",
                               "per_seed")}  # fmt: skip
        )
    return rows

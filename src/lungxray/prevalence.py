"""Label shift at a new site: estimate its prevalence from UNLABELED images and adjust for it.

This corrects only a change of prevalence (how common each class is at the site), assuming the images
of each class look the same as in training (p(x | y) unchanged). It does NOT correct a change in how
images look (other scanners, adults instead of children, other views); for that, see the set-level
shift test in ``lungxray.evaluation.shift`` and recalibrate on labeled site data (``lungxray.site``).

* ``em_prevalence``: Saerens, Latinne & Decaestecker (2002), EM on the model's posteriors. It needs
  calibrated posteriors: apply (bias-corrected) temperature scaling fitted on validation first
  (Alexandari, Kundaje & Shrikumar, ICML 2020; ``lungxray.site.fit_temperature``).
* ``bbse_prevalence``: black-box shift estimation (Lipton, Wang & Smola, 2018): invert the validation
  confusion matrix of hard predictions; robust to miscalibration, noisier.
* ``adjust_for_prior`` / ``threshold_for_prior``: Bayes' rule for the new prior.

Binary inputs are (N,) P(positive) with a scalar prior (the positive prevalence); multiclass inputs
are (N, K) with (K,) priors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lungxray.errors import DataError
from lungxray.evaluation.metrics.bootstrap import bootstrap_weights, percentile_ci

_EPS = 1e-12


def _as_2d(prob: Any, prior: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """(N, K) probabilities and (K,) prior; ``binary`` when given as (N,) and a scalar."""
    p = np.asarray(prob, dtype=np.float64)
    binary = p.ndim == 1
    if binary:
        p = np.stack([1.0 - p, p], axis=1)
        pi = np.asarray([1.0 - float(prior), float(prior)])
    else:
        pi = np.asarray(prior, dtype=np.float64).reshape(-1)
    if p.ndim != 2 or p.shape[1] != len(pi) or not len(p):
        raise DataError(
            f"prob must be (N,) or (N, K) with a prior of K values; got {p.shape} and {pi.shape}."
        )
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise DataError("prob must hold finite probabilities in [0, 1].")
    if (pi <= 0).any() or abs(pi.sum() - 1.0) > 1e-6:
        raise DataError(f"the training prior must be positive and sum to 1; got {pi.tolist()}.")
    return p, pi, binary


def _out(prior: np.ndarray, binary: bool) -> Any:
    return float(prior[1]) if binary else prior


def adjust_for_prior(prob: Any, train_prior: Any, new_prior: Any) -> Any:
    """Posteriors under ``new_prior``: p'(y|x) proportional to p(y|x) * new(y) / train(y).

    Binary: (N,) P(positive) and scalar priors -> (N,). Multiclass: (N, K) and (K,) -> (N, K).
    Corrects a change of prevalence only, not a change in how images look.
    """
    p, pi, binary = _as_2d(prob, train_prior)
    q = _as_2d(p[:1, 1] if binary else p[:1], new_prior)[1]
    w = p * (q / pi)
    w /= np.maximum(w.sum(axis=1, keepdims=True), _EPS)
    return w[:, 1] if binary else w


def threshold_for_prior(threshold: float, train_prior: float, new_prior: float) -> float:
    """The threshold on UNadjusted P(positive) that makes the same decisions as ``threshold`` on the
    prior-adjusted posteriors (binary).

    ``adjust(p) >= t`` <=> ``odds(p) * odds(new) / odds(train) >= odds(t)`` <=> ``odds(p) >= odds(t) *
    odds(train) / odds(new)``; the returned value is that odds as a probability. A higher site
    prevalence lowers the threshold.

    >>> round(threshold_for_prior(0.5, 0.5, 0.8), 3)
    0.2
    """
    for name, v in (("train_prior", train_prior), ("new_prior", new_prior)):
        if not 0.0 < v < 1.0:
            raise DataError(f"{name} must be in (0, 1), got {v}.")
    if threshold <= 0.0 or threshold >= 1.0:
        return float(threshold)  # "always" / "never" positive stay so under any prior
    o = threshold / (1 - threshold) * (train_prior / (1 - train_prior)) / (new_prior / (1 - new_prior))
    return float(o / (1 + o))


def em_prevalence(prob: Any, train_prior: Any, *, max_iter: int = 1000, tol: float = 1e-8) -> Any:
    """Site prevalence by EM on posteriors (Saerens et al. 2002).

    E-step: adjust every posterior to the current prior estimate; M-step: the new prior is the mean
    adjusted posterior. Converges to the maximum-likelihood prior when the posteriors are calibrated
    for the training prior.

    Args:
        prob: (N,) P(positive) or (N, K) class posteriors of the site's unlabeled images.
        train_prior: the prior the posteriors are calibrated for (the training prevalence, scalar or (K,)).

    Returns:
        the estimated positive prevalence (float) for binary input, else the (K,) prior.
    """
    p, pi, binary = _as_2d(prob, train_prior)
    q = pi.copy()
    for _ in range(max_iter):
        w = p * (q / pi)
        w /= np.maximum(w.sum(axis=1, keepdims=True), _EPS)
        new = w.mean(axis=0)
        done = np.abs(new - q).max() < tol
        q = new
        if done:
            break
    return _out(q, binary)


def bbse_prevalence(val_y: Any, val_pred: Any, site_pred: Any, n_classes: int) -> np.ndarray:
    """Site prior (K,) by black-box shift estimation (Lipton et al. 2018).

    Solves ``C q = mu`` where ``C[i, j] = P(pred = i | y = j)`` on validation and ``mu[i]`` is the
    share of site images predicted ``i``; negative entries are clipped to 0 and the result renormalised.

    Args:
        val_y: (N,) validation labels 0..K-1; val_pred: (N,) validation hard predictions 0..K-1.
        site_pred: (M,) site hard predictions 0..K-1 (binary: ``p >= threshold``).

    Raises:
        DataError: a class absent from validation, or a singular confusion matrix (the classifier
        does not separate the classes), where the estimate is undefined.
    """
    vy = np.asarray(val_y).astype(int).reshape(-1)
    vp = np.asarray(val_pred).astype(int).reshape(-1)
    sp = np.asarray(site_pred).astype(int).reshape(-1)
    if len(vy) != len(vp) or not len(sp):
        raise DataError("bbse_prevalence: val_y and val_pred must match and site_pred be non-empty.")
    cm = np.zeros((n_classes, n_classes))
    np.add.at(cm, (vp, vy), 1.0)
    per_class = cm.sum(axis=0)
    if (per_class == 0).any():
        raise DataError(
            f"bbse_prevalence: validation lacks class(es) {np.flatnonzero(per_class == 0).tolist()}."
        )
    c = cm / per_class
    mu = np.bincount(sp, minlength=n_classes) / len(sp)
    if abs(np.linalg.det(c)) < 1e-6:
        raise DataError("bbse_prevalence: the validation confusion matrix is singular; BBSE is undefined.")
    q = np.clip(np.linalg.solve(c, mu), 0.0, None)
    if q.sum() <= 0:
        raise DataError("bbse_prevalence: the estimate collapsed to zero after clipping.")
    return q / q.sum()


def bootstrap_prevalence(
    site: Any,
    estimator: Callable[[np.ndarray], Any],
    *,
    groups: Any = None,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[Any, Any, Any]:
    """``(estimate, low, high)``: ``estimator(site)`` and its percentile CI over resampled site images.

    ``site`` is an array whose rows are images (posteriors (N,) / (N, K), or hard predictions);
    resamples draw patients when ``groups`` (N,) is given, keeping each patient's images together.
    The CI covers the sampling of site images only, not the model's validation-set uncertainty.

    >>> est, lo, hi = bootstrap_prevalence(p_site, lambda p: em_prevalence(p, 0.74))
    """
    arr = np.asarray(site)
    est = estimator(arr)
    samples = []
    for w in bootstrap_weights(len(arr), groups=groups, n=n_boot, seed=seed):
        for row in w:
            idx = np.repeat(np.arange(len(arr)), row.astype(int))
            samples.append(np.atleast_1d(np.asarray(estimator(arr[idx]), dtype=np.float64)))
    s = np.stack(samples)
    bounds = [percentile_ci(s[:, k], ci) for k in range(s.shape[1])]
    lo = np.asarray([b[0] for b in bounds])
    hi = np.asarray([b[1] for b in bounds])
    if np.ndim(est) == 0:
        return float(est), float(lo[0]), float(hi[0])
    return np.asarray(est), lo, hi

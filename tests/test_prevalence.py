"""Label-shift estimation: EM, BBSE, bootstrap CIs, prior adjustment of posteriors and thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from lungxray.errors import DataError
from lungxray.prevalence import (
    adjust_for_prior,
    bbse_prevalence,
    bootstrap_prevalence,
    em_prevalence,
    threshold_for_prior,
)


def _calibrated(n, prevalence, train_prior=0.5, seed=0, sep=1.5):
    """Labels at ``prevalence`` and posteriors calibrated for ``train_prior`` (Gaussian class scores)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    x = rng.normal(0, 1, n) + sep * (2 * y - 1) / 2
    # exact posterior under train_prior: log-likelihood ratio sep * x plus the prior log-odds
    logit = sep * x + np.log(train_prior / (1 - train_prior))
    return y, 1 / (1 + np.exp(-logit))


@pytest.mark.parametrize("true", [0.625, 0.72, 0.2, 0.5])
def test_em_recovers_known_prevalence(true):
    _, p = _calibrated(4000, true, train_prior=0.5, seed=1)
    assert em_prevalence(p, 0.5) == pytest.approx(true, abs=0.03)


def test_em_multiclass_returns_a_prior():
    rng = np.random.default_rng(3)
    means = np.eye(3) * 2.0
    true = np.array([0.6, 0.3, 0.1])
    y = rng.choice(3, size=5000, p=true)
    x = means[y] + rng.normal(0, 1, (5000, 3))
    loglik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)  # uniform training prior
    post = np.exp(loglik - loglik.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    q = em_prevalence(post, np.full(3, 1 / 3))
    assert q.shape == (3,) and q.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(q, true, atol=0.03)


def test_bbse_recovers_known_prevalence():
    vy, vp = _calibrated(4000, 0.5, seed=2)
    sy, sp = _calibrated(4000, 0.625, seed=3)
    q = bbse_prevalence(vy, vp >= 0.5, sp >= 0.5, 2)
    assert q[1] == pytest.approx(0.625, abs=0.03) and q.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "val_y, val_pred, site_pred, match",
    [
        ([0, 0, 0], [0, 1, 0], [0, 1], "lacks class"),
        ([0, 1, 0, 1], [0, 0, 0, 0], [0, 1], "singular"),
        ([0, 1], [0, 1, 1], [0], "must match"),
    ],
)
def test_bbse_degenerate_cases(val_y, val_pred, site_pred, match):
    with pytest.raises(DataError, match=match):
        bbse_prevalence(val_y, val_pred, site_pred, 2)


def test_bbse_clips_impossible_estimates():
    # the site predicts positive more often than even a perfect-prevalence-1 site would: clip to [0, 1]
    q = bbse_prevalence([0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], 2)
    np.testing.assert_allclose(q, [0.0, 1.0])


def test_bootstrap_ci_covers_the_truth_mostly():
    hits = 0
    for seed in range(10):
        _, p = _calibrated(400, 0.625, seed=100 + seed)
        est, lo, hi = bootstrap_prevalence(p, lambda a: em_prevalence(a, 0.5, tol=1e-6), n_boot=50, seed=seed)
        assert lo <= est <= hi
        hits += lo <= 0.625 <= hi
    assert hits >= 8


def test_bootstrap_resamples_patients_and_handles_vectors():
    _, p = _calibrated(300, 0.6, seed=5)
    groups = np.arange(300) // 3
    est, lo, hi = bootstrap_prevalence(
        np.stack([1 - p, p], 1), lambda a: em_prevalence(a, [0.5, 0.5]), groups=groups, n_boot=50
    )
    assert est.shape == lo.shape == hi.shape == (2,) and (lo <= hi).all()


@pytest.mark.parametrize(
    "p, train, new, expected",
    [
        ([0.5], 0.5, 0.5, [0.5]),  # same prior: unchanged
        ([0.5], 0.5, 0.8, [0.8]),  # an uninformative posterior becomes the new prior
        ([0.0, 1.0], 0.5, 0.9, [0.0, 1.0]),  # certainty stays
        ([0.8], 0.8, 0.5, [0.5]),
    ],
)
def test_adjust_for_prior_table(p, train, new, expected):
    np.testing.assert_allclose(adjust_for_prior(p, train, new), expected, atol=1e-9)


def test_adjust_for_prior_rejects_bad_priors():
    with pytest.raises(DataError):
        adjust_for_prior([0.5], 0.0, 0.5)
    with pytest.raises(DataError):
        adjust_for_prior(np.full((2, 2), 0.5), [0.3, 0.3], [0.5, 0.5])


@pytest.mark.parametrize(
    "t, train, new, expected",
    [
        (0.5, 0.5, 0.5, 0.5),
        (0.5, 0.5, 0.8, 0.2),
        (0.5, 0.8, 0.5, 0.8),
        (0.0, 0.5, 0.9, 0.0),
        (1.0, 0.5, 0.1, 1.0),
    ],
)
def test_threshold_for_prior_table(t, train, new, expected):
    assert threshold_for_prior(t, train, new) == pytest.approx(expected)


def test_threshold_for_prior_matches_adjusted_decisions():
    p = np.linspace(0.001, 0.999, 997)
    for t, train, new in [(0.3, 0.74, 0.625), (0.9, 0.5, 0.2), (0.05, 0.3, 0.7)]:
        t_new = threshold_for_prior(t, train, new)
        same = (adjust_for_prior(p, train, new) >= t) == (p >= t_new)
        assert same.mean() >= 0.998  # only the grid point at the boundary may differ by rounding
    with pytest.raises(DataError):
        threshold_for_prior(0.5, 1.0, 0.5)

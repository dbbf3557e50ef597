"""Out-of-distribution scoring: Mahalanobis distance of penultimate features to the training set.

Fitted once at the end of training (mean and shrunk precision of training features, threshold at a
quantile of VALIDATION distances); at prediction time an input far from the training X-rays (a photo,
a lateral view, a knee) is flagged instead of getting a confident label.
"""

from __future__ import annotations

import numpy as np


def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and Ledoit-Wolf shrunk precision (D, D) of features (N, D) float."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(features.astype(np.float64))
    return lw.location_.astype(np.float32), lw.precision_.astype(np.float32)


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distances (N,) float32 of features (N, D) to the fitted Gaussian, in standard-deviation units."""
    d = features.astype(np.float64) - mean.astype(np.float64)
    sq = np.einsum("nd,de,ne->n", d, precision.astype(np.float64), d)
    return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)


def fit_threshold(val_distances: np.ndarray, quantile: float = 0.99) -> float:
    """OOD threshold: the ``quantile`` of validation distances (about 1% of in-distribution flagged)."""
    return float(np.quantile(val_distances, quantile))

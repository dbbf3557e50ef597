"""A gallery of lung-field masks drawn as contours on their X-rays: the by-eye check of a lung
model on films unlike its training set (e.g. Kermany's pediatric films)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def mask_gallery(
    images: np.ndarray,
    masks: np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    truth: np.ndarray | None = None,
    ncols: int = 6,
) -> Figure:
    """uint8 images (N, S, S) + bool masks (N, S, S) -> a Figure: each X-ray with its mask contour
    (red) and, when given, the reference mask contour (green dashed). Draws on its own Figure."""
    from matplotlib.figure import Figure

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(2.4 * ncols, 2.6 * nrows), dpi=100)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        if masks[i].any():
            ax.contour(masks[i].astype(float), levels=[0.5], colors="red", linewidths=1.0)
        if truth is not None and truth[i].any():
            ax.contour(truth[i].astype(float), levels=[0.5], colors="lime", linewidths=0.8, linestyles="--")
        if titles is not None:
            ax.set_title(str(titles[i])[:28], fontsize=7)
    fig.tight_layout()
    return fig

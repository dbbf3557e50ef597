"""Unsupervised site adaptation of a run's BatchNorm statistics (AdaBN; Li et al., ICLR-W 2017).

A threshold (``site.py``) moves the operating point along a fixed ranking; it cannot change which
films the model ranks above which. AdaBN re-estimates every BatchNorm layer's running mean and
variance on the site's own images (no labels, no gradient, no learned weight changes), so that each
layer's features are standardised by the site's statistics instead of the training hospital's. It
can change the ranking, for better or worse: ``benchmarks/site_adaptation.py`` measures it under the
cross-fitted site protocol, never on the images it adapted on.

``adapt_batchnorm(model, images, ...)`` works on any model of the package (a TTA wrapper, a k-fold
``Ensemble``; each member's layers see the images through its own forward): every BatchNorm layer's
statistics are reset and recomputed as the cumulative average over batches (PyTorch's
``momentum=None``), with every other module (Dropout) in eval mode. The model is modified in place and
returned in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from lungxray.errors import DataError
from lungxray.inference import to_input

__all__ = ["MIN_ADAPT_IMAGES", "adapt_batchnorm", "batchnorm_layers"]

MIN_ADAPT_IMAGES = 50  # fewer site images than this give too noisy a per-channel variance


def batchnorm_layers(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that keeps running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            yield m


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    images: np.ndarray,
    *,
    normalization: dict,
    in_chans: int = 1,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Replace the running statistics of every BatchNorm layer by those of ``images``.

    Args:
        model: a run's model (``rundir.load_run(...).model``), modified in place.
        images: (N, S, S) uint8 model-ready site images (the run's preprocessing already applied),
            N >= ``MIN_ADAPT_IMAGES``; labels are never needed.
        normalization / in_chans: the run card's preprocessing (``card.preprocessing``).
        batch_size: images per forward; the statistics average the batches' (the last, partial one
            counts as much as the others, PyTorch's ``momentum=None``).

    Returns:
        the same model, in eval mode, now standardising with the site's statistics.

    Raises:
        DataError: fewer than ``MIN_ADAPT_IMAGES`` images, or a model without BatchNorm layers.
    """
    images = np.asarray(images)
    if len(images) < MIN_ADAPT_IMAGES:
        raise DataError(
            f"adapting BatchNorm statistics needs at least {MIN_ADAPT_IMAGES} site images, got {len(images)}."
        )
    layers = list(batchnorm_layers(model))
    if not layers:
        raise DataError(f"{type(model).__name__} has no BatchNorm layer with running statistics to adapt.")
    device = torch.device(device)
    model.to(device).eval()
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    try:
        for start in range(0, len(images), batch_size):
            model(to_input(images[start : start + batch_size], normalization, device, in_chans))
    finally:
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
        model.eval()
    return model

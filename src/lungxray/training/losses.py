"""Training losses and class weights; the validation scores the loop reports each epoch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lungxray.data.manifest import Manifest


def class_weights(m: Manifest) -> torch.Tensor:
    """Loss weights against imbalance: binary -> pos_weight (1,); multiclass -> (C,); multilabel -> pos_weight (C,)."""
    y = m.labels
    if m.task == "multiclass":
        counts = np.nansum(y, axis=0)
        w = len(y) / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32)
    pos = np.nansum(y, axis=0)
    known = np.sum(~np.isnan(y), axis=0)
    neg = known - pos
    w = np.clip(neg / np.maximum(pos, 1), 0.05, 50.0)
    return torch.tensor(w[1:] if m.task == "binary" else w, dtype=torch.float32)


def loss_fn(
    task: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float
) -> torch.Tensor:
    """Mean loss. target: binary (N,) 0/1; multiclass (N,) int; multilabel (N, C) with NaN = unknown (masked)."""
    logits = logits.float()
    if task == "multiclass":
        return F.cross_entropy(logits, target.long(), weight=weight, label_smoothing=smoothing)
    if task == "binary":
        logits, target = logits.reshape(-1), target.float().reshape(-1)
    mask = ~torch.isnan(target)
    t = torch.nan_to_num(target, nan=0.0)
    if smoothing:
        t = t * (1 - smoothing) + 0.5 * smoothing
    loss = F.binary_cross_entropy_with_logits(logits, t, pos_weight=weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def mixup_lambda(alpha: float, g: torch.Generator) -> float:
    """A mixing weight drawn from Beta(``alpha``, ``alpha``): ONE uniform draw from ``g`` through the
    inverse Beta CDF (so the trainer's generator, checkpointed for --resume, is the only RNG used)."""
    from scipy.special import betaincinv

    u = float(torch.rand(1, generator=g, dtype=torch.float64).item())
    return float(betaincinv(alpha, alpha, u))


def mix_batch(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Mixup of a batch (N, ...) with its reverse: ``lam * x + (1 - lam) * x.flip(0)``.

    The batch order is already a random permutation, so the reverse pairs images at random (timm's
    ``Mixup`` does the same); mixing normalised inputs equals normalising mixed ones (affine).
    """
    return x.mul(lam).add_(x.flip(0), alpha=1.0 - lam)


def mixup_loss(
    task: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float,
    lam: float,
) -> torch.Tensor:  # fmt: skip
    """Loss of a ``mix_batch`` batch: ``lam * loss(target) + (1 - lam) * loss(target reversed)``.

    Cross-entropy and BCE are linear in the target, so this is the loss of the mixed (soft) target,
    with the class weights (``pos_weight``), label smoothing and multilabel NaN masks applied as usual.
    """
    return lam * loss_fn(task, logits, target, weight, smoothing) + (1.0 - lam) * loss_fn(
        task, logits, target.flip(0), weight, smoothing
    )


def logit(prob: np.ndarray, task: str) -> np.ndarray:
    """Invert the output activation (for a validation loss from stored probabilities)."""
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) if task == "multiclass" else np.log(p / (1 - p))

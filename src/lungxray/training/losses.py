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


def logit(prob: np.ndarray, task: str) -> np.ndarray:
    """Invert the output activation (for a validation loss from stored probabilities)."""
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) if task == "multiclass" else np.log(p / (1 - p))

"""Training losses and class weights; the validation scores the loop reports each epoch."""

from __future__ import annotations

import contextlib

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


def validation_scores(task: str, y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """auc / accuracy / f1 at 0.5 on validation (macro over classes or labels); NaN when undefined."""
    from sklearn.metrics import f1_score, roc_auc_score

    out = {"auc": float("nan"), "accuracy": float("nan"), "f1": float("nan")}
    with contextlib.suppress(ValueError):
        if task == "binary":
            out["auc"] = roc_auc_score(y, prob[:, 0])
        elif task == "multiclass":
            out["auc"] = roc_auc_score(y, prob, multi_class="ovr", average="macro")
        else:
            aucs = []
            for c in range(y.shape[1]):
                known = ~np.isnan(y[:, c])
                if len(np.unique(y[known, c])) == 2:
                    aucs.append(roc_auc_score(y[known, c], prob[known, c]))
            out["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    if task == "binary":
        pred = (prob[:, 0] >= 0.5).astype(int)
        out["accuracy"] = float(np.mean(pred == y))
        out["f1"] = float(f1_score(y, pred, zero_division=0))
    elif task == "multiclass":
        pred = prob.argmax(1)
        out["accuracy"] = float(np.mean(pred == y))
        out["f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
    else:
        known = ~np.isnan(y)
        pred = prob >= 0.5
        out["accuracy"] = float(np.mean(pred[known] == (y[known] > 0.5)))
        out["f1"] = float(
            f1_score(np.nan_to_num(y).astype(int), pred.astype(int), average="macro", zero_division=0)
        )
    return {k: float(v) for k, v in out.items()}

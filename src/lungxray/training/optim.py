"""Optimizers, learning-rate schedules and the EMA of weights the training loop uses."""

from __future__ import annotations

import math

import torch

from lungxray.config import Config, ModelConfig, TrainConfig
from lungxray.models.parts import freeze_backbone


def lr_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """LR factor at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_optimizer(
    name: str, params, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, c: TrainConfig, lr: float, total: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step schedule of one phase of ``total`` steps peaking at ``lr`` (``c.schedule``, ``c.warmup_epochs``)."""
    warmup = int(round(c.warmup_epochs * steps_per_epoch))
    # OneCycleLR needs > 1 step in each of its two phases (it divides by the phase length);
    # a phase shorter than 4 steps (a smoke run) uses warm-up + cosine instead.
    if c.schedule == "onecycle" and total >= 4:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total,
            pct_start=max(1.5 / total, min(0.5, max(0.01, warmup / total))),
            cycle_momentum=c.optimizer in ("sgd", "rmsprop"),
        )
    schedule = "cosine" if c.schedule == "onecycle" else c.schedule
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total, warmup, schedule))


def frozen_at(m: ModelConfig, epoch: int) -> bool:
    """Whether the backbone is frozen in (0-based) ``epoch``: ``transfer`` freeze, or freeze-then-finetune
    before ``freeze_epochs``."""
    return m.transfer == "freeze" or (m.transfer == "freeze-then-finetune" and epoch < m.freeze_epochs)


def phase_optimizer(
    model: torch.nn.Module, cfg: Config, epoch: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Freeze or unfreeze ``model``'s backbone for the phase ``epoch`` is in; that phase's optimizer and
    schedule (a staged fine-tune runs at ``finetune_lr_scale`` x lr over its own epochs)."""
    c, mc = cfg.train, cfg.model
    frozen = frozen_at(mc, epoch)
    params = freeze_backbone(model, frozen)
    staged = mc.transfer == "freeze-then-finetune"
    lr = c.lr * (mc.finetune_lr_scale if staged and not frozen else 1.0)
    start = mc.freeze_epochs if staged and not frozen else 0
    end = mc.freeze_epochs if staged and frozen else c.epochs
    total = max(1, (end - start) * steps_per_epoch)
    optimizer = make_optimizer(c.optimizer, params, lr, c.weight_decay, c.momentum)
    return optimizer, make_scheduler(optimizer, c, lr, total, steps_per_epoch)


class EMA:
    """Exponential moving average of a model's parameters and buffers (decay per step).

    The loop updates it after every optimizer step; validation, the best checkpoint and the final
    weights then use the averaged weights (``train.ema``).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

"""Batched augmentation as tensor ops, so it runs on the training device (CPU or GPU).

One random affine warp per image (rotation, shift, zoom, shear, optional horizontal flip) through a
single ``affine_grid`` + ``grid_sample``, then intensity jitter (brightness, contrast, gamma).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lungxray.config import AugmentConfig


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g) * (high - low) + low


class Augment:
    """Random geometric and intensity augmentation of a batch.

    ``Augment(cfg)(x, generator)`` takes ``x`` (N, C, H, W) float in [0, 1] on any device and returns a
    tensor of the same shape, device and range. Randomness comes only from ``generator`` (a CPU
    ``torch.Generator``) so a seeded run is reproducible on any device.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        c = self.cfg
        return any(
            v > 0 for v in (c.rotate, c.shift, c.zoom, c.shear, c.hflip, c.brightness, c.contrast, c.gamma)
        )

    def affine_matrices(self, n: int, g: torch.Generator) -> torch.Tensor:
        """(n, 2, 3) float32 matrices mapping output to input coordinates in [-1, 1] units."""
        c = self.cfg
        angle = _uniform(n, -c.rotate, c.rotate, g) * (math.pi / 180)
        shear = _uniform(n, -c.shear, c.shear, g) * (math.pi / 180)
        scale = 1.0 + _uniform(n, -c.zoom, c.zoom, g)
        shift = torch.stack([_uniform(n, -c.shift, c.shift, g), _uniform(n, -c.shift, c.shift, g)], 1) * 2
        flip = torch.where(torch.rand(n, generator=g) < c.hflip, -1.0, 1.0)
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # rotation @ shear(x) @ flip, divided by zoom (grid maps output pixels back to input)
        a = torch.stack([cos * flip, (cos * tan - sin)], 1) / scale[:, None]
        b = torch.stack([sin * flip, (sin * tan + cos)], 1) / scale[:, None]
        return torch.stack([torch.cat([a, shift[:, :1]], 1), torch.cat([b, shift[:, 1:]], 1)], 1)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return x
        c, n = self.cfg, x.shape[0]
        theta = self.affine_matrices(n, g).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        shape = (n, 1, 1, 1)
        gamma = torch.exp(_uniform(n, -c.gamma, c.gamma, g)).view(shape).to(x)
        contrast = (1.0 + _uniform(n, -c.contrast, c.contrast, g)).view(shape).to(x)
        bright = _uniform(n, -c.brightness, c.brightness, g).view(shape).to(x)
        x = x.clamp(0, 1) ** gamma
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + bright
        return x.clamp(0, 1)

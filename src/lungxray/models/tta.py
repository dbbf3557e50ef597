"""Test-time augmentation (TTA): a model wrapper averaging the logits over a fixed set of views.

``eval.tta: N`` (recorded in model.json as ``tta``) uses the first N entries of ``VIEWS``; every
stage that loads the run (``rundir.load_run``: calibration, predict, evaluate, serve, export) wraps
the model the same way, so a threshold chosen with TTA is applied with TTA. The views are small
geometric changes within the training augmentation's range (shift 5 %, zoom 8 %); never a horizontal
flip (the heart is on the left). Pixels sampled outside the image repeat the border.

The views are bilinear ``grid_sample`` resamplings (ONNX GridSample, opset >= 16) of the normalised
input; the identity view is the input itself. The wrapper answers the timm API: its pre-logits
embedding is the MEAN of the views' embeddings and its classifier the model's own, which equals the
mean of the views' logits because the classifier is affine (a Linear, or an ensemble's ``MeanHead``
of Linears); ``TTA`` refuses any other head. The OOD features of a TTA run are that mean embedding
(same dimension as without TTA).

>>> [name for name, *_ in VIEWS[:3]]
['identity', 'zoom 1.05', 'shift right 4%']
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lungxray.config import MAX_TTA_VIEWS
from lungxray.errors import ModelError
from lungxray.models.ensemble import MeanHead, member_embedding

__all__ = ["TTA", "VIEWS", "unwrap_tta", "view_batch", "with_tta"]

# (name, zoom, dx, dy): the content is scaled by ``zoom`` about the centre, then moved right by ``dx``
# and down by ``dy`` (fractions of the side). Order matters: eval.tta N takes the first N.
VIEWS: tuple[tuple[str, float, float, float], ...] = (
    ("identity", 1.0, 0.0, 0.0),
    ("zoom 1.05", 1.05, 0.0, 0.0),
    ("shift right 4%", 1.0, 0.04, 0.0),
    ("shift left 4%", 1.0, -0.04, 0.0),
    ("shift down 4%", 1.0, 0.0, 0.04),
    ("shift up 4%", 1.0, 0.0, -0.04),
    ("zoom 0.95", 0.95, 0.0, 0.0),
)
assert len(VIEWS) == MAX_TTA_VIEWS


def _grid(h: int, w: int, zoom: float, dx: float, dy: float) -> torch.Tensor:
    """The (1, H, W, 2) sampling grid (x, y in [-1, 1], align_corners=False) of one view: a constant."""
    xs = (np.arange(w) * 2 + 1) / w - 1
    ys = (np.arange(h) * 2 + 1) / h - 1
    gx = np.broadcast_to(xs[None, :] / zoom - 2 * dx, (h, w))
    gy = np.broadcast_to(ys[:, None] / zoom - 2 * dy, (h, w))
    return torch.from_numpy(np.stack([gx, gy], axis=-1)[None].astype(np.float32))


def view_batch(x: torch.Tensor, view: tuple[str, float, float, float]) -> torch.Tensor:
    """One view of a batch (N, C, H, W): bilinear resampling with border padding (the identity: ``x``)."""
    _, zoom, dx, dy = view
    if zoom == 1.0 and dx == 0.0 and dy == 0.0:
        return x
    n, c, h, w = x.shape
    grid = _grid(int(h), int(w), zoom, dx, dy).to(device=x.device, dtype=x.dtype)
    # the batch folded into channels: one (1, H, W, 2) grid serves any batch size (dynamic ONNX axis)
    flat = x.reshape(1, -1, int(h), int(w))
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(-1, int(c), int(h), int(w))


def _affine(head: nn.Module) -> bool:
    if isinstance(head, MeanHead):
        return all(_affine(h) for h in head.heads)
    return isinstance(head, nn.Linear | nn.Identity)


class TTA(nn.Module):
    """``model`` evaluated on the first ``n_views`` of ``VIEWS``; logits = mean over the views."""

    def __init__(self, model: nn.Module, n_views: int):
        super().__init__()
        if not 1 <= int(n_views) <= len(VIEWS):
            raise ModelError(f"TTA takes 1..{len(VIEWS)} views, got {n_views}.")
        if not _affine(model.get_classifier()):
            raise ModelError(
                f"TTA averages embeddings before the classifier, which must be affine (Linear); "
                f"{type(model).__name__} has a {type(model.get_classifier()).__name__} head."
            )
        self.model = model
        self.views = VIEWS[: int(n_views)]
        self.num_classes = int(getattr(model, "num_classes", 1))
        self.arch_name = getattr(model, "arch_name", None)

    @property
    def wrapped_model(self) -> nn.Module:
        """The model inside (``models.parts.cam_target_layers`` unwraps by this name)."""
        return self.model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the mean over the views of the model's pre-logits embedding (N, D)."""
        embs = [member_embedding(self.model, view_batch(x, v)) for v in self.views]
        return torch.stack(embs, dim=0).mean(dim=0)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.get_classifier()(f)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def unwrap_tta(model: nn.Module) -> nn.Module:
    """The model inside a TTA wrapper (or ``model`` itself)."""
    return model.model if isinstance(model, TTA) else model


def with_tta(model: nn.Module, n_views: int) -> nn.Module:
    """``TTA(model, n_views)`` when ``n_views`` >= 2, else ``model`` unchanged (TTA off)."""
    return TTA(unwrap_tta(model), n_views) if int(n_views or 0) >= 2 else model

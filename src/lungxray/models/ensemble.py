"""An ensemble of n models of one architecture whose output is the MEAN OF THEIR LOGITS.

Why logits (not probabilities): the mean of logits is one more linear layer on top of the members,
so the ensemble is an ordinary module of the timm API that exports to ONNX as one graph, keeps the
binary "one logit" contract of every other run, and decides with the same threshold / argmax rules.
(Averaging probabilities differs little for members trained alike; logits are the simple choice.)

The timm API the rest of lungxray uses (``inference.predict_batches``, ``export``, OOD):

* ``forward_features(x)`` -> the members' pre-logits embeddings, concatenated: (N, n * D);
* ``forward_head(f, pre_logits=True)`` -> ``f``; ``pre_logits=False`` -> the averaged logits (N, K);
* ``get_classifier()`` -> a ``MeanHead`` mapping (N, n * D) to mean_k head_k(chunk_k): (N, K).

The OOD statistics of an ensemble run are therefore fitted on the concatenated embeddings. Grad-CAM
uses every member's CAM layer (``parts.cam_target_layers``). Registered as ``"ensemble"`` with kwargs
``{member, member_kwargs, n}``, so ``create_model`` rebuilds it from a model.json and
``model.safetensors`` holds every member (``members.0.*``, ``members.1.*``, ...).

>>> import torch
>>> ens = create_ensemble("cnn-small", {"width": 4}, 3, in_chans=1, num_classes=1)
>>> ens(torch.zeros(2, 1, 32, 32)).shape
torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lungxray.errors import ModelError
from lungxray.models.registry import register_model

__all__ = ["Ensemble", "MeanHead", "create_ensemble", "member_embedding"]


def member_embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A model's pre-logits embedding (N, D) of a batch (N, C, H, W) (flattened when it has more axes)."""
    f = model.forward_head(model.forward_features(x), pre_logits=True)
    return f.flatten(1) if f.ndim > 2 else f


class MeanHead(nn.Module):
    """(N, n * D) concatenated embeddings -> mean over k of ``heads[k](chunk k)``: (N, K) logits.

    Built on demand by ``Ensemble.get_classifier()`` around the members' own classifiers (it owns no
    parameters of its own; it is not a registered submodule, so the weights file lists each once).
    An average of affine heads is affine, so test-time augmentation may average its inputs.
    """

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        chunks = emb.chunk(len(self.heads), dim=1)
        logits = [head(chunk) for head, chunk in zip(self.heads, chunks, strict=True)]
        return torch.stack(logits, dim=0).mean(dim=0)


class Ensemble(nn.Module):
    """n members of one architecture (same input, same outputs); output = mean of member logits."""

    def __init__(self, members: Sequence[nn.Module], member_name: str | None = None):
        super().__init__()
        if not members:
            raise ModelError("an ensemble needs at least one member.")
        self.members = nn.ModuleList(members)
        self.arch_name = "ensemble"
        self.member_name = member_name or getattr(members[0], "arch_name", None)
        self.num_classes = int(getattr(members[0], "num_classes", 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> concatenated member embeddings (N, n * D)."""
        return torch.cat([member_embedding(m, x) for m in self.members], dim=1)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Embeddings (N, n * D) -> themselves (``pre_logits``) or the mean member logits (N, K)."""
        return f if pre_logits else self.get_classifier()(f)

    def get_classifier(self) -> MeanHead:
        return MeanHead([m.get_classifier() for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def create_ensemble(
    member: str, member_kwargs: dict[str, Any] | None, n: int, *, in_chans: int, num_classes: int,
    img_size: int | None = None,
) -> Ensemble:  # fmt: skip
    """``n`` randomly initialised ``member`` models (``create_model(member, **member_kwargs)``) as one Ensemble."""
    from lungxray.models.factory import create_model  # the factory imports the registry, not us

    if member == "ensemble":
        raise ModelError("an ensemble member cannot itself be an ensemble.")
    if int(n) < 1:
        raise ModelError(f"an ensemble needs n >= 1 members, got {n}.")
    members = [
        create_model(member, in_chans=in_chans, num_classes=num_classes, img_size=img_size, **(member_kwargs or {}))
        for _ in range(int(n))
    ]
    return Ensemble(members, member)


@register_model(
    "ensemble", default_size=128, cam_layer=None, family="composite",
    description="k-fold ensemble: kwargs {member, member_kwargs, n}; mean of the members' logits",
)  # fmt: skip
def _ensemble(in_chans: int, num_classes: int, *, member: str, n: int, member_kwargs: dict | None = None,
              img_size: int | None = None) -> Ensemble:  # fmt: skip
    return create_ensemble(member, member_kwargs, n, in_chans=in_chans, num_classes=num_classes, img_size=img_size)

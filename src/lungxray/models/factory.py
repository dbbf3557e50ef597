"""One factory over our reference models and timm backbones, always with random initialisation.

``create_model(name, in_chans=1, num_classes=1)`` builds a registered reference model (``registry``,
``reference.py``) or any timm architecture: nothing is ever downloaded. Pretrained weights come only
from a local file or run directory through ``weights.load_weights``, which adapts RGB stems to
grayscale and skips a classifier of another size. Keyword arguments that would make timm load or fetch
weights itself (``checkpoint_path``, ``pretrained*``, ``cache_dir``) are refused.

>>> import torch
>>> model = create_model("cnn-small", in_chans=1, num_classes=1)
>>> model(torch.zeros(2, 1, 128, 128)).shape
torch.Size([2, 1])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lungxray.errors import ModelError
from lungxray.models.registry import registered, unknown_model_error
from lungxray.models.weights import load_weights

__all__ = ["create_model"]

# timm.create_model keywords that load or fetch weights: a model.json's model_kwargs must not reach them
# (they would read an arbitrary file, or a download, past load_weights's safety rules).
_REFUSED_TIMM_KWARGS = {
    "checkpoint_path": "it makes timm load that file itself (torch.load), past load_weights's safety rules",
    "pretrained": "it makes timm download or load pretrained weights",
    "pretrained_cfg": "it tells timm where to find pretrained weights (a file or a download)",
    "pretrained_cfg_overlay": "it tells timm where to find pretrained weights (a file or a download)",
    "cache_dir": "it points timm at a directory of downloaded weights",
}


def _check_timm_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """ModelError naming the first keyword that would make timm load or fetch weights."""
    for key in kwargs:
        why = _REFUSED_TIMM_KWARGS.get(key)
        if why is None and key.startswith("pretrained"):
            why = "it configures timm's pretrained-weights loading"
        if why is not None:
            raise ModelError(
                f"model {name!r}: keyword {key!r} is not allowed in model.kwargs: {why}. "
                "Give local weights with model.weights (create_model(weights=...)) instead."
            )


def create_model(
    name: str,
    *,
    in_chans: int = 1,
    num_classes: int = 1,
    weights: str | Path | None = None,
    img_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture ``name`` with random weights, optionally loading a local weights file.

    Args:
        name: a reference model (``list_models()``) or a timm architecture, e.g. ``"resnet18"``.
        in_chans: input channels (1 for grayscale X-rays).
        num_classes: outputs; 1 for binary (one logit), C for multiclass / multilabel.
        weights: a .safetensors / .pt / .pth state dict or a run directory (see ``load_weights``).
        img_size: the input side the model will see; required by Flatten-based reference models and
            ViT-like timm models, ignored by size-agnostic ones. Default: the model's own.
        **kwargs: passed to the factory (e.g. ``width=24`` for cnn-small, ``drop_rate`` for timm);
            never ``checkpoint_path``, ``cache_dir`` or ``pretrained*`` for timm.

    Returns:
        the model in train mode; when ``weights`` is given, ``model.weights_report`` holds
        ``load_weights``'s report.

    Raises:
        ModelError: unknown name (with close matches), bad or refused keyword, or weights that do not fit.
    """
    entry = registered(name)
    if entry is not None:
        _, factory = entry
        if img_size is not None:
            kwargs["img_size"] = img_size
        try:
            model = factory(in_chans, num_classes, **kwargs)
        except TypeError as exc:
            raise ModelError(f"model {name!r}: bad argument ({exc}). Check model.kwargs.") from exc
    else:
        import timm

        if not timm.is_model(name):
            raise unknown_model_error(name)
        _check_timm_kwargs(name, kwargs)
        extra = dict(kwargs)
        if img_size is not None:
            extra["img_size"] = img_size
        try:
            model = timm.create_model(
                name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **extra
            )
        except TypeError as exc:
            if "img_size" not in str(exc) or "img_size" in kwargs:
                raise ModelError(f"model {name!r}: bad argument ({exc}). Check model.kwargs.") from exc
            try:  # a convolutional net: size-agnostic, takes no img_size
                model = timm.create_model(
                    name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
                )
            except TypeError as exc2:
                raise ModelError(f"model {name!r}: bad argument ({exc2}). Check model.kwargs.") from exc2
        model.arch_name = name
    if weights is not None:
        model.weights_report = load_weights(model, weights)
    return model

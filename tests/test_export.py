"""ONNX export: parity with PyTorch, the ONNX Runtime backend of Predictor, stale-export detection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_random_run, xray_files
from lungxray.errors import RunError
from lungxray.export import export_onnx
from lungxray.predict import Predictor

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run (export writes model.onnx into the run)."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("*.pt", "figures", "eval", "model.onnx"))
    return out


def test_export_parity_and_onnx_backend_matches_torch(run_copy: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    report = export_onnx(run_copy)
    assert report["ok"] and report["max_abs_diff"] < 1e-4, report
    assert report["inputs"]["real"] > 0 and report["inputs"]["random"] > 0
    assert Path(report["path"]) == run_copy / "model.onnx" and (run_copy / "model.onnx").stat().st_size > 1000

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    files = [*xray_files(3), empty, *xray_files(3, "NORMAL")]
    ref = Predictor.load(run_copy).predict_paths(files)
    onnx = Predictor.load(run_copy, backend="onnx")
    for batch in (1, 4, 64):  # the batch axis is dynamic
        got = onnx.predict_paths(files, batch_size=batch)
        for a, b in zip(ref, got, strict=True):
            assert a.error == b.error and a.label == b.label
            if a.error is None:
                assert b.score == pytest.approx(a.score, abs=1e-4)
                assert b.ood_score == pytest.approx(a.ood_score, rel=1e-3)


def test_onnx_backend_needs_a_current_export(run_copy: Path) -> None:
    with pytest.raises(RunError, match="lungxray export"):
        Predictor.load(run_copy, backend="onnx")
    export_onnx(run_copy)
    weights = run_copy / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key] = state[key] * 1.01  # retrained weights: the export is now stale
    save_file(state, str(weights))
    with pytest.raises(RunError, match="re-run"):
        Predictor.load(run_copy, backend="onnx")


def test_cli_export_to_a_chosen_file(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lungxray.cli import main

    out = tmp_path / "exports" / "m.onnx"
    main(["export", str(run_copy), "--out", str(out)])
    assert out.is_file() and "max_abs_diff" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "task"), [("resnet18", "multiclass"), ("densenet121", "multilabel")])
def test_export_parity_of_timm_backbones(tmp_path: Path, arch: str, task: str) -> None:
    run = make_random_run(tmp_path / arch, arch=arch, size=96, task=task, classes=("a", "b", "c"))
    report = export_onnx(run)
    assert report["ok"], report
    x = np.random.default_rng(0).random((5, 120, 100), dtype=np.float32)
    ref = Predictor.load(run).predict_arrays(x)
    got = Predictor.load(run, backend="onnx").predict_arrays(x)
    for a, b in zip(ref, got, strict=True):
        assert a.label == b.label
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) < 1e-4

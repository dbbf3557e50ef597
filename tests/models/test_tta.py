"""Test-time augmentation: the views, the mean of logits, the card setting, predict and ONNX parity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_random_run
from lungxray.errors import ModelError
from lungxray.models.factory import create_model
from lungxray.models.tta import TTA, VIEWS, view_batch, with_tta
from lungxray.predict import Predictor
from lungxray.runcard import RunCard
from lungxray.rundir import load_run


def test_views_identity_shift_and_zoom_move_content_as_named() -> None:
    x = torch.zeros(1, 1, 50, 50)
    x[0, 0, 20:30, 20:30] = 1.0  # a square in the middle
    assert torch.equal(view_batch(x, VIEWS[0]), x)
    right = view_batch(x, ("shift right", 1.0, 0.1, 0.0))[0, 0]
    cols = torch.nonzero(right > 0.5)[:, 1]
    assert cols.min() == 25 and cols.max() == 34  # 10 % of 50 px = 5 px to the right
    zoomed = view_batch(x, ("zoom", 1.2, 0.0, 0.0))[0, 0]
    assert (zoomed > 0.5).sum() > (x[0, 0] > 0.5).sum()  # bigger
    assert all("flip" not in name for name, *_ in VIEWS)  # the heart stays on the left


def test_tta_equals_the_mean_of_the_views_logits_and_refuses_non_affine_heads() -> None:
    torch.manual_seed(0)
    model = create_model("cnn-small", in_chans=1, num_classes=1, img_size=32, width=4).eval()
    tta = TTA(model, 5).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected = torch.stack([model(view_batch(x, v)) for v in VIEWS[:5]]).mean(0)
        assert torch.allclose(tta(x), expected, atol=1e-6)
        assert not torch.allclose(tta(x), model(x), atol=1e-4)  # the views do change the output
    assert with_tta(model, 1) is model and with_tta(model, 0) is model
    model.classifier = nn.Sequential(nn.Linear(model.num_features, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ModelError, match="affine"):
        TTA(model, 3)


@pytest.fixture
def tta_run(tmp_path: Path) -> Path:
    run = make_random_run(tmp_path / "run", size=32)
    card = RunCard.read(run)
    dataclasses.replace(card, tta=3).write(run)
    return run


def test_tta_recorded_in_the_card_is_applied_by_predict(tta_run: Path) -> None:
    assert json.loads((tta_run / "model.json").read_text())["tta"] == 3
    on = Predictor.load(tta_run)
    assert isinstance(on.model, TTA) and len(on.model.views) == 3
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    p_on, _ = on.predict_images(x)
    card = RunCard.read(tta_run)
    dataclasses.replace(card, tta=0).write(tta_run)
    assert "tta" not in json.loads((tta_run / "model.json").read_text())  # off: the card as before
    off = Predictor.load(tta_run)
    p_off, _ = off.predict_images(x)
    inner = load_run(tta_run).model
    xt = (torch.from_numpy(x).float()[:, None] / 255 - 0.449) / 0.226
    with torch.no_grad():
        expected = torch.sigmoid(torch.stack([inner(view_batch(xt, v)) for v in VIEWS[:3]]).mean(0)).numpy()
    np.testing.assert_allclose(p_on, expected, atol=1e-6)
    assert np.abs(p_on - p_off).max() > 1e-5


def test_onnx_export_of_a_tta_run_matches_torch(tta_run: Path) -> None:
    pytest.importorskip("onnxruntime")
    from lungxray.export import export_onnx

    report = export_onnx(tta_run)
    assert report["ok"] and report["max_abs_diff"] < 1e-4, report
    import onnx

    meta = {p.key: p.value for p in onnx.load(report["path"]).metadata_props}
    assert json.loads(meta["lungxray"])["tta"] == 3

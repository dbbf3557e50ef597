"""Shortcut audit: explanation mass per region and occlusion AUCs on synthetic cases with known
answers, the runner on a real (random-weight) run, and the skip when no lung model is given."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA_ROOT, make_random_run, random_lung_run, require_data
from lungxray.evaluation.shortcut import (
    NO_MASK_NOTE,
    auc_table,
    audit_shortcuts,
    cam_mass,
    load_audit_set,
    occlude,
    occlusion_auc,
    region_masks,
    shortcut_section,
)

S = 20


def _lungs(n: int) -> np.ndarray:
    m = np.zeros((n, S, S), bool)
    m[:, 4:14, 3:9] = True
    m[:, 4:14, 11:17] = True
    return m


def test_region_band_areas():
    r = region_masks(_lungs(2))
    assert r["bottom"][0].mean() == pytest.approx(0.15)  # 3 of 20 rows
    assert r["top"][0].mean() == pytest.approx(0.15)
    assert r["left"][0].mean() == pytest.approx(0.10) and r["right"][0].mean() == pytest.approx(0.10)
    assert r["bottom"][0, -1].all() and not r["bottom"][0, 0].any()
    assert not (r["lungs"] & r["outside"]).any()


@pytest.mark.parametrize(
    ("where", "lungs_mass", "bottom_mass"),
    [("inside", 1.0, 0.0), ("bottom", 0.0, 1.0)],
)
def test_cam_mass_known_answers(where, lungs_mass, bottom_mass):
    lungs = _lungs(3)
    heat = np.zeros((3, S, S), np.float32)
    if where == "inside":
        heat[lungs] = 0.7
    else:
        heat[:, -2:, :] = 1.0
    out = cam_mass(heat, lungs)
    assert out["lungs"]["mass"] == pytest.approx(lungs_mass)
    assert out["outside"]["mass"] == pytest.approx(1 - lungs_mass)
    assert out["bottom"]["mass"] == pytest.approx(bottom_mass)
    assert out["lungs"]["area"] == pytest.approx(lungs[0].mean())
    assert out["n"] == 3 and out["n_zero_heat"] == 0


def test_cam_mass_uniform_heat_ratio_one_and_zero_heat_left_out():
    heat = np.ones((3, S, S))
    heat[2] = 0.0
    out = cam_mass(heat, _lungs(3))
    for region in ("lungs", "outside", "bottom", "left"):
        assert out[region]["ratio"] == pytest.approx(1.0)
    assert out["n"] == 2 and out["n_zero_heat"] == 1
    with pytest.raises(ValueError, match="must both be"):
        cam_mass(heat[:, :5], _lungs(3))


def test_occlude_fill_values():
    x = np.full((2, S, S), 10, np.uint8)
    x[1] = 200
    region = _lungs(2)
    mean_fill = occlude(x, region, "mean")
    np.testing.assert_array_equal(mean_fill, x)  # constant images: the mean is the value itself
    zero = occlude(x, region, "zero")
    assert (zero[region] == 0).all() and (zero[~region] == x[~region]).all()
    assert x[0, 5, 5] == 10  # the input is not modified


def _pattern_images(n: int, where: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose label is a checkerboard (mean 128, so the image mean does not leak it)
    drawn only in ``where`` (S, S) bool; elsewhere mid gray."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    checker = (np.indices((S, S)).sum(0) % 2) * 2 - 1  # +-1
    amp = (20 + 60 * y + rng.integers(0, 10, n))[:, None, None]
    x = np.full((n, S, S), 128, np.int32) + np.where(where[None], amp * checker[None], 0)
    return x.clip(0, 255).astype(np.uint8), y


def _contrast_score(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(float).std(1)


def test_occlusion_label_outside_lungs_is_a_shortcut():
    lungs = _lungs(40)
    x, y = _pattern_images(40, ~lungs[0])
    out = occlusion_auc(_contrast_score, x, y, lungs, n_boot=20)
    assert out["plain"]["auc"] == pytest.approx(1.0)
    assert out["lungs_blanked"]["auc"] == pytest.approx(1.0)
    assert out["only_lungs"]["auc"] == pytest.approx(0.5)  # nothing left: every score ties
    assert out["only_lungs"]["delta_auc"] == pytest.approx(-0.5)
    lo, hi = out["plain"]["ci"]
    assert lo <= out["plain"]["auc"] <= hi


def test_occlusion_label_inside_lungs_reads_the_lungs():
    lungs = _lungs(40)
    x, y = _pattern_images(40, lungs[0])
    out = occlusion_auc(_contrast_score, x, y, lungs, n_boot=0)
    assert out["lungs_blanked"]["auc"] == pytest.approx(0.5)
    assert out["only_lungs"]["auc"] == pytest.approx(1.0)
    assert "ci" not in out["plain"] and out["fill"] == "mean"


def test_auc_table_single_class_has_no_auc_but_a_positive_rate_and_is_strict_json():
    with pytest.warns(UserWarning, match="both classes"):
        out = auc_table({"plain": np.array([0.2, 0.8, 0.9])}, np.zeros(3), threshold=0.5)
    assert out["plain"]["auc"] is None  # e.g. a site's normal films only (evaluate --data, --lungs)
    json.dumps(out, allow_nan=False)  # what metrics.json is written with
    assert out["plain"]["positive_rate"] == pytest.approx(2 / 3)
    assert out["n"] == 3 and out["n_pos"] == 0


def test_auc_table_groups_resample_patients():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    a = auc_table({"plain": s}, y, groups=["p1", "p1", "p2", "p2", "p3", "p4"], n_boot=30, seed=1)
    b = auc_table({"plain": s}, y, groups=["p1", "p1", "p2", "p2", "p3", "p4"], n_boot=30, seed=1)
    assert a == b and a["plain"]["auc"] == 1.0


def test_no_mask_model_skips_with_a_note(tmp_path):
    x = np.zeros((2, 64, 64), np.uint8)
    doc = audit_shortcuts(tmp_path / "never-read", None, x, np.array([0, 1]))
    assert doc == {"shortcut": {"skipped": NO_MASK_NOTE, "n": 2}}
    html = shortcut_section(doc)
    assert "train-lungs" in html and "<section" in html


def test_runner_on_a_real_random_run(tmp_path, one_thread):
    pytest.importorskip("pytorch_grad_cam")
    run = make_random_run(tmp_path / "cls", size=64)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 64, 64), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    lungs = np.zeros((8, 64, 64), bool)
    lungs[:, 10:50, 8:56] = True
    doc = audit_shortcuts(run, None, x, y, [f"person{i}_virus_1.jpeg" for i in range(8)], lungs=lungs, n_boot=20)
    d = doc["shortcut"]
    assert d["mask_model"] == "given masks" and d["n"] == 8
    cm = d["cam_mass"]
    assert cm["lungs"]["mass"] + cm["outside"]["mass"] == pytest.approx(1.0, abs=1e-6) or cm["n"] == 0
    assert set(d["occlusion"]) >= {"plain", "lungs_blanked", "only_lungs", "n", "fill"}
    json.dumps(doc, allow_nan=True)  # metrics.json-ready
    html = shortcut_section(doc)
    assert "lungs blanked" in html and "Grad-CAM mass" in html


def test_runner_with_a_lung_run(tmp_path, one_thread):
    pytest.importorskip("segmentation_models_pytorch")
    lung = random_lung_run(tmp_path / "lungs")
    run = make_random_run(tmp_path / "cls", size=64)
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    d = audit_shortcuts(run, lung, x, np.array([0, 1, 0, 1]), n_boot=10)["shortcut"]
    assert d["mask_model"] == "lungs" and 0.0 <= d["lung_area"] <= 1.0


def test_load_audit_set_lung_masks_gives_normals_and_masks(tmp_path):
    require_data(DATA_ROOT / "lung_masks")
    run = make_random_run(tmp_path / "cls", size=64)
    x, y, paths, gt = load_audit_set(run, DATA_ROOT / "lung_masks", max_images=3)
    assert x.shape == (3, 64, 64) and x.dtype == np.uint8 and (y == 0).all() and len(paths) == 3
    assert gt is not None and gt.shape == x.shape and gt.dtype == bool and 0.1 < gt.mean() < 0.5


def test_cli_without_lungs_prints_the_skip_note(tmp_path, capsys):
    from lungxray.cli import main

    require_data(DATA_ROOT / "lung_masks")
    run = make_random_run(tmp_path / "cls", size=64)
    try:
        main(["audit-shortcuts", str(run), "--data", str(DATA_ROOT / "lung_masks"), "--max-images", "2"])
    except SystemExit as exc:
        assert not exc.code
    out = " ".join(capsys.readouterr().out.split())
    assert "skipped" in out and "train-lungs" in out

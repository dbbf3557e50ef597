"""Grad-CAM heatmaps: shape and range, every CNN family, targets, and "the heatmap follows the evidence"."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_random_run, xray_files
from lungxray.data.imageio import read_image
from lungxray.errors import ConfigError, DataError, ModelError
from lungxray.explain import colorize, explain_files, explain_results, heatmap, overlay, to_png_bytes
from lungxray.predict import Predictor

pytest.importorskip("pytorch_grad_cam")


def check_heatmap(h: np.ndarray, size: int) -> None:
    assert h.shape == (size, size) and h.dtype == np.float32
    assert np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1
    assert h.max() == pytest.approx(1.0) and h.min() == pytest.approx(0.0)  # normalised, not flat


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.load(tiny_run)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmap_of_a_real_xray_is_finite_normalised_at_input_size(predictor: Predictor, method: str) -> None:
    image = read_image(xray_files(1)[0])
    h = heatmap(predictor, image, method=method)
    check_heatmap(h, predictor.input_size)
    np.testing.assert_array_equal(h, heatmap(predictor, image, method=method))  # deterministic
    # the negative class uses the sign-flipped logit: its map differs from the positive one
    neg = heatmap(predictor, image, method=method, target="NORMAL")
    assert np.isfinite(neg).all() and not np.allclose(neg, h)


def test_heatmap_errors_are_user_errors(predictor: Predictor) -> None:
    image = read_image(xray_files(1)[0])
    with pytest.raises(ConfigError, match="PNEUMONIA"):
        heatmap(predictor, image, target="pneumonia!")
    with pytest.raises(ConfigError, match="gradcam"):
        heatmap(predictor, image, method="scorecam")
    with pytest.raises(ModelError, match="stage5"):
        heatmap(predictor, image, layer="features.stage55")
    check_heatmap(heatmap(predictor, image, layer="features.stage3"), predictor.input_size)


def test_colorize_overlay_and_png_bytes(predictor: Predictor) -> None:
    image = read_image(xray_files(1)[0])  # 224 px, the map is 64 px
    h = heatmap(predictor, image)
    rgba = colorize(h)
    assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
    assert (rgba[h < 0.2, 3] == 0).all() and (rgba[h > 0.9, 3] > 150).all()  # transparent where cold
    rgb = overlay(image, h)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    gray = predictor.preprocess(image)
    cold = h < 0.05
    assert np.abs(rgb[cold].astype(int) - gray[cold, None]).max() <= 15  # cold pixels stay gray
    assert np.abs(rgb[h > 0.9].astype(int) - gray[h > 0.9, None]).max() > 15  # hot pixels coloured
    for arr in (rgb, rgba, gray):
        back = np.asarray(Image.open(io.BytesIO(to_png_bytes(arr))))
        np.testing.assert_array_equal(back, arr)


# -------------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("cnn-64-elu", 64),
        ("cnn-224-small", 96),
        ("resnet18", 64),
        ("densenet121", 64),
        ("efficientnet_b0", 64),
    ],
)
def test_heatmap_works_for_each_cnn_family(tmp_path: Path, arch: str, size: int) -> None:
    torch.set_num_threads(1)
    p = Predictor.load(make_random_run(tmp_path / arch, arch=arch, size=size))
    rng = np.random.default_rng(0)
    h = heatmap(p, rng.random((size + 20, size), dtype=np.float32))
    assert h.shape == (size, size) and np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1


def test_mlp_has_no_heatmap(tmp_path: Path) -> None:
    p = Predictor.load(make_random_run(tmp_path / "mlp", arch="mlp", size=32))
    with pytest.raises(ModelError, match="no convolutional feature map"):
        heatmap(p, np.full((32, 32), 0.5, np.float32))


def test_multiclass_default_is_the_predicted_class_and_multilabel_writes_per_label(tmp_path: Path) -> None:
    classes = ("Covid", "Normal", "Viral Pneumonia")
    mc = Predictor.load(make_random_run(tmp_path / "mc", task="multiclass", classes=classes, seed=1))
    image = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    top = mc.predict_arrays([image])[0].label
    np.testing.assert_array_equal(heatmap(mc, image), heatmap(mc, image, target=top))

    ml_run = make_random_run(tmp_path / "ml", task="multilabel", classes=classes, seed=2)
    src = tmp_path / "x.png"
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(src)
    ml = Predictor.load(ml_run)
    positives = ml.predict_paths([src])[0].label or [None]
    written = explain_files(ml_run, [src], tmp_path / "out")
    assert len(written) == len(positives) + 1 and written[-1].name == "grid.png"


# ------------------------------------------------------------------------ heatmaps follow the evidence

SYN = 64


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured gray images (n, 64, 64) float in [0, 1] (uint8 levels); odd rows carry a bright blob.

    Returns images, labels (n,) and blob centres (n, 2) as (row, col) (meaningful for positives).
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(size=(n, SYN, SYN)), sigma=(0, 6, 6))
    base = 0.35 + 0.15 * base / base.std() + rng.normal(0, 0.03, base.shape)
    labels = np.arange(n) % 2
    centres = rng.uniform(10, SYN - 10, (n, 2))
    for i in np.flatnonzero(labels):
        base[i] += blob(centres[i])
    return np.rint(np.clip(base, 0, 1) * 255) / 255, labels, centres


def blob(centre: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[:SYN, :SYN]
    return 0.45 * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * 3.0**2))


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn-small at 64 px trained (6 epochs of 512 images, about 15-20 s on one core) to detect the blob; written as a run."""
    from lungxray.inference import DEFAULT_NORMALIZATION, to_input
    from lungxray.models.factory import create_model
    from lungxray.runcard import Calibration, Preprocessing, RunCard
    from lungxray.rundir import save_weights

    torch.set_num_threads(1)
    x, y, _ = synthetic(512, seed=0)
    x8 = np.round(x * 255).astype(np.uint8)
    torch.manual_seed(0)
    model = create_model("cnn-small", in_chans=1, num_classes=1, img_size=SYN)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    order = np.random.default_rng(0)
    for _ in range(6):
        model.train()
        perm = order.permutation(len(x8))
        for s in range(0, len(perm), 32):
            idx = perm[s : s + 32]
            logits = model(to_input(x8[idx], DEFAULT_NORMALIZATION, torch.device("cpu")))[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, torch.as_tensor(y[idx], dtype=torch.float32)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = tmp_path_factory.mktemp("blob") / "run"
    RunCard(
        name="blob",
        architecture="cnn-small",
        task="binary",
        classes=("plain", "blob"),
        preprocessing=Preprocessing(input_size=SYN),
        calibrations=(Calibration(strategy="0.5", threshold=0.5),),
    ).write(out)
    save_weights(out / "model.safetensors", model.eval().state_dict())
    return out


def peak(h: np.ndarray) -> np.ndarray:
    return np.array(np.unravel_index(int(np.argmax(h)), h.shape), float)


def centroid(h: np.ndarray) -> np.ndarray:
    """Heat-weighted centre of the hot region (heat >= 0.5), (row, col)."""
    w = np.where(h >= 0.5, h, 0.0)
    yy, xx = np.mgrid[: h.shape[0], : h.shape[1]]
    return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()


def test_heatmap_peak_falls_on_the_blob(blob_run: Path) -> None:
    p = Predictor.load(blob_run)
    x, y, centres = synthetic(40, seed=1)
    results = p.predict_arrays(list(x))
    acc = np.mean([(r.label == "blob") == bool(t) for r, t in zip(results, y, strict=True)])
    assert acc >= 0.8, f"the blob detector did not learn (accuracy {acc:.2f})"
    pos = np.flatnonzero(y)[:10]
    # cnn-small's default layer is a 4 x 4 map at 64 px (16-px cells): its peak lands in the blob's
    # cell or next to it, and the centre of the hot region is within a few pixels of the blob
    peaks = [np.hypot(*(peak(heatmap(p, x[i])) - centres[i])) for i in pos]
    cents = [np.hypot(*(centroid(heatmap(p, x[i])) - centres[i])) for i in pos]
    # a finer layer (8 x 8 map) puts the peak on the blob itself (blob sigma 3 px)
    fine = [np.hypot(*(peak(heatmap(p, x[i], layer="features.stage3")) - centres[i])) for i in pos]
    print(
        "peak / centroid / stage3-peak distances (px):",
        np.round(peaks, 1),
        np.round(cents, 1),
        np.round(fine, 1),
    )
    assert sum(d <= 16 for d in peaks) >= 7  # a random peak is within 16 px about 20 % of the time
    assert np.median(peaks) <= 12
    assert sum(d <= 12 for d in cents) >= 8 and np.median(cents) <= 8
    assert sum(d <= 10 for d in fine) >= 7
    # and far better than chance: distances to another image's blob are much larger
    other = [
        np.hypot(*(centroid(heatmap(p, x[i])) - centres[j]))
        for i, j in zip(pos, np.roll(pos, 1), strict=True)
    ]
    assert np.mean(cents) < 0.5 * np.mean(other)


def test_heatmap_moves_when_the_blob_moves(blob_run: Path) -> None:
    p = Predictor.load(blob_run)
    x, y, _ = synthetic(8, seed=2)
    moved = 0
    for background in x[y == 0]:
        a, b = np.array([16.0, 16.0]), np.array([48.0, 46.0])
        ha = heatmap(p, np.clip(background + blob(a), 0, 1))
        hb = heatmap(p, np.clip(background + blob(b), 0, 1))
        moved += np.hypot(*(centroid(ha) - a)) < 12 and np.hypot(*(centroid(hb) - b)) < 12
    assert moved >= 3  # of 4 backgrounds


# ------------------------------------------------------------------------------------ files and CLI


def test_explain_files_writes_overlays_and_grid_and_skips_bad_files(tiny_run: Path, tmp_path: Path) -> None:
    files = xray_files(3)
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    with pytest.warns(UserWarning, match="empty.png: empty file"):
        written = explain_files(
            tiny_run, [files[0], bad, files[1], files[2]], tmp_path / "out", method="gradcam++"
        )
    assert [w.name for w in written] == [f"{f.stem}_PNEUMONIA_gradcampp.png" for f in files] + ["grid.png"]
    for w in written:
        with Image.open(w) as im:
            assert im.format == "PNG" and min(im.size) > 200  # a figure, with legend
    with pytest.raises(DataError, match="every input failed"), pytest.warns(UserWarning):
        explain_files(tiny_run, [bad], tmp_path / "none")


def test_explain_results_only_for_successful_rows(predictor: Predictor, tmp_path: Path) -> None:
    files = xray_files(2)
    results = predictor.predict_paths([files[0], tmp_path / "missing.png", files[1]])
    written = explain_results(predictor, results, tmp_path / "maps")
    assert sorted(w.name for w in written) == sorted(f"{f.stem}_PNEUMONIA_gradcam.png" for f in files)


def test_cli_explain(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lungxray.cli import main

    main(
        ["explain", str(tiny_run), str(xray_files(1)[0]), "--out", str(tmp_path / "e"), "--target", "NORMAL"]
    )
    printed = capsys.readouterr().out
    assert "grid.png" in printed and (tmp_path / "e" / "grid.png").is_file()
    assert len(list((tmp_path / "e").glob("*_NORMAL_gradcam.png"))) == 1
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(tiny_run), str(xray_files(1)[0]), "--method", "lime"])
    assert exc.value.code == 2

"""Predictor on real chest X-rays and on every kind of bad or unusual input; OOD scores; CLI predict."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import dicom_bytes, make_random_run, xray_files
from lungxray.data.cache import cache_images
from lungxray.data.imageio import read_image
from lungxray.errors import ConfigError, DataError, RunError
from lungxray.predict import Prediction, Predictor, write_predictions
from lungxray.runcard import Calibration, RunCard

# ------------------------------------------------------------------------------------------ helpers


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (CRCs valid): a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    """Write uint16 ``stored`` as a minimal secondary-capture DICOM file."""
    path.write_bytes(dicom_bytes(stored, photometric))
    return path


def unit_gray(path: Path) -> np.ndarray:
    """A real X-ray as gray float, min-max stretched to exactly [0, 1] (DICOM reading does the same)."""
    g = read_image(path).astype(np.float64)
    return (g - g.min()) / (g.max() - g.min())


def write_formats(src: Path, folder: Path) -> dict[str, Path]:
    """The same X-ray as JPEG, 16-bit PNG, DICOM MONOCHROME2/1, RGBA PNG and CMYK JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    g = unit_gray(src)
    g16 = np.round(g * 65535).astype(np.uint16)
    g8 = np.round(g * 255).astype(np.uint8)
    Image.fromarray(g8).save(folder / "x.jpg", quality=95)
    Image.fromarray(g16).save(folder / "x16.png")
    assert Image.open(folder / "x16.png").mode.startswith("I")  # really 16-bit on disk
    write_dicom(folder / "m2.dcm", g16, "MONOCHROME2")
    write_dicom(folder / "m1.dcm", 65535 - g16, "MONOCHROME1")
    rgba = np.dstack([g8, g8, g8, np.full_like(g8, 200)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.dstack([g8] * 3)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    return {
        k: folder / n
        for k, n in [
            ("jpeg", "x.jpg"),
            ("png16", "x16.png"),
            ("dicom-m2", "m2.dcm"),
            ("dicom-m1", "m1.dcm"),
            ("rgba", "rgba.png"),
            ("cmyk", "cmyk.jpg"),
        ]
    }


def write_bad_files(folder: Path, real: Path) -> dict[str, Path]:
    """One file per failure mode, with the words its error reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": folder / "empty.png",
        "truncated": folder / "truncated.jpeg",
        "not-an-image": folder / "notes.png",
        "bomb": folder / "bomb.png",
        "one-pixel": folder / "one.png",
        "aspect": folder / "strip.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(real.read_bytes()[: real.stat().st_size // 3])
    files["not-an-image"].write_text("this is a text file, not an X-ray\n" * 20)
    files["bomb"].write_bytes(png_header_bomb(20000, 20000))
    Image.new("L", (1, 1), 128).save(files["one-pixel"])
    Image.new("L", (400, 20), 128).save(files["aspect"])
    return files


EXPECTED_REASON = {
    "empty": "empty",
    "truncated": "",  # PIL's wording varies ("truncated", "broken data stream"); any reason is fine
    "not-an-image": "not a recognised image",
    "bomb": "too many pixels",
    "one-pixel": "too small",
    "aspect": "aspect",
}


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.load(tiny_run)


# ---------------------------------------------------------------------------------- real predictions


def test_predict_a_real_file_gives_a_consistent_binary_row(predictor: Predictor) -> None:
    (r,) = predictor.predict_paths(xray_files(1))
    assert r.error is None
    assert set(r.probabilities) == {"NORMAL", "PNEUMONIA"}
    assert abs(sum(r.probabilities.values()) - 1) < 1e-5
    assert r.score == pytest.approx(r.probabilities["PNEUMONIA"])
    assert r.threshold == pytest.approx(predictor.card.threshold)
    assert r.label == ("PNEUMONIA" if r.score >= r.threshold else "NORMAL")
    assert r.ood_score is not None and np.isfinite(r.ood_score)
    assert r.ood == (r.ood_score > predictor.card.ood.threshold)
    json.dumps(r.to_dict())  # JSON-ready


def test_list_folder_and_arrays_agree_and_batching_does_not_matter(
    predictor: Predictor, tmp_path: Path
) -> None:
    files = xray_files(3) + xray_files(2, "NORMAL")
    nested = tmp_path / "in" / "sub"
    nested.mkdir(parents=True)
    for f in files:
        shutil.copy(f, nested / f.name)
    (tmp_path / "in" / "readme.txt").write_text("not an image")  # ignored inside a folder
    expanded = predictor.expand_inputs([tmp_path / "in"])
    assert [p.name for p in expanded] == sorted(f.name for f in files)

    by_list = predictor.predict_paths(files, batch_size=32)
    by_two = predictor.predict_paths(files, batch_size=2)
    by_folder = {Path(r.path).name: r for r in predictor.predict_paths(expanded)}
    images = [read_image(f) for f in files]
    by_arrays = predictor.predict_arrays(images)
    same_size = predictor.predict_arrays(
        np.stack([predictor.preprocess(i) for i in images])
    )  # (N, S, S) uint8
    for i, r in enumerate(by_list):
        for other in (by_two[i], by_folder[Path(r.path).name], by_arrays[i]):
            assert other.score == pytest.approx(r.score, abs=1e-5)
            assert other.ood_score == pytest.approx(r.ood_score, rel=1e-4)
        assert same_size[i].score == pytest.approx(r.score, abs=1e-5)  # already at input size: no resampling
    assert by_arrays[0].path == "<array 0>"


def test_expand_inputs_keeps_explicit_files_and_rejects_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    odd = tmp_path / "scan.xyz"
    odd.write_text("?")
    out = Predictor.expand_inputs([odd, tmp_path / "missing.png"])
    assert out == [odd, tmp_path / "missing.png"]
    with pytest.raises(DataError, match="no image files"):
        Predictor.expand_inputs([tmp_path / "empty"])


def test_every_bad_input_gets_its_own_error_and_the_others_still_predict(
    predictor: Predictor, tmp_path: Path
) -> None:
    good = xray_files(2)
    bad = write_bad_files(tmp_path / "bad", good[0])
    odd = tmp_path / "scan.xyz"
    odd.write_text("unsupported")
    inputs = [good[0], *bad.values(), odd, tmp_path / "missing.png", good[1]]
    results = predictor.predict_paths(inputs, batch_size=3)
    assert [r.path for r in results] == [str(p) for p in inputs]
    assert results[0].error is None and results[-1].error is None
    assert results[0].score == pytest.approx(predictor.predict_paths([good[0]])[0].score, abs=1e-5)
    for (kind, _), r in zip(bad.items(), results[1:-3], strict=True):
        assert r.error and EXPECTED_REASON[kind] in r.error.lower(), (kind, r.error)
        assert r.probabilities == {} and r.label is None and r.ood is None
    assert results[-3].error and results[-2].error == "file not found"


def test_predict_bytes_never_raises(predictor: Predictor, tmp_path: Path) -> None:
    real = xray_files(1)[0]
    ok = predictor.predict_bytes(real.read_bytes(), name=real.name)
    assert ok.error is None and ok.path == real.name
    assert ok.score == pytest.approx(predictor.predict_paths([real])[0].score, abs=1e-6)
    for blob in (b"", b"garbage" * 10, real.read_bytes()[:500], png_header_bomb(20000, 20000)):
        r = predictor.predict_bytes(blob, name="upload.png")
        assert isinstance(r, Prediction) and r.error and r.score is None


def test_bad_arrays_get_errors_not_exceptions(predictor: Predictor) -> None:
    good = np.full((80, 80), 0.5, np.float32)
    results = predictor.predict_arrays([good, np.full((80, 80), np.nan), np.ones((3, 4, 5)), good * 3, good])
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert "nan" in results[1].error.lower() and "[0, 1]" in results[3].error


# ------------------------------------------------------------------------------- formats and sameness


def test_dicom_png16_rgba_cmyk_all_predict_and_agree(predictor: Predictor, tmp_path: Path) -> None:
    files = write_formats(xray_files(1)[0], tmp_path)
    results = dict(zip(files, predictor.predict_paths(list(files.values())), strict=True))
    for kind, r in results.items():
        assert r.error is None, (kind, r.error)
    scores = {k: results[k].score for k in ("jpeg", "png16", "dicom-m2", "dicom-m1")}
    assert max(scores.values()) - min(scores.values()) < 0.02, scores
    assert scores["dicom-m1"] == pytest.approx(scores["dicom-m2"], abs=1e-6)  # inverted back exactly
    assert scores["png16"] == pytest.approx(scores["dicom-m2"], abs=1e-6)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_predictor_input_equals_the_training_cache(
    tiny_run: Path, tmp_path: Path, cache_dir: Path, resize: str
) -> None:
    """One preprocessing path: the uint8 model input of a file is identical in the cache and the Predictor."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt", "figures", "eval"))
    card = RunCard.read(run)
    replace(card, preprocessing=replace(card.preprocessing, resize=resize)).write(run)
    predictor = Predictor.load(run)
    files = [*xray_files(2), *list(write_formats(xray_files(3)[2], tmp_path / "f").values())]
    odd = tmp_path / "tall.png"  # not square: stretch and pad differ
    Image.fromarray(np.round(unit_gray(files[0])[:, :100] * 255).astype(np.uint8)).save(odd)
    files.append(odd)
    cached = cache_images(
        files, predictor.input_size, resize=resize, cache_dir=cache_dir, workers=1, progress=False
    )
    assert cached.ok.all(), cached.errors
    for i, f in enumerate(files):
        np.testing.assert_array_equal(predictor.preprocess_path(f), cached.images[i], err_msg=str(f))


# -------------------------------------------------------------------------------- labels and tasks


def test_binary_label_is_positive_at_the_threshold(tiny_run: Path) -> None:
    p = Predictor.load(tiny_run)
    (r,) = p.predict_paths(xray_files(1))
    at = Calibration(strategy="test", threshold=r.score)  # exactly at the threshold -> positive
    p.card = p.card.with_calibration(at)
    assert p.predict_paths(xray_files(1))[0].label == "PNEUMONIA"
    above = float(np.nextafter(np.float32(r.score), np.float32(1)))
    p.card = p.card.with_calibration(Calibration(strategy="test", threshold=above))
    assert p.predict_paths(xray_files(1))[0].label == "NORMAL"


def test_multiclass_and_multilabel_rows(tmp_path: Path) -> None:
    classes = ("Covid", "Normal", "Viral Pneumonia")
    img = [np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96)]
    mc = Predictor.load(make_random_run(tmp_path / "mc", task="multiclass", classes=classes))
    (r,) = mc.predict_arrays(img)
    assert abs(sum(r.probabilities.values()) - 1) < 1e-5 and r.threshold is None
    assert r.label == max(r.probabilities, key=r.probabilities.get) and r.score == max(
        r.probabilities.values()
    )
    ml = Predictor.load(make_random_run(tmp_path / "ml", task="multilabel", classes=classes))
    # forces labels 0 and 2 positive, 1 negative
    ml.card = ml.card.with_calibration(Calibration(strategy="test", thresholds=(0.0, 1.01, 0.0)))
    (r,) = ml.predict_arrays(img)
    assert r.label == ["Covid", "Viral Pneumonia"]
    assert r.threshold == {"Covid": 0.0, "Normal": 1.01, "Viral Pneumonia": 0.0}


# ------------------------------------------------------------------------------------------ outputs


def test_write_predictions_csv_json_and_bad_suffix(predictor: Predictor, tmp_path: Path) -> None:
    results = predictor.predict_paths([xray_files(1)[0], tmp_path / "missing.png"])
    rows = list(csv.DictReader(write_predictions(results, tmp_path / "p.csv").read_text().splitlines()))
    assert [r["error"] for r in rows] == ["", "file not found"]
    assert float(rows[0]["p_PNEUMONIA"]) == pytest.approx(results[0].score, abs=1e-6)
    assert rows[0]["label"] == results[0].label and rows[1]["p_NORMAL"] == ""
    doc = json.loads(write_predictions(results, tmp_path / "p.json").read_text())
    assert "not a diagnosis" in doc["disclaimer"]
    assert (
        doc["predictions"][1]["error"] == "file not found"
        and doc["predictions"][0]["score"] == results[0].score
    )
    with pytest.raises(ConfigError, match=r"\.csv or \.json"):
        write_predictions(results, tmp_path / "p.xlsx")


def test_run_errors_are_user_errors(tmp_path: Path, tiny_run: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        Predictor.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="backend"):
        Predictor.load(tiny_run, backend="tensorrt")


# --------------------------------------------------------------------------------------------- OOD


def non_cxr_images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """About 50 images that are not chest X-rays: photos, their crops/rotations/inversions, noise,
    gradients, checkerboards and random rectangles; (name, (H, W) float32 in [0, 1])."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    for name, rgb in zip(("china", "flower"), load_sample_images().images, strict=True):
        g = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0
        out += [(name, g), (f"{name}-inverted", 1 - g), (f"{name}-flip", g[::-1].copy())]
        out += [(f"{name}-rot{90 * k}", np.rot90(g, k).copy()) for k in (1, 2, 3)]
        h, w = g.shape
        for i in range(5):
            s = int(rng.integers(100, min(h, w)))
            y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
            out.append((f"{name}-crop{i}", g[y : y + s, x : x + s].copy()))
    for i in range(5):
        out.append((f"uniform-noise{i}", rng.random((224, 224), dtype=np.float32)))
        out.append((f"gauss-noise{i}", np.clip(rng.normal(0.5, 0.2, (224, 224)), 0, 1).astype(np.float32)))
    yy, xx = np.mgrid[0:224, 0:224] / 223.0
    radial = np.hypot(xx - 0.5, yy - 0.5) / 0.71
    for i, g in enumerate([xx, yy, (xx + yy) / 2, 1 - xx, radial, 1 - radial]):
        out.append((f"gradient{i}", g.astype(np.float32)))
    for k in (4, 8, 16, 28, 56, 112):
        board = ((np.arange(224)[:, None] // k) + (np.arange(224)[None, :] // k)) % 2
        out.append((f"checker{k}", board.astype(np.float32)))
    for i in range(4):
        canvas = np.full((224, 224), 0.9, np.float32)
        for _ in range(12):
            y, x = rng.integers(0, 200, 2)
            canvas[y : y + rng.integers(4, 24), x : x + rng.integers(10, 80)] = rng.random()
        out.append((f"rectangles{i}", canvas))
    return out


def ood_auroc(predictor: Predictor, run: Path) -> tuple[float, np.ndarray, dict[str, float]]:
    """AUROC of the OOD score, test-split X-rays (negatives) vs non-CXR images (positives)."""
    from sklearn.metrics import roc_auc_score

    with open(run / "splits.csv", newline="") as fh:
        test = [r["path"] for r in csv.DictReader(fh) if r["split"] == "test"]
    xray = np.array([r.ood_score for r in predictor.predict_paths(test) if r.error is None])
    probes = non_cxr_images()
    other = {
        r.path: r.ood_score
        for r in predictor.predict_arrays([a for _, a in probes], names=[n for n, _ in probes])
    }
    y = np.r_[np.zeros(len(xray)), np.ones(len(other))]
    return float(roc_auc_score(y, np.r_[xray, list(other.values())])), xray, other


def test_ood_scores_separate_xrays_from_photos_and_noise(predictor: Predictor, tiny_run: Path) -> None:
    auroc, xray, other = ood_auroc(predictor, tiny_run)
    print(f"OOD AUROC (test X-rays vs {len(other)} non-CXR images): {auroc:.3f}")
    assert len(other) >= 48 and len(xray) >= 20
    p75 = np.percentile(xray, 75)
    for name in ("china", "flower", "uniform-noise0", "gauss-noise0"):
        assert other[name] > p75, (name, other[name], p75)
    assert auroc > 0.75


# --------------------------------------------------------------------------------------------- CLI


def test_cli_predict_writes_rows_and_exits_1_when_a_file_fails(tiny_run: Path, tmp_path: Path) -> None:
    from lungxray.cli import main

    good = xray_files(2)
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    out = tmp_path / "pred.csv"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny_run), str(good[0]), str(bad), str(good[1]), "--out", str(out)])
    assert exc.value.code == 1
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [Path(r["path"]).name for r in rows] == [good[0].name, "empty.png", good[1].name]
    assert rows[1]["error"].startswith("empty file") and rows[0]["error"] == ""

    out_json = tmp_path / "pred.json"
    main(
        ["predict", str(tiny_run), str(good[0]), "--out", str(out_json), "--heatmaps", str(tmp_path / "maps")]
    )
    assert json.loads(out_json.read_text())["predictions"][0]["error"] is None
    assert len(list((tmp_path / "maps").glob("*.png"))) == 1

    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny_run), str(good[0]), "--out", str(tmp_path / "pred.txt")])
    assert exc.value.code == 2  # ConfigError: printed without a traceback


# ------------------------------------------------------------------------------- one prediction pass


def test_records_stream_in_order_lazily_with_errors_and_the_model_input(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One record per input, in order; decoding is lazy (one batch ahead at most); x is the cache's input."""
    import lungxray.data.imageio as imageio

    reads: list[str] = []
    real = imageio.read_image
    monkeypatch.setattr(imageio, "read_image", lambda p, **kw: reads.append(str(p)) or real(p, **kw))
    good = xray_files(4)
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    inputs = [good[0], good[1], bad, good[2], good[3]]
    stream = predictor.records(inputs, batch_size=2)
    first = next(stream)
    assert reads == [str(good[0]), str(good[1])]  # only the first batch has been decoded
    records = [first, *stream]
    assert reads == [str(p) for p in inputs]  # every input decoded exactly once
    assert [r.name for r in records] == [str(p) for p in inputs]
    assert records[2].error.startswith("empty file") and records[2].prediction.error == records[2].error
    assert records[2].image is None and records[2].x is None and records[2].prob is None
    expected = predictor.predict_paths(inputs)
    for rec, pred in zip(records, expected, strict=True):
        assert rec.prediction.path == pred.path and rec.prediction.label == pred.label
        if rec.error is None:
            assert rec.image.dtype == np.float32 and rec.image.ndim == 2
            assert rec.x.dtype == np.uint8 and rec.x.shape == (predictor.input_size,) * 2
            np.testing.assert_array_equal(rec.x, predictor.preprocess(real(rec.name)))
            assert rec.prob.shape == (1,) and rec.prediction.score == pytest.approx(float(rec.prob[0]))
            assert rec.ood_score == pytest.approx(pred.ood_score, rel=1e-5)
            assert rec.prediction.score == pytest.approx(pred.score, abs=1e-6)
            assert rec.seconds["decode"] > 0 and rec.seconds["predict"] > 0


def test_cli_predict_with_heatmaps_decodes_each_file_once(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lungxray predict RUN files --heatmaps DIR --out CSV`: one read, one preprocess and one batched
    forward (probabilities) per file; Grad-CAM's own forward is separate."""
    import lungxray.data.imageio as imageio
    import lungxray.data.preprocess as preprocess
    from lungxray.cli import main

    reads: list[str] = []
    resized: list[tuple[int, ...]] = []
    forwards: list[int] = []
    real_read, real_resize, real_forward = (
        imageio.read_image,
        preprocess.to_model_input,
        Predictor.predict_images,
    )
    monkeypatch.setattr(imageio, "read_image", lambda p, **kw: reads.append(str(p)) or real_read(p, **kw))
    monkeypatch.setattr(
        preprocess,
        "to_model_input",
        lambda img, *a, **kw: resized.append(img.shape) or real_resize(img, *a, **kw),
    )

    def counted(self, images, batch_size=32):
        forwards.append(len(images))
        return real_forward(self, images, batch_size)

    monkeypatch.setattr(Predictor, "predict_images", counted)
    files = xray_files(3)
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    inputs = [files[0], bad, files[1], files[2]]
    out, maps = tmp_path / "pred.csv", tmp_path / "maps"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny_run), *map(str, inputs), "--out", str(out), "--heatmaps", str(maps)])
    assert exc.value.code == 1  # the empty file failed; the others were predicted
    assert sorted(reads) == sorted(str(p) for p in inputs)  # each file read exactly once
    assert len(resized) == 3  # each readable file preprocessed exactly once
    assert forwards == [3]  # one batched forward pass for the probabilities
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [Path(r["path"]).name for r in rows] == [p.name for p in inputs]
    assert rows[1]["error"].startswith("empty file") and all(rows[i]["error"] == "" for i in (0, 2, 3))
    assert sorted(p.name for p in maps.glob("*.png")) == sorted(
        f"{f.stem}_PNEUMONIA_gradcam.png" for f in files
    )


def test_predictions_csv_guards_against_formula_injection(tmp_path: Path) -> None:
    """A spreadsheet runs a cell starting with = + - @ as a formula: strings get a leading ', numbers
    (negative ones included) stay numbers."""
    evil = Prediction(path="=HYPERLINK(\"http://x\")", probabilities={"@cmd": 0.25, "NORMAL": 0.75},
                      label="@cmd", score=0.25, threshold=0.5, ood_score=-1.5, ood=False,
                      error="+1 not a number")  # fmt: skip
    rows = list(csv.DictReader(write_predictions([evil], tmp_path / "p.csv").read_text().splitlines()))
    assert rows[0]["path"] == "'=HYPERLINK(\"http://x\")" and rows[0]["label"] == "'@cmd"
    assert rows[0]["error"] == "'+1 not a number"
    assert rows[0]["ood_score"] == "-1.5" and float(rows[0]["p_@cmd"]) == 0.25

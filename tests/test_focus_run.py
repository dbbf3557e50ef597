"""A lung-focused run end to end: training with data.crop=lungs carries its lung model (RUN/lungs/),
and predict, the training cache, export + ONNX and evaluation's cache apply the same pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CHEST_XRAY, DATA_ROOT, require_data

pytest.importorskip("segmentation_models_pytorch")

from lungxray.data.cache import cache_images  # noqa: E402
from lungxray.data.imageio import read_image  # noqa: E402
from lungxray.errors import RunError  # noqa: E402
from lungxray.focus import LUNGS_DIR, Preprocessor, lungs_sha1  # noqa: E402
from lungxray.runcard import RunCard  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TRAINED_LUNGS = Path("/tmp/lungs-run/lungs")  # a fully trained lung run when this machine has one


@pytest.fixture(scope="module")
def lung_dir(tmp_path_factory) -> Path:
    """The trained lung run if present (copied), else 16 real pairs, 3 epochs at 64 px (a few seconds)."""
    out = tmp_path_factory.mktemp("lungs") / "lungs"
    if (TRAINED_LUNGS / "model.safetensors").is_file():
        shutil.copytree(TRAINED_LUNGS, out)
        return out
    from lungxray.segmentation import train_lung_model

    require_data(DATA_ROOT / "lung_masks")
    train_lung_model(DATA_ROOT / "lung_masks", out, size=64, epochs=3, batch_size=4, heldout=0.0, limit=16,
                     augment_batches=False, threads=1, log=None)  # fmt: skip
    return out


def tiny_lung_run(tmp_path_factory, lung_dir, cache_dir, name: str, **data) -> Path:
    """A 32 px, 1-epoch run on 40 images with the lung options ``data`` (``data.*`` keys, without prefix)."""
    from lungxray.config import load_config
    from lungxray.training import train

    require_data()
    out = tmp_path_factory.mktemp("runs") / name
    cfg = load_config(None, {
        "name": name, "out": str(out), "data.path": str(CHEST_XRAY), "data.max_images": 40,
        "data.size": 32, "data.cache_dir": str(cache_dir), "model.kwargs": {"width": 4},
        "train.epochs": 1, "train.batch_size": 16, "eval.bootstrap": 50, "data.lungs": str(lung_dir),
        **{f"data.{k}": v for k, v in data.items()},
    })  # fmt: skip
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def focus_run(tmp_path_factory, lung_dir, cache_dir) -> Path:
    """The lung crop, marker suppression and CLAHE."""
    return tiny_lung_run(tmp_path_factory, lung_dir, cache_dir, "focus", crop="lungs", suppress_markers=True,
                         window="clahe")  # fmt: skip


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory, lung_dir, cache_dir) -> Path:
    """Everything outside the lung fields set to 0."""
    return tiny_lung_run(tmp_path_factory, lung_dir, cache_dir, "masked", mask_outside=True)


def test_run_carries_its_lung_model_and_card(focus_run, lung_dir):
    card = RunCard.read(focus_run)
    p = card.preprocessing
    assert (p.crop, p.window, p.suppress_markers) == ("lungs", "clahe", True)
    assert p.lungs_sha1 == lungs_sha1(lung_dir) == lungs_sha1(focus_run / LUNGS_DIR)
    assert "cropped to the lung fields" in p.describe()


def test_predict_equals_the_training_cache_row(focus_run, cache_dir):
    from lungxray.predict import Predictor

    files = [r.split(",")[0] for r in (focus_run / "splits.csv").read_text().splitlines()[1:4]]
    files = [f for f in files if Path(f).is_file()] or pytest.skip("splits.csv paths unreadable")
    pred = Predictor.load(focus_run)
    card = pred.card
    cached = cache_images(files, 32, resize="stretch", cache_dir=cache_dir, progress=False,
                          preprocessor=Preprocessor.for_run(card, focus_run))  # fmt: skip
    assert cached.reused == len(files)  # the very rows training wrote
    for f, row in zip(files, cached.images, strict=True):
        np.testing.assert_array_equal(pred.preprocess(read_image(f)), row)
    prob_cache, _ = pred.predict_images(np.array(cached.images))
    prob_files = [p.probabilities for p in pred.predict_paths(files)]
    np.testing.assert_allclose([q[card.positive_class] for q in prob_files], prob_cache[:, 0], atol=1e-6)
    default = cache_images(files, 32, resize="stretch", cache_dir=cache_dir, progress=False)
    assert default.store != cached.store and Path(default.store).name == "32-stretch"
    assert not np.array_equal(np.array(default.images), np.array(cached.images))


def test_export_parity_and_onnx_backend_apply_the_pipeline(focus_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from lungxray.export import export_onnx
    from lungxray.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(focus_run, run)
    report = export_onnx(run)
    assert report["ok"] and report["inputs"]["real"] > 0
    files = sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[:2]
    torch_p = [p.probabilities for p in Predictor.load(run).predict_paths(files)]
    onnx_p = [p.probabilities for p in Predictor.load(run, backend="onnx").predict_paths(files)]
    for a, b in zip(torch_p, onnx_p, strict=True):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)


def test_missing_or_changed_lung_copy_is_a_clear_error(focus_run, tmp_path):
    from lungxray.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(focus_run, run)
    (run / LUNGS_DIR / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(RunError, match="not the lung model this run was trained with"):
        Predictor.load(run)
    shutil.rmtree(run / LUNGS_DIR)
    with pytest.raises(RunError, match="has no lungs/"):
        Predictor.load(run)


def test_an_image_without_lung_fields_is_predicted_with_a_warning(focus_run):
    """A lung-focused run that finds no plausible lung fields still predicts (whole image) but says so;
    an image whose lungs are found carries no such warning."""
    from lungxray.focus import NO_LUNGS_WARNING
    from lungxray.predict import Predictor, predict_records

    pred = Predictor.load(focus_run)
    xray = read_image(sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[0])
    found = pred.focus(xray).lungs == "found"  # the run's own lung model on a real film
    (rec,) = predict_records(pred, [xray])
    assert (NO_LUNGS_WARNING in rec.prediction.warnings) == (not found)
    # the same run whose lung finder finds nothing (an empty mask: what a non-chest image gives)
    pred.preprocessor = Preprocessor(pred.card.preprocessing, lambda img: np.zeros((64, 64), bool))
    assert pred.focus(xray).lungs == "fallback"
    (rec,) = predict_records(pred, [xray])
    assert rec.prediction.score is not None and NO_LUNGS_WARNING in rec.prediction.warnings
    from lungxray.predict_stream import predict_to_csv, read_predictions_csv

    out = focus_run.parent / "streamed.csv"
    predict_to_csv(pred, [str(f) for f in sorted((CHEST_XRAY / "test" / "NORMAL").glob("*.jpeg"))[:2]], out)
    assert all(NO_LUNGS_WARNING in r["warnings"] for r in read_predictions_csv(out))  # the streamed CSV says so too


def test_shortcut_audit_of_a_masked_run_blanks_the_lungs_its_pipeline_found(masked_run, lung_dir):
    """Segmenting a masked input again would miss part of the lungs; the audit takes the lung fields the
    run's pipeline found on each decoded file instead, and says so."""
    from lungxray.evaluation.shortcut import audit_shortcuts, load_audit_set

    x, y, paths, _ = load_audit_set(masked_run, CHEST_XRAY, "test", max_images=12)
    doc = audit_shortcuts(masked_run, lung_dir, x, y, paths, n_boot=20)["shortcut"]
    pre = Preprocessor.for_run(RunCard.read(masked_run), masked_run)
    fields = [pre.lung_fields(read_image(p)) for p in paths]
    found = [f for f in fields if f is not None]
    assert f"own lung fields (RUN/lungs, on the decoded images; {len(found)} of {len(paths)})" in doc["mask_model"]
    if len(found) == len(paths):
        assert doc["lung_area"] == pytest.approx(float(np.mean(found)))
    for img, f in zip(x, fields, strict=True):
        if f is not None and f.any():
            assert (img[f] > 0).mean() > 0.95  # the audit's lungs are pixels the model sees

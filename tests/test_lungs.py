"""The lung-field model: it learns on a tiny real subset, masks have the right shape at any size, a
run directory round-trips exactly, the held-out split is per source, and errors say what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_ROOT, make_random_run, require_data

pytest.importorskip("segmentation_models_pytorch")

from lungxray.errors import RunError  # noqa: E402
from lungxray.runcard import RunCard  # noqa: E402
from lungxray.segmentation import dice, load_lung_model, predict_lung_masks, train_lung_model  # noqa: E402
from lungxray.segmentation.train import load_lung_data, split_by_source  # noqa: E402

LUNG_MASKS = DATA_ROOT / "lung_masks"
pytestmark = pytest.mark.usefixtures("one_thread")  # 2 threads spin-wait on the shared CPU


@pytest.fixture(scope="module")
def lung_run(tmp_path_factory) -> Path:
    """16 real pairs at 64 px, 5 epochs, no augmentation, nothing held out (about 10 s on one thread)."""
    require_data(LUNG_MASKS)
    out = tmp_path_factory.mktemp("lungs") / "lungs-tiny"
    train_lung_model(
        LUNG_MASKS, out, size=64, epochs=5, batch_size=4, heldout=0.0, limit=16,
        augment_batches=False, threads=1, log=None,
    )
    return out


@pytest.fixture(scope="module")
def lm(lung_run):
    return load_lung_model(lung_run)


@pytest.fixture(scope="module")
def tiny_data():
    require_data(LUNG_MASKS)
    return load_lung_data(LUNG_MASKS, 64, limit=16)


def test_learns_on_a_tiny_subset(lung_run, lm, tiny_data):
    # measured 0.80 on these 16 pairs after 5 epochs (0.70 after 3); the bound leaves margin
    d = dice(predict_lung_masks(lm, tiny_data.images), tiny_data.masks)
    assert d.mean() > 0.6
    card = RunCard.read(lung_run)
    assert card.training.best_val["train_dice"] == pytest.approx(d.mean(), abs=1e-6)


def test_masks_shape_dtype_at_any_size(lm, tiny_data):
    from PIL import Image

    big = np.stack([np.asarray(Image.fromarray(x).resize((96, 96))) for x in tiny_data.images[:3]])
    for x in (tiny_data.images[:3], big):
        m = predict_lung_masks(lm, x)
        assert m.shape == x.shape and m.dtype == bool
    assert predict_lung_masks(lm, np.zeros((0, 32, 32), np.uint8)).shape == (0, 32, 32)


def test_round_trip_identical_and_card(lung_run, tiny_data, tmp_path):
    from lungxray.segmentation.model import (
        DEFAULT_DECODER,
        DEFAULT_ENCODER,
        LungModel,
        lung_card,
        predict_lung_proba,
        save_lung_model,
    )
    from lungxray.segmentation.train import fit_unet

    x = tiny_data.images[:4]
    model, _ = fit_unet(x, tiny_data.masks[:4], epochs=1, batch_size=4, augment_batches=False)
    card = lung_card("rt", 64, DEFAULT_ENCODER, DEFAULT_DECODER)
    save_lung_model(tmp_path / "rt", card, model)
    before = predict_lung_proba(LungModel(None, card, model), x)
    np.testing.assert_array_equal(before, predict_lung_proba(load_lung_model(tmp_path / "rt"), x))
    card = RunCard.read(lung_run)
    assert card.task == "segmentation" and card.classes == ("lung",)
    assert card.calibration.threshold == 0.5 and card.input_size == 64
    assert (lung_run / "model.safetensors").is_file() and (lung_run / "splits.csv").is_file()


def test_split_by_source_holds_out_each_group():
    groups = np.array(["a"] * 10 + ["b"] * 5 + ["c"] * 2)
    held = split_by_source(groups, 0.2, seed=0)
    assert [int(held[groups == g].sum()) for g in "abc"] == [2, 1, 1]
    np.testing.assert_array_equal(held, split_by_source(groups, 0.2, seed=0))


def test_dice_table():
    a = np.zeros((3, 4, 4), bool)
    b = a.copy()
    a[0, :2], b[0, :2] = True, True  # identical -> 1
    a[1, :2], b[1, 2:] = True, True  # disjoint -> 0
    np.testing.assert_allclose(dice(a, b), [1.0, 0.0, 1.0])  # both empty -> 1


def test_classifier_run_is_refused(tmp_path):
    run = make_random_run(tmp_path / "cls")
    with pytest.raises(RunError, match="train-lungs"):
        load_lung_model(run)


def test_not_a_lung_masks_folder(tmp_path):
    from lungxray.errors import DataError

    with pytest.raises(DataError, match="index.csv"):
        load_lung_data(tmp_path, 64)

"""Lung-focused preprocessing (lungxray.focus, data.preprocess ops) on a synthetic chest and on real films."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lungxray.data.preprocess import (
    crop_to_box,
    lung_box,
    suppress_markers,
    to_model_input,
    window_clahe,
    window_percentile,
)
from lungxray.errors import ConfigError, RunError
from lungxray.focus import Preprocessor
from lungxray.runcard import Preprocessing

H, W = 240, 200
MARKER = (slice(10, 30), slice(150, 190))  # a bright "R" label, top right, outside the body


def synthetic_chest() -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float image: dark background, grey body, two dark elliptic lungs, a white text block;
    and the true lung mask (H, W) bool."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.full((H, W), 0.05, np.float32)
    body = ((yy - 130) / 105) ** 2 + ((xx - 100) / 80) ** 2 <= 1
    img[body] = 0.55
    lungs = np.zeros((H, W), bool)
    for cx in (70, 130):
        lungs |= ((yy - 130) / 60) ** 2 + ((xx - cx) / 22) ** 2 <= 1
    img[lungs] = 0.25
    text = np.zeros((H, W), bool)
    text[MARKER] = (np.arange(W)[MARKER[1]] % 8 < 3)[None, :]  # text-like strokes, 3 px wide
    text[MARKER[0].start : MARKER[0].start + 3, MARKER[1]] = True
    img[text] = 0.95
    img += np.random.default_rng(0).normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0, 1), lungs


def dark_lungs(img: np.ndarray) -> np.ndarray:
    """A lung finder for the synthetic chest (the dark fields inside the body): a real function, no model."""
    from scipy import ndimage

    body = ndimage.binary_fill_holes(img > 0.15)
    return body & (img < 0.4) & (img > 0.15)


def no_lungs(img: np.ndarray) -> np.ndarray:
    return np.zeros((16, 16), bool)


def prep(**kw) -> Preprocessing:
    return Preprocessing(input_size=64, **kw)


def test_default_pipeline_is_byte_identical_to_to_model_input():
    img, _ = synthetic_chest()
    for resize in ("stretch", "pad"):
        pre = Preprocessor(Preprocessing(input_size=64, resize=resize))
        assert pre.is_default and pre.cache_key is None
        np.testing.assert_array_equal(pre(img), to_model_input(img, 64, resize))


def test_lung_box_contains_the_lungs_and_excludes_the_marker():
    img, lungs = synthetic_chest()
    box = lung_box(lungs, 0.1)
    top, left, bottom, right = box
    assert top < 70 / H and bottom > 190 / H and left < 48 / W and right > 152 / W  # lungs inside
    assert top * H > 30 or left * W > 190 or right * W < 150  # the marker block is not
    crop = crop_to_box(img, box)
    assert crop.max() < 0.9  # no marker pixel left


def test_crop_pipeline_crops_and_mask_outside_blanks():
    img, lungs = synthetic_chest()
    f = Preprocessor(prep(crop="lungs"), dark_lungs).process(img)
    assert f.lungs == "found" and f.box is not None and f.image.max() < 200  # marker cropped away
    masked = Preprocessor(prep(mask_outside=True), dark_lungs).process(img)
    assert masked.box is None
    from scipy import ndimage

    outside = to_model_input(lungs.astype(np.float32), 64) < 128
    far = ~ndimage.binary_dilation(~outside, iterations=6)  # well outside the dilated lungs
    assert (masked.image[far] == 0).all()
    assert masked.image[~outside].mean() > 40  # the lungs themselves are kept


def test_lung_fields_are_in_the_frame_of_the_input_and_inside_what_the_mask_keeps():
    """``lung_fields``: the lungs found on the decoded image, cropped and resized like the input, so the
    shortcut audit of a masked run blanks exactly the lungs (not a re-segmentation of the masked input)."""
    img, lungs = synthetic_chest()
    for kw in ({"crop": "lungs", "mask_outside": True}, {"mask_outside": True}, {"crop": "lungs"}):
        pre = Preprocessor(prep(**kw), dark_lungs)
        f, fields = pre.process(img), pre.lung_fields(img)
        assert fields.shape == f.image.shape == (64, 64) and fields.dtype == bool
        box_lungs = to_model_input(crop_to_box(lungs.astype(np.float32), f.box), 64) >= 128
        assert (fields == box_lungs).mean() > 0.97  # the true lungs, in the input's frame
        if kw.get("mask_outside"):
            assert (f.image[fields] > 0).mean() > 0.99  # every lung pixel is one the model sees
    assert Preprocessor(prep(crop="lungs"), no_lungs).lung_fields(img) is None  # fallback: none found


def test_marker_suppression_removes_the_block_but_keeps_the_lungs():
    img, lungs = synthetic_chest()
    out, n = suppress_markers(img)
    assert n >= 1  # one component per stroke group
    assert out[MARKER].max() < 0.2  # replaced by the dark background around it
    np.testing.assert_array_equal(out[lungs], img[lungs])
    protect = np.zeros_like(lungs)
    protect[MARKER] = True  # a "lung" there: nothing is touched
    assert suppress_markers(img, protect)[1] == 0


def test_windows_stretch_contrast():
    rng = np.random.default_rng(0)
    low = (0.4 + 0.1 * rng.random((64, 64))).astype(np.float32)  # values in [0.4, 0.5]
    p = window_percentile(low)
    assert p.min() == 0.0 and p.max() == 1.0 and p.std() > 3 * low.std()
    c = window_clahe(low)
    assert c.shape == low.shape and c.min() >= 0 and c.max() <= 1 and c.std() > 2 * low.std()
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    assert (np.diff(window_clahe(ramp)[32]) >= -1e-6).all()  # monotone: order of intensities kept
    flat = np.full((8, 8), 0.3, np.float32)
    np.testing.assert_array_equal(window_percentile(flat), flat)


def test_implausible_mask_falls_back_to_the_whole_image():
    img, _ = synthetic_chest()
    f = Preprocessor(prep(crop="lungs", mask_outside=True), no_lungs).process(img)
    assert f.lungs == "fallback" and f.box is None
    np.testing.assert_array_equal(f.image, to_model_input(img, 64))


def test_cache_key_differs_per_pipeline_and_pickles_without_the_model():
    keys = {
        Preprocessor(prep(**kw), dark_lungs).cache_key
        for kw in ({"crop": "lungs"}, {"mask_outside": True}, {"window": "clahe"}, {"window": "percentile"},
                   {"crop": "lungs", "crop_margin": 0.2})
    }  # fmt: skip
    assert len(keys) == 5 and None not in keys
    pre = Preprocessor(prep(crop="lungs"), dark_lungs)
    again = pickle.loads(pickle.dumps(pre))
    img, _ = synthetic_chest()
    np.testing.assert_array_equal(again(img), pre(img))


def test_config_validation_and_missing_lungs():
    from lungxray.config import load_config

    with pytest.raises(ConfigError, match="train-lungs"):
        load_config(None, {"data.crop": "lungs"})
    with pytest.raises(ConfigError, match="data.window"):
        load_config(None, {"data.window": "clahee"})
    cfg = load_config(None, {"data.window": "clahe", "data.mask_outside": "true", "data.lungs": "x"})
    assert cfg.data.mask_outside is True
    with pytest.raises(RunError, match="lung"):
        Preprocessor(prep(crop="lungs"))

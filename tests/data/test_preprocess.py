"""to_model_input: the one preprocessing (decoded float image -> model-ready uint8) every stage shares."""

from __future__ import annotations

import numpy as np
import pytest

from lungxray.data.preprocess import to_model_input
from lungxray.errors import ConfigError


@pytest.mark.parametrize("resize", ["stretch", "pad"])
@pytest.mark.parametrize(("value", "expected"), [(0.0, 0), (1.0, 255), (0.5, 128), (0.2, 51)])
def test_square_constant_image_maps_to_rounded_uint8(resize, value, expected):
    out = to_model_input(np.full((50, 50), value, np.float32), 32, resize)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (out == expected).all()


def test_same_size_is_exact_rounding():
    img = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    np.testing.assert_array_equal(to_model_input(img, 40), np.rint(img * 255).astype(np.uint8))


def test_stretch_fills_the_square_and_keeps_orientation():
    img = np.zeros((100, 40), np.float32)
    img[:50] = 1.0  # top half white
    out = to_model_input(img, 64, "stretch")
    assert out.shape == (64, 64)
    assert (out[:30] == 255).all() and (out[34:] == 0).all()


@pytest.mark.parametrize(
    ("shape", "box"),  # box = (top, bottom, left, right) of the content in a 64 x 64 output
    [((100, 50), (0, 64, 16, 48)), ((30, 90), (21, 42, 0, 64)), ((64, 64), (0, 64, 0, 64))],
)
def test_pad_keeps_aspect_ratio_centred_with_zero_borders(shape, box):
    out = to_model_input(np.ones(shape, np.float32), 64, "pad")
    top, bottom, left, right = box
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert (out[top:bottom, left:right] == 255).all()
    mask = np.zeros((64, 64), bool)
    mask[top:bottom, left:right] = True
    assert (out[~mask] == 0).all()


def test_downsampling_is_antialiased():
    # a 1-pixel checkerboard must average to grey, not alias into stripes or a flat black/white
    board = (np.indices((256, 256)).sum(0) % 2).astype(np.float32)
    out = to_model_input(board, 64)
    assert np.abs(out.astype(int) - 128).max() <= 2


def test_float_precision_kept_until_rounding():
    # 16-bit-like ramp: resizing in float keeps every output level distinct where 8-bit would band
    ramp = np.tile(np.linspace(0.0, 1.0, 4096, dtype=np.float32), (8, 1))
    out = to_model_input(ramp, 256)[0]
    assert len(np.unique(out)) >= 250 and (np.diff(out.astype(int)) >= 0).all()


def test_bad_arguments_raise():
    with pytest.raises(ConfigError, match="strech"):
        to_model_input(np.zeros((10, 10), np.float32), 8, "strech")
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((10, 10, 3), np.float32), 8)
    with pytest.raises(ValueError, match="size"):
        to_model_input(np.zeros((10, 10), np.float32), 0)

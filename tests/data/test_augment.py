"""Batched augmentation: shape/range kept, seeded determinism, each transform doing what it says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungxray.config import AugmentConfig
from lungxray.data.augment import Augment

OFF = {
    "rotate": 0.0,
    "shift": 0.0,
    "zoom": 0.0,
    "shear": 0.0,
    "hflip": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "gamma": 0.0,
}


def only(**kw) -> Augment:
    """An Augment with every transform off except the ones given."""
    return Augment(AugmentConfig(**{**OFF, **kw}))


def batch(n: int = 6, h: int = 40, w: int = 40, seed: int = 0) -> torch.Tensor:
    """(n, 1, h, w) float32 in [0, 1]: an off-centre bright blob and a dark bar on noise, like a thorax."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.exp(-((xx - 0.35) ** 2 + (yy - 0.5) ** 2) / 0.02)
    img[:, int(w * 0.7) : int(w * 0.8)] = 0.0
    x = np.clip(img[None] * 0.8 + rng.uniform(0, 0.2, (n, h, w)), 0, 1)
    return torch.from_numpy(x[:, None].astype(np.float32))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(6, 1, 40, 40), (3, 1, 32, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_preserved(shape, dtype):
    x = batch(shape[0], shape[2], shape[3]).to(dtype)
    aug = Augment(AugmentConfig(rotate=15, shift=0.1, zoom=0.2, shear=5, hflip=0.5, brightness=0.3))
    y = aug(x, gen())
    assert y.shape == x.shape
    assert y.dtype == dtype
    assert y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x)


def test_default_config_is_enabled_and_changes_images():
    aug = Augment(AugmentConfig())
    assert aug.enabled
    x = batch()
    assert (aug(x, gen()) - x).abs().max() > 0.01


def test_seeded_generator_is_deterministic():
    aug = Augment(AugmentConfig(rotate=10, shift=0.1, zoom=0.1, shear=5, hflip=0.5, brightness=0.2))
    x = batch()
    a, b = aug(x, gen(7)), aug(x, gen(7))
    assert torch.equal(a, b)
    c = aug(x, gen(8))
    assert not torch.equal(a, c)
    # the global RNG plays no part: reseeding it changes nothing
    torch.manual_seed(123)
    d = aug(x, gen(7))
    assert torch.equal(a, d)


def test_each_image_gets_its_own_transform():
    x = batch(4).expand(4, 1, 40, 40).clone()
    x[:] = x[0]  # four identical inputs
    y = only(rotate=20)(x, gen(1))
    assert not torch.allclose(y[0], y[1])


def test_disabled_config_is_identity():
    aug = Augment(AugmentConfig(**OFF))
    assert not aug.enabled
    x = batch()
    assert aug(x, gen()) is x


def test_rotation_moves_pixels_but_keeps_mean():
    x = batch(8)
    y = only(rotate=25)(x, gen(3))
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image moved
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.03)


def test_rotation_matrices_are_rotations_within_the_limit():
    theta = only(rotate=10).affine_matrices(500, gen(0))
    assert theta.shape == (500, 2, 3)
    lin = theta[:, :, :2]
    eye = torch.eye(2).expand(500, 2, 2)
    assert torch.allclose(lin @ lin.transpose(1, 2), eye, atol=1e-5)  # orthonormal: no zoom/shear
    assert torch.allclose(theta[:, :, 2], torch.zeros(500, 2))  # no shift
    angles = torch.atan2(lin[:, 1, 0], lin[:, 0, 0]) * 180 / math.pi
    assert angles.abs().max() <= 10 + 1e-4
    assert angles.abs().max() > 9  # the range is used, not a constant


def test_zoom_and_shift_stay_within_limits():
    theta = only(zoom=0.2, shift=0.1).affine_matrices(500, gen(0))
    scale = 1.0 / theta[:, 0, 0]
    assert torch.allclose(theta[:, 0, 0], theta[:, 1, 1])
    assert scale.min() >= 0.8 - 1e-6 and scale.max() <= 1.2 + 1e-6
    assert theta[:, :, 2].abs().max() <= 0.2 + 1e-6  # 0.1 of the side = 0.2 in [-1, 1] units


def test_hflip_one_is_an_exact_flip():
    x = batch(5, 32, 48)
    y = only(hflip=1.0)(x, gen())
    torch.testing.assert_close(y, torch.flip(x, dims=[-1]), atol=1e-6, rtol=0)


def test_hflip_half_flips_some_images_only():
    x = batch(40)
    y = only(hflip=0.5)(x, gen(2))
    flipped = torch.tensor([torch.allclose(y[i], torch.flip(x[i], dims=[-1]), atol=1e-5) for i in range(40)])
    unchanged = torch.tensor([torch.allclose(y[i], x[i], atol=1e-5) for i in range(40)])
    assert (flipped | unchanged).all()
    assert 5 < int(flipped.sum()) < 35


def test_intensity_jitter_stays_in_range_and_keeps_pixel_order():
    x = batch(10)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # the extremes present
    y = only(brightness=0.5, contrast=0.5, gamma=0.5)(x, gen(4))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert (y.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() > 0.02  # it did jitter
    # no geometry: the brightness order of pixels is kept (ties allowed where clamping saturates)
    for i in range(10):
        order = torch.argsort(x[i].flatten())
        assert (torch.diff(y[i].flatten()[order]) >= -1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_result_on_cuda_as_on_cpu():
    aug = Augment(AugmentConfig(rotate=10, shift=0.1, zoom=0.1, brightness=0.2))
    x = batch()
    cpu = aug(x, gen(5))
    gpu = aug(x.cuda(), gen(5))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)

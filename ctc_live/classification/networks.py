"""The two classifier networks and the one input preparation both share.

The ResNet-50 body uses exactly torchvision's module names and tensor shapes (torchvision
itself cannot be installed beside the CPU build of torch here), so an ImageNet checkpoint
written by torchvision or timm loads into it unchanged; only ``fc`` differs, replaced by the
paper's head (fully connected + ReLU + dropout 0.6 + two-way output).

The compact network is a small VGG-style CNN sized for thousands of crops per second on a
couple of CPU cores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

CLASSES = ("WBC", "CTC")
ARCHITECTURES = ("resnet50", "compact")
INPUT_SIZE = {"resnet50": 34, "compact": 32}
# ImageNet statistics torchvision's pretrained weights expect, per RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A standardised crop (mean 0, std 1) is mapped to a grey image of this mean and spread
# before ImageNet normalisation, so pretrained filters see pixel statistics like their own.
GREY_MEAN, GREY_STD = 0.45, 0.225
STANDARDISE_EPS = 1e-6


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's resnet50 body with the paper's classification head as ``fc``."""

    in_channels = 3

    def __init__(self, hidden: int = 256, dropout: float = 0.6, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
        ):
            layer = [Bottleneck(inplanes, planes, stride, downsample=True)]
            inplanes = planes * 4
            layer += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(2048, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.MaxPool2d(2)]


class CompactNet(nn.Module):
    """Three conv blocks (32→16→8→4 px) and a small fully-connected head."""

    in_channels = 1

    def __init__(self, widths: Sequence[int] = (16, 32, 64), hidden: int = 64,
                 dropout: float = 0.3, num_classes: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += _conv_block(cin, w)
            cin = w
        self.body = nn.Sequential(*layers)
        side = INPUT_SIZE["compact"] // 2 ** len(widths)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * side * side, hidden),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc[:4](self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def build_network(architecture: str) -> nn.Module:
    if architecture == "resnet50":
        return ResNet50()
    if architecture == "compact":
        return CompactNet()
    raise CtcLiveError(
        f"unknown architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}"
    )


def normalisation_card(architecture: str, imagenet: bool) -> dict:
    """How crops become network input; stored in the model card and read back by prepare()."""
    size = INPUT_SIZE[architecture]
    card = {
        "resize": f"bilinear with antialias to {size}x{size}",
        "standardise": "per crop: (x - mean) / (std + 1e-6); invariant to affine intensity changes",
        "channels": 3 if architecture == "resnet50" else 1,
    }
    if card["channels"] == 3:
        card["replicate"] = "grey crop copied to the 3 input channels"
        # channel_c = z * scale_c + offset_c, with z the standardised crop
        if imagenet:
            card["channel_affine"] = [
                [GREY_STD / s, (GREY_MEAN - m) / s] for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)
            ]
        else:
            card["channel_affine"] = [[1.0, 0.0]] * 3
    return card


def prepare(crops: np.ndarray | Sequence[np.ndarray], size: int,
            normalisation: dict | None = None) -> torch.Tensor:
    """Crops (N, h, w) of any dtype, or a list of differently sized crops → (N, C, size, size).

    Each crop is resized (bilinear, antialiased) and standardised to mean 0, std 1, so an 8-bit
    PNG, a 16-bit TIFF and the segmenter's float32 crop of the same cell give the same input.
    """
    if isinstance(crops, np.ndarray):
        if crops.ndim == 2:
            crops = crops[None]
        if crops.ndim != 3:
            raise CtcLiveError(f"crops must have shape (N, h, w), got {crops.shape}")
        order, groups = None, [np.asarray(crops, dtype=np.float32)]
    else:
        # Crops of one shape are resized together; the result keeps the input order.
        by_shape: dict[tuple, list[int]] = {}
        for i, c in enumerate(crops):
            by_shape.setdefault(np.shape(c), []).append(i)
        order = [i for idx in by_shape.values() for i in idx]
        groups = [np.stack([np.asarray(crops[i], dtype=np.float32) for i in idx])
                  for idx in by_shape.values()]
    if not groups:
        return torch.zeros((0, _channels(normalisation), size, size))
    parts = []
    for g in groups:
        if g.ndim != 3:
            raise CtcLiveError(f"each crop must be a 2-D image, got shape {g.shape[1:]}")
        t = torch.from_numpy(np.ascontiguousarray(g)).unsqueeze(1)
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        parts.append(t)
    x = torch.cat(parts) if len(parts) > 1 else parts[0]
    if order is not None and len(parts) > 1:
        x = x[torch.argsort(torch.tensor(order))]
    if x.shape[0] == 0:
        return x.new_zeros((0, _channels(normalisation), size, size))
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
    return to_channels((x - mean) / (std + STANDARDISE_EPS), normalisation)


def to_channels(z: torch.Tensor, normalisation: dict | None) -> torch.Tensor:
    """Standardised one-channel crops (N, 1, s, s) → the network's input channels."""
    affine = (normalisation or {}).get("channel_affine")
    if affine:
        a = torch.tensor(affine, dtype=z.dtype)
        z = z * a[:, 0].view(1, -1, 1, 1) + a[:, 1].view(1, -1, 1, 1)
    return z.contiguous()


def _channels(normalisation: dict | None) -> int:
    return int((normalisation or {}).get("channels", 1))


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that follows a conv into that conv (inference only)."""
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            fused, skip = [], False
            mods = list(child)
            for i, m in enumerate(mods):
                if skip:
                    skip = False
                    continue
                if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(
                    mods[i + 1], nn.BatchNorm2d
                ):
                    fused.append(_fold(m, mods[i + 1]))
                    skip = True
                else:
                    fused.append(fuse_batchnorm(m))
            setattr(model, name, nn.Sequential(*fused))
        else:
            fuse_batchnorm(child)
    for i in (1, 2, 3):
        conv, bn = getattr(model, f"conv{i}", None), getattr(model, f"bn{i}", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(model, f"conv{i}", _fold(conv, bn))
            setattr(model, f"bn{i}", nn.Identity())
    return model


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.data = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias.detach()
    return fused

"""The whole models ``tvm-pattern bench --model`` runs: ResNet-50, MobileNet-V2, VGG-16, in plain PyTorch.

Each has torchvision's layer structure and module names (ResNet-50 v1.5: stride on the 3x3 conv; MobileNet-V2;
VGG-16 without BN, with its FC layers), so figures are comparable with torchvision's models, but torchvision is
not a dependency and nothing is downloaded: weights are random, He-initialised from a fixed seed. BatchNorm gets
random affine parameters and running statistics calibrated on one random batch, so every BN normalises (a
trained net's BN does too) and folding BN into convs is exercised.

The builders take a ``scale`` (channel widths) and ``num_classes`` so tests can shrink them; ``export_onnx``
takes the input size. ``prune_model`` prunes one-shot with ``prune.oneshot``'s recipe for every layer type.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, TvmPatternError

__all__ = ["COMPRESSIONS", "MODELS", "build", "export_onnx", "mobilenet_v2", "prune_model", "resnet50", "vgg16",
           "vgg16_convs"]

CONNECTIVITY = 3.6  # 3x3 convs at 8x: patterns (9 -> 4 taps, 2.25x) and 1/3.6 of the kernels
COMPRESSIONS = {"none": None, "2.25": 2.25, "8": 8.0}


def _ch(c: int, scale: float, divisor: int = 8) -> int:
    """A channel count scaled by ``scale``, rounded like torchvision's ``_make_divisible`` (never below 8)."""
    if scale == 1.0:
        return c
    v = max(divisor, int(c * scale + divisor / 2) // divisor * divisor)
    return v + divisor if v < 0.9 * c * scale else v


# ---------------------------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
    """torchvision's ``ResNet`` with bottleneck blocks; ``layers=(3, 4, 6, 3)`` is ResNet-50."""

    def __init__(self, layers=(3, 4, 6, 3), scale: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = _ch(64, scale)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(_ch(64, scale), layers[0])
        self.layer2 = self._make_layer(_ch(128, scale), layers[1], 2)
        self.layer3 = self._make_layer(_ch(256, scale), layers[2], 2)
        self.layer4 = self._make_layer(_ch(512, scale), layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(scale: float = 1.0, num_classes: int = 1000, layers=(3, 4, 6, 3)) -> ResNet:
    return ResNet(layers, scale, num_classes)


# ---------------------------------------------------------------------------------------------- MobileNet-V2


class ConvBNAct(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: conv (no bias), BN, ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """torchvision's MobileNet-V2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]  # fmt: skip
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2`` (``width_mult`` is ``scale``)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # fmt: skip

    def __init__(self, scale: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        cin = _ch(32, scale)
        last = _ch(1280, max(1.0, scale))
        features: list[nn.Module] = [ConvBNAct(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _ch(c, scale)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNAct(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(scale: float = 1.0, num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(scale, num_classes)


# ---------------------------------------------------------------------------------------------- VGG-16


class VGG(nn.Module):
    """torchvision's ``vgg16`` (configuration D, no BN) with its three FC layers.

    ``pool`` is the adaptive average pool's output size (7 at 224x224, where it is the identity); ``fc`` the
    width of the two hidden FC layers (4096); ``scale`` multiplies the conv and FC widths.
    """

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, scale: float = 1.0, num_classes: int = 1000, fc: int = 4096, pool: int = 7) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, _ch(v, scale), 3, padding=1), nn.ReLU(inplace=True)]
                cin = _ch(v, scale)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        fc = _ch(fc, scale)
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool * pool, fc), nn.ReLU(True), nn.Dropout(),
            nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(),
            nn.Linear(fc, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16(scale: float = 1.0, num_classes: int = 1000, fc: int = 4096, pool: int = 7) -> VGG:
    return VGG(scale, num_classes, fc, pool)


def vgg16_convs(scale: float = 1.0, num_classes: int = 1000) -> nn.Sequential:
    """VGG-16's conv stack alone (13 convs, ReLUs, 5 max-pools; ``num_classes`` unused): the network the
    sparse 3x3 kernels are measured on, with no FC layer diluting the comparison."""
    del num_classes
    return VGG(scale).features


MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet50, "mobilenetv2": mobilenet_v2, "vgg16": vgg16, "vgg16-convs": vgg16_convs,
}


# ---------------------------------------------------------------------------------------------- weights


def build(name: str, seed: int = 0, size: int = 224, **kwargs) -> nn.Module:
    """Model ``name`` in eval mode with random He weights from ``seed`` (BN calibrated at ``size``x``size``).

    ``kwargs`` go to the builder (``scale``, ``num_classes``, ...). The same arguments give the same weights.
    """
    if name not in MODELS:
        raise TvmPatternError(f"unknown model {name!r}; choose one of {sorted(MODELS)} or pass an .onnx file")
    gen = torch.Generator().manual_seed(seed)
    model = MODELS[name](**kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):  # He (fan_out, like torchvision), via the seeded generator
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.2)
            elif isinstance(m, nn.Linear):  # He (fan_in)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.in_features) ** 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen) - 0.5) * 0.2)
    _calibrate_bn(model, torch.randn((2, 3, size, size), generator=gen))
    return model.eval()


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BN's running statistics to those of one batch (a cumulative average over one step)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1


# ---------------------------------------------------------------------------------------------- pruning


def prune_model(
    model: nn.Module, compression: float | None, prune_only: Collection[str] | None = None, block: int | str = 4
) -> dict:
    """Prune ``model`` in place, one-shot, to the ``compression`` recipe of ``prune.oneshot`` (every layer type).

    8: 3x3 convs 8 patterns extracted from the model's own kernels + 1/3.6 of the kernels, 1x1 convs and FC
    layers 1/8 of their input columns in blocks of ``block`` output channels, depthwise convs patterns; 2.25:
    patterns, and 1x1 / FC at 2.25x. The first conv and the last FC stay dense. ``prune_only`` (e.g.
    ``("conv3x3",)``, as for the issue-11 figures) limits it to some layer types. None: nothing. Returns the
    report: the library (``patterns.json`` form) and per layer its type, density, kept kernels, or why dense.
    """
    if compression is None:
        return {"compression": None, "layers": []}
    from ..prune.oneshot import prune_torch

    only = f" --prune-only {','.join(prune_only)}" if prune_only else ""
    try:
        return prune_torch(model, compression, block=block, prune_only=prune_only)
    except ModelError as err:
        raise TvmPatternError(f"--compression {compression:g}{only}: {err}; use --compression none") from err


# ---------------------------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, path: str | os.PathLike, size: int = 224, opset: int = 17) -> Path:
    """Export ``model`` at batch 1, ``size`` x ``size``, fp32, input ``x``, output ``y`` (TorchScript exporter)."""
    path = Path(path)
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["x"], output_names=["y"], opset_version=opset,
                          dynamo=False)  # fmt: skip
    return path

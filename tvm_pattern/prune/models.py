"""Small CNNs for the demo (PyTorch), for 28x28 grey images. ``vgg-small``: a VGG-style net (3x3 convs and one
linear layer); ``resnet-small``: a bottleneck ResNet (1x1 and 3x3 convs, 1x1 shortcuts, two linear layers), so
every prunable layer type is there."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..errors import ModelError


class VGGSmall(nn.Module):
    """conv3x3-BN-ReLU blocks with max-pooling after ``pool_after``, then a linear classifier."""

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 32, 64),
        pool_after: Sequence[int] = (0, 2),
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, prev = image_size, in_channels
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if index in pool_after:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            prev = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(prev * size * size, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand, each with BN; a 1x1 conv + BN shortcut; ReLU after the sum."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return nn.functional.relu(self.body(x) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A 3x3 stride-2 stem, one bottleneck per stage (14, 7, 4 pixels), average pool, two linear layers.

    Small enough to prune on two CPU cores in minutes; 1x1 convs hold 30% of its MACs.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 1, num_classes: int = 10,
                 hidden: int = 64) -> None:  # fmt: skip
        super().__init__()
        stem = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))  # fmt: skip
        blocks, prev = [], stem
        for index, width in enumerate(widths[1:]):
            blocks.append(Bottleneck(prev, width // 2, width, stride=1 if index == 0 else 2))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))  # fmt: skip

    def forward(self, x):
        return self.classifier(self.blocks(self.stem(x)))


MODELS: dict[str, Callable[[], nn.Module]] = {"vgg-small": VGGSmall, "resnet-small": ResNetSmall}


def build(name: str) -> nn.Module:
    """A freshly initialised model by name."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]()

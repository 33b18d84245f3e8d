"""Small CNNs for the demo (PyTorch). ``vgg-small``: a VGG-style net for 28x28 grey images."""

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


MODELS: dict[str, Callable[[], nn.Module]] = {"vgg-small": VGGSmall}


def build(name: str) -> nn.Module:
    """A freshly initialised model by name."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]()

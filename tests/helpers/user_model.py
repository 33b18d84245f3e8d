"""Plays "the user's own model and data" for the CLI tests: ``--model helpers.user_model:model``,
``--data helpers.user_model:data`` (tests/ on PYTHONPATH). Small on purpose: 3x3 and 1x1 convs, BN, two FC
layers; data: the Fashion-MNIST subset named by ``$USER_DATA_DIR`` (the ``small_data`` fixture) as plain
torch Datasets, not the package's ``Split``.
"""

import os

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tvm_pattern.prune import data as builtin_data


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 49, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.body(x))


def model() -> nn.Module:
    return Net()


def _tensors(split: str, count: int | None) -> Dataset:
    loaded = builtin_data.load(split, os.environ.get("USER_DATA_DIR"))
    images, labels = torch.from_numpy(loaded.images[:count]), torch.from_numpy(loaded.labels[:count])
    return TensorDataset(images, labels)


def data():
    return _tensors("train", None), _tensors("test", None)


# Bad specs for the error tests.
not_callable = 42


def returns_a_string():
    return "not a model"


def one_dataset():
    return _tensors("test", 10)

"""Fashion-MNIST from local IDX files (Debian's ``dataset-fashion-mnist``); nothing is downloaded.

``Split`` (what ``load`` returns) is a map-style ``torch.utils.data.Dataset`` held in memory, so the built-in
data and a user's own datasets go through the same ``DataLoader`` code.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DatasetNotFoundError, TvmPatternError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "TVM_PATTERN_DATA"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Statistics of the training images, used to normalise both splits.
MEAN, STD = 0.2860, 0.3530


@dataclass(frozen=True, eq=False)
class Split(Dataset):
    """A split in memory; also a Dataset of ``(image (1, 28, 28) float32 tensor, label int)`` samples."""

    images: np.ndarray  # (N, 1, 28, 28) float32, normalised
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[index]), int(self.labels[index])


def builtin(path: str | os.PathLike | None = None) -> tuple[Split, Split]:
    """The built-in ``(train, test)`` datasets: Fashion-MNIST from ``path`` (see ``data_dir``)."""
    return load("train", path), load("test", path)


def as_split(dataset: Dataset) -> Split:
    """Any dataset of ``(image tensor, label)`` samples, materialised in memory as a ``Split``."""
    if isinstance(dataset, Split):
        return dataset
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return Split(torch.stack([torch.as_tensor(x) for x in images]).float().numpy(), np.asarray(labels, np.int64))


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The dataset folder: ``path``, else ``$TVM_PATTERN_DATA``, else Debian's location."""
    chosen = Path(path or os.environ.get(ENV_VAR) or DEFAULT_DIR)
    missing = [name for pair in FILES.values() for name in pair if _find(chosen, name) is None]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {chosen} (missing {', '.join(missing)}). "
            f"Install it with `apt-get install dataset-fashion-mnist` (or `make setup`), "
            f"or point --data / ${ENV_VAR} at a folder holding the four IDX files (.gz or plain)."
        )
    return chosen


def load(split: str = "train", path: str | os.PathLike | None = None) -> Split:
    """Load one split, normalised to zero mean and unit variance."""
    if split not in FILES:
        raise TvmPatternError(f"unknown split {split!r}; expected one of {sorted(FILES)}")
    root = data_dir(path)
    images_name, labels_name = FILES[split]
    images = _read_idx(_find(root, images_name), magic=2051)
    labels = _read_idx(_find(root, labels_name), magic=2049)
    if len(images) != len(labels):
        raise TvmPatternError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return Split(x[:, None], labels.astype(np.int64))


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise TvmPatternError(f"{path} is not an IDX file of the expected kind (magic {found}, expected {magic})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise TvmPatternError(f"{path} is truncated: {data.size} values for dimensions {dims}")
    return data.reshape(dims)

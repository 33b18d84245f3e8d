"""Shared fixtures: a small Fashion-MNIST subset written as IDX files, so CLI runs take seconds; a kernel parse
cache of the session's own."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tvm_pattern.kernels.parse_cache import KERNELS_ENV
from tvm_pattern.prune import data

torch.set_num_threads(2)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed if the name ends in .gz."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_subset(folder: Path, train: int, test: int) -> Path:
    """The first images of the real dataset (Debian's dataset-fashion-mnist) as a small IDX folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        full = data.load(split)
        pixels = np.clip(np.rint((full.images[:count, 0] * data.STD + data.MEAN) * 255), 0, 255)
        images_name, labels_name = data.FILES[split]
        write_idx(folder / f"{images_name}.gz", pixels)
        write_idx(folder / f"{labels_name}.gz", full.labels[:count])
    return folder


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_subset(tmp_path_factory.mktemp("fashion-mnist"), train=2000, test=500)


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """Generated kernels cached for this session only (subprocesses included): a run's time and results never
    depend on what earlier runs left in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KERNELS_ENV, str(tmp_path_factory.mktemp("kernels")))
        yield

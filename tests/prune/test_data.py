"""The Fashion-MNIST loader: real files, IDX parsing, and a clear message when data is missing."""

import numpy as np
import pytest
from conftest import write_idx

from tvm_pattern.errors import DatasetNotFoundError, TvmPatternError
from tvm_pattern.prune import data


def make_dataset(folder, n=5, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for images_name, labels_name in data.FILES.values():
        write_idx(folder / f"{images_name}{suffix}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{labels_name}{suffix}", rng.integers(0, 10, n))
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_from_a_folder(tmp_path, gz):
    split = data.load("test", make_dataset(tmp_path, gz=gz))
    assert split.images.shape == (5, 1, 28, 28) and split.images.dtype == np.float32
    assert split.labels.shape == (5,) and split.labels.dtype == np.int64


def test_environment_variable_points_at_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(make_dataset(tmp_path)))
    assert data.data_dir() == tmp_path


def test_debian_dataset_is_the_default():
    train, test = data.load("train"), data.load("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert set(np.unique(test.labels)) == set(range(10))
    assert abs(float(train.images.mean())) < 0.01 and abs(float(train.images.std()) - 1) < 0.01


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        data.load("train", tmp_path / "nowhere")
    assert "TVM_PATTERN_DATA" in str(err.value) and "nowhere" in str(err.value)


def test_truncated_and_wrong_files_are_named(tmp_path):
    make_dataset(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(TvmPatternError, match="truncated"):
        data.load("train", tmp_path)
    images.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(TvmPatternError, match="not an IDX file of the expected kind"):
        data.load("train", tmp_path)
    with pytest.raises(TvmPatternError, match="unknown split"):
        data.load("validation", tmp_path)

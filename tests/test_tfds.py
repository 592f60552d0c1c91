"""TFDS through data_source: mock data, a real offline preparation of MNIST, and its failures."""

import gzip
import shutil
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import SHARED_DATA, run_module

from bmjax import data
from bmjax.data import tfds_source
from bmjax.errors import UsageError

MNIST_RAW = SHARED_DATA / "mnist"
MNIST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
               "train-labels-idx1-ubyte.gz"]
needs_mnist = pytest.mark.skipif(not MNIST_RAW.is_dir(), reason=f"genuine MNIST files not found: {MNIST_RAW}")


def test_mock_data_through_data_source(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda builder: True)  # as if online
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        eager = data.load("mnist", data_dir=str(tmp_path), validation_split=0.25)
        lazy = data.load("mnist", data_dir=str(tmp_path), validation_split=0.25, in_memory=False)
    assert eager.info.num_classes == 10 and eager.info.feature_shape == (28, 28, 1)
    assert len(eager.train) == 30 and len(eager.validation) == 10 and len(eager.test) == 40
    assert eager.train.x.dtype == np.uint8
    rows = np.array([3, 0, 7])
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        lazy_rows = lazy.train[rows]
    np.testing.assert_array_equal(lazy_rows["x"], eager.train[rows]["x"])
    np.testing.assert_array_equal(lazy_rows["y"], eager.train[rows]["y"])


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory):
    if not MNIST_RAW.is_dir():
        pytest.skip(f"genuine MNIST files not found: {MNIST_RAW}")
    data_dir = tmp_path_factory.mktemp("tfds")
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={MNIST_RAW}", f"--data_dir={data_dir}")
    assert out.returncode == 0, out.stderr
    assert "mnist is prepared in" in out.stdout
    return data_dir


@needs_mnist
def test_real_offline_preparation_of_mnist(prepared_mnist):
    mnist = data.load("mnist", data_dir=str(prepared_mnist))
    assert (len(mnist.train), len(mnist.test)) == (60000, 10000)
    assert mnist.train.x.shape == (60000, 28, 28, 1) and mnist.train.x.dtype == np.uint8
    assert np.bincount(mnist.train.y).tolist()[:3] == [5923, 6742, 5958]  # MNIST's known class counts
    with gzip.open(MNIST_RAW / "t10k-labels-idx1-ubyte.gz") as f:
        raw_test_labels = np.frombuffer(f.read()[8:], np.uint8)
    assert sorted(np.bincount(mnist.test.y)) == sorted(np.bincount(raw_test_labels))
    assert 30 < mnist.train.x.mean() < 40, "ink on a black background"
    with pytest.raises(UsageError, match="images, which are scaled"):
        data.load("mnist", data_dir=str(prepared_mnist), normalize="standardize")


@needs_mnist
def test_damaged_prepared_data_is_named(prepared_mnist, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(prepared_mnist, copy)
    records = next((copy / "mnist").glob("*/mnist-train.array_record*"))
    records.write_bytes(records.read_bytes()[: records.stat().st_size // 2])
    with pytest.raises(UsageError, match="the prepared data in .*mnist.* cannot be read.*delete that folder"):
        data.load("mnist", data_dir=str(copy))


def test_not_prepared_and_offline_fails_fast(tmp_path):
    start = time.time()
    out = run_module("bmjax.data", "prepare", "mnist", f"--data_dir={tmp_path}", timeout=60)
    if out.returncode == 0:
        pytest.skip("this machine reaches the TFDS download site; the offline failure cannot be shown")
    assert time.time() - start < 30
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = next(line for line in out.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: dataset mnist is not prepared") and "--manual_dir=DIR" in error
    assert "train-images-idx3-ubyte.gz" in error


def test_manual_dir_missing_files(tmp_path):
    (tmp_path / "raw").mkdir()
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={tmp_path / 'raw'}",
                     f"--data_dir={tmp_path / 'tfds'}", timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert all(f in out.stderr for f in MNIST_FILES)


@needs_mnist
def test_corrupt_raw_file_is_named(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(MNIST_RAW, raw)
    damaged = raw / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={raw}", f"--data_dir={tmp_path / 'tfds'}",
                     timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = next(line for line in out.stderr.splitlines() if line.startswith("error: "))
    assert "checksum" in error and "train-labels-idx1-ubyte.gz" in error, error


def test_unknown_name_and_usage():
    out = run_module("bmjax.data", "prepare", "not_a_dataset_anywhere")
    assert out.returncode == 2 and "unknown dataset 'not_a_dataset_anywhere'" in out.stderr
    out = run_module("bmjax.data", "prepare")
    assert out.returncode == 2 and "usage: python -m bmjax.data prepare NAME" in out.stderr

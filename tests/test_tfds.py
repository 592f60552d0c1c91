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
MNIST_URLS = [f"https://storage.googleapis.com/cvdf-datasets/mnist/{f}" for f in MNIST_FILES]
needs_mnist = pytest.mark.skipif(not MNIST_RAW.is_dir(), reason=f"genuine MNIST files not found: {MNIST_RAW}")


def mock_mnist(num_examples=40):
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def test_mock_data_through_data_source(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)  # as if online
    with mock_mnist():
        eager = data.load("mnist", data_dir=str(tmp_path), validation_split=0.25)
        lazy = data.load("mnist", data_dir=str(tmp_path), validation_split=0.25, in_memory=False)
        rows = np.array([3, 0, 7, 3])
        lazy_rows = lazy.train[rows]
        lazy_test = lazy.test[np.arange(40)]
    assert eager.info.num_classes == 10 and eager.info.feature_shape == (28, 28, 1)
    assert eager.info.class_names == tuple(str(i) for i in range(10)) and eager.info.task == "classification"
    assert len(eager.train) == 30 and len(eager.validation) == 10 and len(eager.test) == 40
    assert eager.train.x.dtype == np.uint8 and eager.train.y.dtype == np.int32
    assert isinstance(eager.train, data.ArraySource) and not isinstance(lazy.train, data.ArraySource)
    assert (len(lazy.train), len(lazy.validation), len(lazy.test)) == (30, 10, 40)
    np.testing.assert_array_equal(lazy_rows["x"], eager.train[rows]["x"])
    np.testing.assert_array_equal(lazy_rows["y"], eager.train[rows]["y"])
    np.testing.assert_array_equal(lazy_test["x"], eager.test.x)
    assert lazy_rows["x"].shape == (4, 28, 28, 1) and eager.train.x.std() > 0, "mock images are random"
    assert not list(tmp_path.iterdir()), "mock data left files behind"


def test_images_are_left_alone_by_normalisation(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)
    with mock_mnist():
        raw = data.load("mnist", data_dir=str(tmp_path))
        scaled = data.load("mnist", data_dir=str(tmp_path), normalize="standardize")
    assert scaled.train.x.dtype == np.uint8
    np.testing.assert_array_equal(scaled.train.x, raw.train.x)


def test_text_datasets_are_read_as_token_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)
    with mock_mnist():
        reviews = data.load("imdb_reviews", data_dir=str(tmp_path), block_size=32, validation_split=0.25)
        packed = data.load("imdb_reviews", data_dir=str(tmp_path), block_size=32, task="masked_lm")
    assert reviews.info.task == "classification" and reviews.info.class_names == ("neg", "pos")
    assert reviews.info.feature_shape == (32,) and reviews.info.vocab_size == reviews.tokenizer.vocab_size
    assert (len(reviews.train), len(reviews.validation), len(reviews.test)) == (30, 10, 40)
    assert reviews.train.x.shape == (30, 32) and reviews.train.x.dtype == np.int32
    assert np.all(reviews.train.x[:, 0] == reviews.tokenizer.cls_id) and set(np.unique(reviews.test.y)) <= {0, 1}
    assert packed.info.task == "masked_lm" and packed.validation is None
    assert np.sum(packed.train.x["tokens"] == packed.tokenizer.cls_id) == 40, "every review packed once"
    with mock_mnist(), pytest.raises(UsageError, match="--task=language_model does not fit imdb_reviews"):
        data.load("imdb_reviews", data_dir=str(tmp_path), block_size=32, task="language_model")


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory):
    if not MNIST_RAW.is_dir():
        pytest.skip(f"genuine MNIST files not found: {MNIST_RAW}")
    data_dir = tmp_path_factory.mktemp("tfds")
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={MNIST_RAW}", f"--data_dir={data_dir}")
    assert out.returncode == 0, out.stderr
    assert f"mnist is prepared in {data_dir / 'mnist' / '3.0.1'}" in out.stdout
    assert f"preparing mnist from the files in {MNIST_RAW} into {data_dir}" in out.stdout, "says what takes time"
    return data_dir


@needs_mnist
def test_real_offline_preparation_of_mnist(prepared_mnist):
    assert sorted(p.name for p in prepared_mnist.iterdir()) == ["mnist"], "extracted raw files were left behind"
    started = time.time()
    mnist = data.load("mnist", data_dir=str(prepared_mnist))
    decoded_in = time.time() - started
    assert (len(mnist.train), len(mnist.test)) == (60000, 10000) and mnist.validation is None
    assert mnist.train.x.shape == (60000, 28, 28, 1) and mnist.train.x.dtype == np.uint8
    assert mnist.info.num_classes == 10 and set(np.unique(mnist.test.y)) == set(range(10))
    assert np.bincount(mnist.train.y).tolist()[:3] == [5923, 6742, 5958]  # MNIST's known class counts
    with gzip.open(MNIST_RAW / "t10k-labels-idx1-ubyte.gz") as f:
        raw_test_labels = np.frombuffer(f.read()[8:], np.uint8)
    with gzip.open(MNIST_RAW / "t10k-images-idx3-ubyte.gz") as f:
        raw_test_images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28, 1)
    assert sorted(np.bincount(mnist.test.y)) == sorted(np.bincount(raw_test_labels))
    assert 30 < mnist.train.x.mean() < 40, "ink on a black background"
    # TFDS shuffles the records: each test image must still be a raw test image with its raw label.
    raw_label_of = {raw_test_images[i].tobytes(): raw_test_labels[i] for i in range(len(raw_test_labels))}
    assert all(raw_label_of[mnist.test.x[i].tobytes()] == mnist.test.y[i] for i in range(0, 10000, 97))

    started = time.time()
    again = data.load("mnist", data_dir=str(prepared_mnist))
    assert time.time() - started < decoded_in, "the decoded arrays were not reused"
    assert list((prepared_mnist / "mnist" / "3.0.1" / "bmjax_arrays").glob("train-*.x.npy"))
    np.testing.assert_array_equal(again.train.x, mnist.train.x)
    lazy = data.load("mnist", data_dir=str(prepared_mnist), in_memory=False, validation_split=0.1)
    eager = data.load("mnist", data_dir=str(prepared_mnist), validation_split=0.1)
    rows = np.array([53999, 0, 17, 17])
    np.testing.assert_array_equal(lazy.train[rows]["x"], eager.train.x[rows])
    np.testing.assert_array_equal(lazy.validation[rows[1:]]["y"], eager.validation.y[rows[1:]])


@needs_mnist
def test_damaged_prepared_data_is_named(prepared_mnist, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(prepared_mnist, copy)  # with the decoded arrays, if the test above left them
    records = next((copy / "mnist").glob("*/mnist-train.array_record*"))
    records.write_bytes(records.read_bytes()[: records.stat().st_size // 2])
    with pytest.raises(UsageError, match="the prepared data in .*mnist.* cannot be read.*delete that folder"):
        data.load("mnist", data_dir=str(copy))
    (copy / "mnist" / "3.0.1" / "dataset_info.json").write_text("{damaged")
    with pytest.raises(UsageError, match=r"TFDS cannot open mnist in .*mnist \(.*JSON.*delete that folder"):
        data.load("mnist", data_dir=str(copy))


def test_not_prepared_and_offline_fails_fast(tmp_path):
    if tfds_source._any_host_reachable(MNIST_URLS):
        pytest.skip("this machine reaches the MNIST download site; the offline failure cannot be shown")
    start = time.time()
    out = run_module("bmjax.data", "prepare", "mnist", f"--data_dir={tmp_path}", timeout=60)
    assert time.time() - start < 15
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: dataset mnist is not prepared in {tmp_path}")
    assert "python -m bmjax.data prepare mnist --manual_dir=DIR" in errors[0]
    assert all(f in errors[0] for f in MNIST_FILES)


def test_manual_dir_missing_files(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={raw}", f"--data_dir={tmp_path / 'tfds'}",
                     timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = next(line for line in out.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith(f"error: --manual_dir={raw} lacks t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
                            "train-labels-idx1-ubyte.gz;"), error
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={tmp_path / 'absent'}", timeout=60)
    assert out.returncode == 2 and "is not a folder" in out.stderr and MNIST_FILES[0] in out.stderr


@needs_mnist
def test_corrupt_raw_file_is_named(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(MNIST_RAW, raw)
    damaged = raw / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    start = time.time()
    out = run_module("bmjax.data", "prepare", "mnist", f"--manual_dir={raw}", f"--data_dir={tmp_path / 'tfds'}",
                     timeout=120)
    assert time.time() - start < 60
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = next(line for line in out.stderr.splitlines() if line.startswith("error: "))
    assert "checksum" in error and "train-labels-idx1-ubyte.gz" in error, error
    assert not any(f in error for f in MNIST_FILES if f != damaged.name)


def test_unknown_name_and_usage():
    out = run_module("bmjax.data", "prepare", "not_a_dataset_anywhere")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: unknown dataset 'not_a_dataset_anywhere'; choose one of bmjax's (digits" in out.stderr
    out = run_module("bmjax.data", "prepare")
    assert out.returncode == 2 and "usage: python -m bmjax.data prepare NAME" in out.stderr

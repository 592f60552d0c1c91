"""bmjax's own datasets, validation carving and preprocessing fitted on the training split only."""

import numpy as np
import pytest

from bmjax import data
from bmjax.data import preprocess
from bmjax.errors import UsageError


@pytest.mark.parametrize("name, shape, classes, size", [
    ("digits", (8, 8, 1), 10, 1797), ("iris", (4,), 3, 150), ("wine", (13,), 3, 178),
    ("breast_cancer", (30,), 2, 569), ("diabetes", (10,), None, 442), ("mnist1d", (40,), 10, 5000),
    ("synthetic", (10,), 2, 1000),
])
def test_bmjax_datasets(name, shape, classes, size):
    dataset = data.load(name)
    assert dataset.info.feature_shape == shape and dataset.info.num_classes == classes
    assert len(dataset.train) + len(dataset.test) == size and dataset.validation is None
    batch = dataset.train[np.array([0, 5, 2])]
    assert batch["x"].shape == (3, *shape) and batch["x"].dtype == np.float32
    if classes:
        assert batch["y"].dtype == np.int32
        assert set(np.unique(dataset.test.y)) == set(range(classes)), "the test split is stratified"
    else:
        assert batch["y"].dtype == np.float32 and dataset.info.task == "regression"


def test_synthetic_has_the_asked_shape():
    dataset = data.load("synthetic", synthetic_examples=500, synthetic_features=7, synthetic_classes=4)
    assert dataset.info.feature_shape == (7,) and dataset.info.num_classes == 4
    assert len(dataset.train) + len(dataset.test) == 500


def test_validation_split_is_fixed_disjoint_and_covering():
    whole = data.load("wine").train
    a, b = data.load("wine", validation_split=0.25, seed=1), data.load("wine", validation_split=0.25, seed=2)
    np.testing.assert_array_equal(a.validation.x, b.validation.x)
    assert len(a.validation) == round(0.25 * len(whole)) and len(a.train) + len(a.validation) == len(whole)
    rows = {tuple(r) for r in whole.x}
    train_rows, val_rows = {tuple(r) for r in a.train.x}, {tuple(r) for r in a.validation.x}
    assert not train_rows & val_rows and train_rows | val_rows == rows


@pytest.mark.parametrize("method", ["standardize", "minmax"])
def test_normalisation_is_fitted_on_the_training_split_only(method):
    raw = data.load("breast_cancer", validation_split=0.2)
    scaled = data.load("breast_cancer", validation_split=0.2, normalize=method)
    if method == "standardize":
        shift, scale = raw.train.x.mean(0), raw.train.x.std(0)
        np.testing.assert_allclose(scaled.train.x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(scaled.train.x.std(0), 1, atol=1e-3)
        assert np.abs(scaled.test.x.mean(0)).max() > 0.01, "test statistics were not used"
    else:
        shift, scale = raw.train.x.min(0), raw.train.x.max(0) - raw.train.x.min(0)
        np.testing.assert_allclose(scaled.train.x.min(0), 0, atol=1e-6)
        np.testing.assert_allclose(scaled.train.x.max(0), 1, atol=1e-5)
    for split in ("train", "validation", "test"):
        np.testing.assert_allclose(getattr(scaled, split).x, (getattr(raw, split).x - shift) / scale,
                                   rtol=1e-4, atol=1e-4)


def test_constant_features_stay_finite():
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], np.float32)
    for method in ("standardize", "minmax"):
        out = preprocess.apply_normalizer(x, preprocess.fit_normalizer(x, method))
        assert np.isfinite(out).all() and np.all(out[:, 1] == 0)


def test_one_hot_and_to_float():
    np.testing.assert_array_equal(preprocess.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(preprocess.to_float(np.array([0, 255], np.uint8)), [0.0, 1.0])
    assert preprocess.to_float(np.array([0.5], np.float32))[0] == 0.5


def test_bad_names():
    with pytest.raises(UsageError, match="unknown dataset 'nope'.*digits.*any TFDS"):
        data.load("nope")
    with pytest.raises(UsageError, match="unknown normalization 'zscore'"):
        data.load("iris", normalize="zscore")

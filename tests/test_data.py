"""bmjax's own datasets, validation carving and preprocessing fitted on the training split only."""

import jax
import numpy as np
import pytest

from bmjax import data
from bmjax.data import preprocess
from bmjax.data.sources import SubsetSource
from bmjax.errors import UsageError


@pytest.mark.parametrize("name, shape, classes, size", [
    ("digits", (8, 8, 1), 10, 1797), ("iris", (4,), 3, 150), ("wine", (13,), 3, 178),
    ("breast_cancer", (30,), 2, 569), ("diabetes", (10,), None, 442), ("mnist1d", (40,), 10, 5000),
    ("synthetic", (10,), 2, 1000),
])
def test_bmjax_datasets(name, shape, classes, size, tmp_path):
    dataset = data.load(name, data_dir=str(tmp_path))
    assert dataset.info.name == name and dataset.info.feature_shape == shape
    assert dataset.info.num_classes == classes and dataset.validation is None
    assert len(dataset.train) + len(dataset.test) == size
    assert len(dataset.test) == pytest.approx(0.2 * size, abs=1) or name == "mnist1d"
    batch = dataset.train[np.array([0, 5, 2, 5])]
    assert batch["x"].shape == (4, *shape) and batch["x"].dtype == np.float32
    np.testing.assert_array_equal(batch["x"][1], batch["x"][3])
    if classes:
        assert dataset.info.task == "classification" and batch["y"].dtype == np.int32
        assert len(dataset.info.class_names) == classes
        assert set(np.unique(dataset.test.y)) == set(range(classes)), "the test split is stratified"
    else:
        assert dataset.info.task == "regression" and dataset.info.class_names is None
        assert batch["y"].dtype == np.float32 and dataset.train.y.std() > 1, "targets are not class ids"


def test_digits_are_images_in_unit_range_and_names_come_from_sklearn():
    digits = data.load("digits")
    assert digits.train.x.min() == 0 and digits.train.x.max() == 1
    assert data.load("breast_cancer").info.class_names == ("malignant", "benign")


def test_mnist1d_is_generated_once_and_leaves_global_randomness_alone(tmp_path):
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    first = data.load("mnist1d", data_dir=str(tmp_path))
    assert np.random.rand() == expected_draw, "mnist1d reseeded numpy's global generator"
    cached = list((tmp_path / "mnist1d").glob("*.pkl"))
    assert len(cached) == 1 and (len(first.train), len(first.test)) == (4000, 1000)
    stamp = cached[0].stat().st_mtime_ns
    again = data.load("mnist1d", data_dir=str(tmp_path))
    assert cached[0].stat().st_mtime_ns == stamp, "the cached file was rewritten"
    np.testing.assert_array_equal(first.train.x, again.train.x)


def test_synthetic_has_the_asked_shape_and_bad_shapes_are_usage_errors():
    dataset = data.load("synthetic", synthetic_examples=500, synthetic_features=7, synthetic_classes=4)
    assert dataset.info.feature_shape == (7,) and dataset.info.num_classes == 4
    assert len(dataset.train) + len(dataset.test) == 500
    np.testing.assert_array_equal(dataset.train.x, data.load("synthetic", synthetic_examples=500,
                                                             synthetic_features=7, synthetic_classes=4).train.x)
    with pytest.raises(UsageError, match="synthetic data .* cannot be made"):
        data.load("synthetic", synthetic_examples=10, synthetic_features=2, synthetic_classes=9)


def test_validation_split_is_fixed_disjoint_and_covering():
    whole = data.load("wine").train
    a, b = data.load("wine", validation_split=0.25), data.load(data.DataSpec("wine", validation_split=0.25))
    np.testing.assert_array_equal(a.validation.x, b.validation.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert len(a.validation) == round(0.25 * len(whole)) and len(a.train) + len(a.validation) == len(whole)
    rows = {tuple(r) for r in whole.x}
    train_rows, val_rows = {tuple(r) for r in a.train.x}, {tuple(r) for r in a.validation.x}
    assert not train_rows & val_rows and train_rows | val_rows == rows
    assert a.test.x.shape == data.load("wine").test.x.shape


def test_validation_of_a_lazy_source_is_an_index_remap():
    whole = data.load("iris").train
    lazy = SubsetSource(whole, np.arange(len(whole)))  # stands in for a TFDS source
    rest, validation = data.datasets.carve_validation(lazy, 0.2)
    assert isinstance(validation, SubsetSource) and validation.source is lazy
    copied_rest, copied_validation = data.datasets.carve_validation(whole, 0.2)
    np.testing.assert_array_equal(validation[np.arange(len(validation))]["x"], copied_validation.x)
    np.testing.assert_array_equal(rest[np.arange(len(rest))]["y"], copied_rest.y)


@pytest.mark.parametrize("method", ["standardize", "minmax"])
def test_normalisation_is_fitted_on_the_training_split_only(method):
    raw = data.load("breast_cancer", validation_split=0.2)
    scaled = data.load("breast_cancer", validation_split=0.2, normalize=method)
    if method == "standardize":
        shift, scale = raw.train.x.mean(0), raw.train.x.std(0)
        np.testing.assert_allclose(scaled.train.x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(scaled.train.x.std(0), 1, atol=1e-3)
        assert np.abs(scaled.test.x.mean(0)).max() > 0.01, "test statistics were used"
        assert np.abs(scaled.validation.x.std(0) - 1).max() > 0.01, "validation statistics were used"
    else:
        shift, scale = raw.train.x.min(0), raw.train.x.max(0) - raw.train.x.min(0)
        np.testing.assert_allclose(scaled.train.x.min(0), 0, atol=1e-6)
        np.testing.assert_allclose(scaled.train.x.max(0), 1, atol=1e-5)
        assert scaled.test.x.min() < 0 or scaled.test.x.max() > 1, "test statistics were used"
    for split in ("train", "validation", "test"):
        assert getattr(scaled, split).x.dtype == np.float32
        np.testing.assert_allclose(getattr(scaled, split).x, (getattr(raw, split).x - shift) / scale,
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(getattr(scaled, split).y, getattr(raw, split).y)


def test_constant_features_stay_finite():
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], np.float32)
    for method in ("standardize", "minmax"):
        out = preprocess.apply_normalizer(x, preprocess.fit_normalizer(x, method))
        assert np.isfinite(out).all() and np.all(out[:, 1] == 0)
    digits = data.load("digits", normalize="standardize")  # its corner pixels are always 0
    assert np.isfinite(digits.train.x).all() and np.isfinite(digits.test.x).all()


def test_one_hot_and_to_float():
    encoded = preprocess.one_hot([2, 0], 3)
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, [[0, 0, 1], [1, 0, 0]])
    assert preprocess.one_hot(np.array([[1], [0]]), 2).shape == (2, 1, 2)
    to_float = jax.jit(preprocess.to_float)
    images = to_float(np.array([0, 51, 255], np.uint8))
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, [0.0, 0.2, 1.0])
    features = np.array([0.5, -3.0], np.float32)
    np.testing.assert_array_equal(to_float(features), features)


def test_bad_names_and_values():
    with pytest.raises(UsageError, match="unknown dataset 'nope'.*digits.*mnist1d.*any TFDS dataset name"):
        data.load("nope")
    with pytest.raises(UsageError, match="unknown normalization 'zscore'.*standardize"):
        data.load("iris", normalize="zscore")
    for fraction in (0.0, 1.5):
        with pytest.raises(UsageError, match="--validation_split must lie in"):
            data.load("iris", validation_split=fraction)
    with pytest.raises(UsageError, match="needs no preparation"):
        data.prepare("iris")


def test_a_registered_dataset_is_read_by_name_with_its_experiments_settings():
    import dataclasses

    from bmjax.config import Config
    from bmjax.data import registry
    from bmjax.data.sources import ArraySource, Dataset, DatasetInfo

    @data.register("tests_counting")
    def counting(spec):
        n = registry.setting(spec, "examples")
        split = ArraySource(np.arange(n, dtype=np.float32)[:, None], np.arange(n, dtype=np.int32) % 2)
        return Dataset(DatasetInfo(spec.name, "classification", (1,), 2, ("even", "odd")), split, None, split)

    @dataclasses.dataclass(frozen=True)
    class Counting(Config):
        examples: int = 6

    try:
        dataset = data.load(data.DataSpec.of(Counting(dataset="tests_counting", examples=4)))
        assert len(dataset.train) == 4 and dataset.info.class_names == ("even", "odd")
        with pytest.raises(UsageError, match="needs the setting --examples"):
            data.load("tests_counting")
        with pytest.raises(ValueError, match="registered twice"):
            data.register("tests_counting")(lambda spec: None)
    finally:
        registry.REGISTRY.pop("tests_counting")

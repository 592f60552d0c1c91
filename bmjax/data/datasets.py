"""`load(name)`: bmjax's own datasets (no network needed) or any TFDS dataset, split and preprocessed."""

from typing import Optional

import numpy as np

from bmjax.data import preprocess, tfds_source
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo, SubsetSource
from bmjax.errors import UsageError

SKLEARN = ("digits", "iris", "wine", "breast_cancer", "diabetes")
NAMES = SKLEARN + ("mnist1d", "synthetic")
TEST_FRACTION = 0.2  # of bmjax's own sets, which come unsplit
SPLIT_SEED = 0  # fixed: every run of a dataset sees the same test and validation examples


def load(name: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
         validation_split: Optional[float] = None, normalize: str = "none", seed: int = 0,
         synthetic_examples: int = 1000, synthetic_features: int = 10, synthetic_classes: int = 2,
         in_memory: bool = True) -> Dataset:
    """The dataset `name` with train/validation/test splits; normalisation fitted on train alone.

    `seed` is accepted for symmetry with the runner; splits are fixed per dataset.
    """
    if normalize not in preprocess.NORMALIZATIONS:
        raise UsageError(f"unknown normalization {normalize!r}; choose one of: "
                         f"{', '.join(preprocess.NORMALIZATIONS)}")
    if name in NAMES:
        info, train, test = _bmjax_dataset(name, synthetic_examples, synthetic_features, synthetic_classes)
    else:
        info, train, test = tfds_source.load(name, data_dir=data_dir, manual_dir=manual_dir, in_memory=in_memory)

    validation = None
    if validation_split is not None:
        if not 0 < validation_split < 1:
            raise UsageError(f"--validation_split must lie in (0, 1), got {validation_split}")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
        held_out = int(round(validation_split * len(train)))
        if held_out == 0 or held_out == len(train):
            raise UsageError(f"--validation_split={validation_split} leaves no examples on one side of "
                             f"{len(train)}; choose a fraction nearer 0.5")
        validation, train = _subset(train, np.sort(order[:held_out])), _subset(train, np.sort(order[held_out:]))

    if normalize != "none":
        if not isinstance(train, ArraySource) or train.x.dtype == np.uint8:
            raise UsageError(f"--normalize={normalize} applies to in-memory float features; {name} holds images, "
                             "which are scaled to [0, 1] already: use --normalize=none")
        normalizer = preprocess.fit_normalizer(train.x, normalize)
        train, validation, test = (None if s is None else ArraySource(preprocess.apply_normalizer(s.x, normalizer),
                                                                       s.y) for s in (train, validation, test))
    return Dataset(info, train, validation, test)


def prepare(name: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> str:
    """Prepares TFDS dataset `name` (offline from `manual_dir` if given); returns where it went."""
    if name in NAMES:
        raise UsageError(f"{name} is one of bmjax's own datasets and needs no preparation")
    return tfds_source.prepare(name, data_dir=data_dir, manual_dir=manual_dir).data_dir


def _subset(source, rows):
    if isinstance(source, ArraySource):
        return ArraySource(source.x[rows], source.y[rows])
    return SubsetSource(source, rows)


def _bmjax_dataset(name, synthetic_examples, synthetic_features, synthetic_classes):
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        raw = make_dataset(get_dataset_args())  # generated locally in under a second
        info = DatasetInfo(name, "classification", (40,), 10, tuple(str(i) for i in range(10)))
        return (info, ArraySource(raw["x"].astype(np.float32), raw["y"].astype(np.int32)),
                ArraySource(raw["x_test"].astype(np.float32), raw["y_test"].astype(np.int32)))

    from sklearn import datasets as sk
    from sklearn.model_selection import train_test_split

    if name == "synthetic":
        x, y = sk.make_classification(n_samples=synthetic_examples, n_features=synthetic_features,
                                      n_informative=max(2, min(synthetic_features, synthetic_classes + 2)),
                                      n_redundant=0, n_classes=synthetic_classes, random_state=SPLIT_SEED)
        class_names = tuple(str(i) for i in range(synthetic_classes))
    else:
        bunch = getattr(sk, f"load_{name}")()
        x, y = bunch.data, bunch.target
        class_names = tuple(str(n) for n in bunch.target_names) if hasattr(bunch, "target_names") else None
    regression = name == "diabetes"
    x = x.astype(np.float32)
    if name == "digits":
        x = x.reshape(-1, 8, 8, 1) / 16.0  # 8x8 images with 17 grey levels, scaled to [0, 1]
    y = y.astype(np.float32 if regression else np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                                        stratify=None if regression else y)
    info = DatasetInfo(name, "regression" if regression else "classification", x.shape[1:],
                       None if regression else int(y.max()) + 1, None if regression else class_names)
    return info, ArraySource(x_train, y_train), ArraySource(x_test, y_test)

"""bmjax's own datasets: scikit-learn's bundled sets, MNIST-1D and synthetic data, all made without a network."""

import math
import os
import random
import tempfile
from typing import Optional

import numpy as np

from bmjax.data.sources import ArraySource, DatasetInfo
from bmjax.errors import UsageError

SKLEARN = ("digits", "iris", "wine", "breast_cancer", "diabetes")
NAMES = SKLEARN + ("mnist1d", "synthetic")
REGRESSION = ("diabetes",)
TEST_FRACTION = 0.2  # these sets come unsplit
SPLIT_SEED = 0  # fixed: every run of a dataset sees the same test examples


def load(name: str, *, data_dir: Optional[str], synthetic_examples: int, synthetic_features: int,
         synthetic_classes: int) -> tuple[DatasetInfo, ArraySource, ArraySource]:
    """(info, train, test) of one of bmjax's own datasets."""
    if name == "mnist1d":
        return _mnist1d(data_dir)
    if name == "synthetic":
        x, y = _synthetic(synthetic_examples, synthetic_features, synthetic_classes)
        class_names = tuple(str(i) for i in range(synthetic_classes))
    else:
        from sklearn import datasets as sk

        bunch = getattr(sk, f"load_{name}")()
        x, y = bunch.data, bunch.target
        class_names = tuple(str(n) for n in bunch.target_names) if hasattr(bunch, "target_names") else None
    regression = name in REGRESSION
    x = x.astype(np.float32)
    if name == "digits":
        x = x.reshape(-1, 8, 8, 1) / np.float32(16)  # 8x8 images with 17 grey levels, scaled to [0, 1]
    y = y.astype(np.float32 if regression else np.int32)
    num_classes = None if regression else int(y.max()) + 1
    if class_names is None and not regression:
        class_names = tuple(str(i) for i in range(num_classes))
    train, test = _split(x, y, stratify=not regression)
    info = DatasetInfo(name, "regression" if regression else "classification", x.shape[1:], num_classes,
                       None if regression else class_names)
    return info, train, test


def _split(x, y, stratify: bool):
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                                        stratify=y if stratify else None)
    return ArraySource(x_train, y_train), ArraySource(x_test, y_test)


def _synthetic(examples: int, features: int, classes: int):
    from sklearn.datasets import make_classification

    informative = max(2, min(features, classes + 2))
    clusters = 2 if classes * 2 <= 2 ** informative else 1  # sklearn needs classes * clusters <= 2**informative
    try:
        x, y = make_classification(n_samples=examples, n_features=features, n_informative=informative,
                                   n_redundant=0, n_classes=classes, n_clusters_per_class=clusters,
                                   random_state=SPLIT_SEED)
        test_size = math.ceil(examples * TEST_FRACTION)  # as train_test_split counts it
        if min(np.bincount(y, minlength=classes)) < 2 or min(test_size, examples - test_size) < classes:
            raise ValueError("too few examples per class for a stratified train/test split")
    except ValueError as e:
        raise UsageError(f"synthetic data with --synthetic_examples={examples} --synthetic_features={features} "
                         f"--synthetic_classes={classes} cannot be made ({e}); use at least 2 features and 2 "
                         "classes, more examples than 5 per class, and features >= log2(classes)") from None
    return x, y


def _mnist1d(data_dir: Optional[str]):
    """MNIST-1D generated with the package's defaults (4000 train, 1000 test), cached as a file after the first time."""
    from mnist1d.data import get_dataset, get_dataset_args

    args = get_dataset_args()
    folder = os.path.join(data_dir or os.path.join(tempfile.gettempdir(), "bmjax"), "mnist1d")
    path = os.path.join(folder, f"mnist1d_{args.num_samples}_seed{args.seed}.pkl")
    numpy_state, python_state = np.random.get_state(), random.getstate()  # mnist1d reseeds the global generators
    try:
        if os.path.exists(path):  # read it; mnist1d regenerates and rewrites a damaged file itself
            raw = get_dataset(args, path=path, download=False, regenerate=False, verbose=False)
        else:  # generate into a private file, then move it in whole: concurrent processes may race here
            os.makedirs(folder, exist_ok=True)
            scratch = f"{path}.{os.getpid()}.tmp"
            raw = get_dataset(args, path=scratch, download=False, regenerate=True, verbose=False)
            os.replace(scratch, path)
    except OSError as e:
        raise UsageError(f"cannot write the MNIST-1D cache {path} ({e.strerror}); pass a writable --data_dir") from None
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    info = DatasetInfo("mnist1d", "classification", (args.final_seq_length,), 10, tuple(str(i) for i in range(10)))
    return (info, ArraySource(raw["x"].astype(np.float32), raw["y"].astype(np.int32)),
            ArraySource(raw["x_test"].astype(np.float32), raw["y_test"].astype(np.int32)))

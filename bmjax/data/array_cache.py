"""Decoded TFDS splits kept as .npy files beside the prepared data, so a split is decoded once.

Decoding MNIST's 70,000 PNG records takes about 5 s on two cores; loading the
cached arrays takes a tenth of a second. The files live in the dataset's
version folder (`<data_dir>/<name>/<version>/bmjax_arrays/`), named by split
and by a fingerprint of the split's record files, so deleting or re-preparing
the dataset never leaves stale arrays behind.
"""

import glob
import hashlib
import os
from typing import Callable, Optional

import numpy as np

from bmjax.data.sources import ArraySource, Source

FOLDER = "bmjax_arrays"


def read(dataset_builder, split: str, feature_shape: tuple, decoder: Callable[[], Source]) -> ArraySource:
    """The split in memory: from the cache when it matches the records, else decoded by `decoder()` and cached."""
    paths = _paths(dataset_builder, split)
    if paths is not None:
        cached = _load(*paths, feature_shape)
        if cached is not None:
            return cached
    arrays = decoder().read_all()
    if paths is not None:
        _save(paths, arrays)
    return arrays


def _paths(dataset_builder, split: str) -> Optional[tuple[str, str]]:
    """(x, y) file paths, or None where the split has no local record files (mock data, remote storage)."""
    directory = str(dataset_builder.data_dir)
    records = sorted(glob.glob(os.path.join(glob.escape(directory), f"{dataset_builder.name}-{split}.*")))
    if not records:
        return None
    stamp = repr([(os.path.basename(p), os.path.getsize(p)) for p in records])
    fingerprint = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    base = os.path.join(directory, FOLDER, f"{split}-{fingerprint}")
    return f"{base}.x.npy", f"{base}.y.npy"


def _load(x_path: str, y_path: str, feature_shape: tuple) -> Optional[ArraySource]:
    try:
        x, y = np.load(x_path, allow_pickle=False), np.load(y_path, allow_pickle=False)
    except (OSError, ValueError):  # absent or damaged: decode again
        return None
    if x.shape[1:] != tuple(feature_shape) or len(x) != len(y):
        return None
    return ArraySource(x, y)


def _save(paths: tuple[str, str], arrays: ArraySource) -> None:
    """Writes each file under a private name, then renames it: readers never see half a file."""
    try:
        os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
        for path, array in zip(paths, (arrays.x, arrays.y)):
            scratch = f"{path}.{os.getpid()}.tmp.npy"
            np.save(scratch, array)
            os.replace(scratch, path)
    except OSError:  # a read-only data_dir: go on without a cache
        pass

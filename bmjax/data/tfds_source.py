"""TFDS datasets through `data_source` (array_record, random access), prepared online or from raw files offline.

No call here waits on a dead network: before TFDS would download, the hosts of
the dataset's registered URLs are probed with a short timeout, and where none
answers the error says how to prepare the dataset offline.
"""

import os
import socket
import urllib.parse
from typing import Optional

import numpy as np

from bmjax.data.sources import ArraySource, DatasetInfo, Source
from bmjax.errors import UsageError

FILE_FORMAT = "array_record"
NETWORK_TIMEOUT_SECONDS = 3.0


def builder(name: str, data_dir: Optional[str]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, where TFDS loads it
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown(name) from None


def _unknown(name: str) -> UsageError:
    from bmjax.data.datasets import NAMES

    return UsageError(f"unknown dataset {name!r}; choose one of bmjax's ({', '.join(NAMES)}) or any TFDS "
                      "dataset name (tfds.list_builders())")


def expected_files(dataset_builder) -> list[str]:
    """The raw file names TFDS looks for in a manual directory."""
    return sorted(info.filename or os.path.basename(urllib.parse.urlparse(url).path)
                  for url, info in dataset_builder.url_infos.items()) if dataset_builder.url_infos else []


def prepare(name: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
    """Prepares `name` in `data_dir`: from the raw files in `manual_dir`, else by downloading. Returns the builder."""
    import tensorflow_datasets as tfds

    dataset_builder = builder(name, data_dir)
    if dataset_builder.is_prepared():
        return dataset_builder
    files = expected_files(dataset_builder)
    if manual_dir is not None:
        manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
        missing = [f for f in files if not os.path.exists(os.path.join(manual_dir, f))]
        if not os.path.isdir(manual_dir) or missing:
            raise UsageError(f"--manual_dir={manual_dir} lacks {', '.join(missing or files)}; put the raw "
                             f"{name} files there under the names TFDS expects")
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    else:
        if not _any_host_reachable(dataset_builder):
            hint = f" (raw files: {', '.join(files)})" if files else ""
            raise UsageError(f"dataset {name} is not prepared in {os.path.dirname(dataset_builder.data_dir)} and "
                             f"its download site is unreachable; prepare it offline with `python -m bmjax.data "
                             f"prepare {name} --manual_dir=DIR`{hint}, or pass --manual_dir=DIR")
        config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        dataset_builder.download_and_prepare(download_config=config)
    except Exception as e:  # TFDS raises many types; the checksum one names the bad file
        if type(e).__name__ == "NonMatchingChecksumError" or "checksum" in str(e).lower():
            bad = [f for f in files if f in str(e)] or ["a raw file"]
            raise UsageError(f"{bad[0]} in --manual_dir={manual_dir} does not match the checksum TFDS registers "
                             f"for {name}; download that file again") from None
        raise UsageError(f"preparing {name} failed: {_first_line(e)}") from None
    return dataset_builder


def load(name: str, *, data_dir: Optional[str], manual_dir: Optional[str], in_memory: bool):
    """(info, train, test) sources of a TFDS dataset with supervised keys."""
    dataset_builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    keys = dataset_builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise UsageError(f"TFDS dataset {name} has no (input, label) supervised keys; bmjax's supervised runner "
                         "needs a dataset that does")
    splits = set(dataset_builder.info.splits) or {"train", "test"}  # empty under tfds.testing.mock_data
    train_split = "train"
    test_split = "test" if "test" in splits else ("validation" if "validation" in splits else None)
    if train_split not in splits or test_split is None:
        raise UsageError(f"TFDS dataset {name} needs a train and a test (or validation) split; it has "
                         f"{', '.join(splits)}")
    x_key, y_key = keys
    label = dataset_builder.info.features[y_key]
    num_classes = getattr(label, "num_classes", None)
    info = DatasetInfo(name=name, task="classification" if num_classes else "regression",
                       feature_shape=tuple(dataset_builder.info.features[x_key].shape),
                       num_classes=num_classes, class_names=tuple(label.names) if num_classes else None)
    sources = []
    for split in (train_split, test_split):
        source = TfdsSource(dataset_builder, split, x_key, y_key)
        sources.append(source.read_all() if in_memory else source)
    return info, sources[0], sources[1]


class TfdsSource(Source):
    """A split of a prepared TFDS dataset, decoded example by example on access."""

    def __init__(self, dataset_builder, split: str, x_key: str, y_key: str):
        self.directory = dataset_builder.data_dir
        try:
            self.source = dataset_builder.as_data_source(split=split)
            self.length = len(self.source)
        except Exception as e:
            raise _corrupt(self.directory, e) from None
        self.x_key, self.y_key = x_key, y_key

    def __len__(self):
        return self.length

    def __getitem__(self, indices):
        keys = [int(i) for i in np.asarray(indices).ravel()]
        try:
            try:
                records = self.source.__getitems__(keys)  # one batched read
            except TypeError:  # tfds.testing.mock_data's sources read one key at a time
                records = [self.source[k] for k in keys]
        except Exception as e:
            raise _corrupt(self.directory, e) from None
        x = np.stack([r[self.x_key] for r in records])
        y = np.asarray([r[self.y_key] for r in records])
        return {"x": x, "y": y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)}

    def read_all(self, chunk: int = 10_000) -> ArraySource:
        parts = [self[np.arange(start, min(start + chunk, len(self)))] for start in range(0, len(self), chunk)]
        return ArraySource(np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts]))


def _corrupt(directory: str, error: Exception) -> UsageError:
    return UsageError(f"the prepared data in {directory} cannot be read ({_first_line(error)}); delete that "
                      "folder and prepare the dataset again")


def _any_host_reachable(dataset_builder) -> bool:
    hosts = {urllib.parse.urlparse(url).hostname for url in (dataset_builder.url_infos or {})}
    hosts = {h for h in hosts if h} or {"storage.googleapis.com"}
    for host in sorted(hosts):
        try:
            socket.create_connection((host, 443), timeout=NETWORK_TIMEOUT_SECONDS).close()
            return True
        except OSError:
            continue
    return False


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__

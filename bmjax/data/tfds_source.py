"""TFDS datasets through `data_source` (array_record, random access), prepared online or from raw files offline.

No call here waits on a dead network: before TFDS would download, the hosts of
the dataset's registered URLs are probed with a short timeout, and where none
answers the error says how to prepare the dataset offline. Preparing from a
manual folder turns TFDS's download retries (about 200 s) off.
"""

import contextlib
import os
import re
import socket
import tempfile
import urllib.parse
from typing import Optional

import numpy as np

from bmjax import console
from bmjax.data import array_cache, images
from bmjax.data.sources import ArraySource, DatasetInfo, Source
from bmjax.errors import UsageError

FILE_FORMAT = "array_record"
NETWORK_TIMEOUT_SECONDS = 3.0
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}


def builder(name: str, data_dir: Optional[str]):
    """TFDS's builder for `name`; reads the prepared dataset_info if there is one, never the network."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, where TFDS loads it
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown(name) from None
    except Exception as e:  # a damaged dataset_info.json, a version TFDS does not know, ...
        folder = os.path.join(data_dir or tfds.core.constants.DATA_DIR, re.split(r"[:/]", name)[0])
        reason = re.sub(r'^Failed to construct dataset .*?": ', "", _first_line(e)).rstrip(".")
        if os.path.isdir(folder):
            raise UsageError(f"TFDS cannot open {name} in {folder} ({reason}); if the prepared data there is "
                             "damaged, delete that folder and prepare the dataset again") from None
        raise UsageError(f"TFDS cannot build {name}: {reason}; check the dataset name and version") from None


def _unknown(name: str) -> UsageError:
    import difflib

    import tensorflow_datasets as tfds

    from bmjax.data.local import NAMES
    from bmjax.data.registry import REGISTRY
    from bmjax.data.sst2 import NAME as SST2
    from bmjax.data.text import TEXT_DATASETS

    own = list(NAMES) + sorted(REGISTRY)
    known = own + list(TEXT_DATASETS) + [SST2] + tfds.list_builders()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return UsageError(f"unknown dataset {name!r}; {hint}choose one of bmjax's ({', '.join(own)}) or any TFDS "
                      "dataset name (tfds.list_builders())")


def expected_files(dataset_builder) -> list[str]:
    """The raw file names TFDS looks for in a manual directory."""
    return sorted(info.filename or os.path.basename(urllib.parse.urlparse(url).path)
                  for url, info in (dataset_builder.url_infos or {}).items())


def prepare(name: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
    """Prepares `name` in `data_dir`: from the raw files in `manual_dir`, else by downloading. Returns the builder."""
    import tensorflow_datasets as tfds

    dataset_builder = builder(name, data_dir)
    if dataset_builder.is_prepared():
        return dataset_builder
    files = expected_files(dataset_builder)
    url_infos = dataset_builder.url_infos or {}
    root = dataset_builder.data_dir_root
    if manual_dir is None:
        if not _any_host_reachable(list(url_infos)):
            listed = f" holding {', '.join(files)}" if files else ""
            raise UsageError(f"dataset {name} is not prepared in {root} and its download site is unreachable; "
                             f"prepare it offline with `python -m bmjax.data prepare {name} --manual_dir=DIR` "
                             f"(DIR{listed}), or pass --manual_dir=DIR")
        _download_and_prepare(dataset_builder, tfds.download.DownloadConfig(try_download_gcs=False), files)
        return dataset_builder

    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(manual_dir):
        raise UsageError(f"--manual_dir={manual_dir} is not a folder; pass the folder holding the raw {name} "
                         f"files{': ' + ', '.join(files) if files else ''}")
    missing = [f for f in files if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
        raise UsageError(f"--manual_dir={manual_dir} lacks {', '.join(missing)}; put the raw {name} files there "
                         f"under the names TFDS expects: {', '.join(files)}")
    unnamed = [url for url, info in url_infos.items() if not info.filename]  # TFDS downloads these regardless
    if unnamed and not _any_host_reachable(unnamed):
        raise UsageError(f"TFDS downloads {unnamed[0]} for {name} even with --manual_dir, and it is unreachable; "
                         f"prepare {name} where there is a network and copy the folder {root}/{name} here")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    os.makedirs(root, exist_ok=True)
    # Extracted copies of the raw files go to a scratch folder, deleted afterwards.
    with tempfile.TemporaryDirectory(prefix=".bmjax-extract-", dir=root) as scratch, _downloads_fail_fast():
        _download_and_prepare(dataset_builder, config, files, manual_dir=manual_dir, download_dir=scratch)
    return dataset_builder


def _download_and_prepare(dataset_builder, config, files, manual_dir=None, download_dir=None):
    name = dataset_builder.name
    source = f"the files in {manual_dir}" if manual_dir else "its download site"
    console.say(f"preparing {name} from {source} into {dataset_builder.data_dir_root} (once; TFDS checks the "
                "files' checksums)")
    try:
        dataset_builder.download_and_prepare(download_dir=download_dir, download_config=config)
    except Exception as e:  # TFDS raises many types; the checksum one names the URL of the bad file
        if type(e).__name__ == "NonMatchingChecksumError" or "checksum" in str(e).lower():
            bad = next((f for f in files if f in str(e)), "a raw file")
            where = f" in --manual_dir={manual_dir}" if manual_dir else ""
            raise UsageError(f"{bad}{where} does not match the checksum TFDS registers for {name} (damaged or "
                             "a different version); get that file again") from None
        raise UsageError(f"preparing {name} failed: {_first_line(e)}; fix that and run the preparation "
                         "again") from None


@contextlib.contextmanager
def _downloads_fail_fast():
    """No retries for TFDS downloads while preparing offline: one failed connection fails at once."""
    from tensorflow_datasets.core.download import downloader

    retries = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = 0
    try:
        yield
    finally:
        downloader.MAX_RETRIES = retries


def _any_host_reachable(urls: list[str]) -> bool:
    """Whether any URL's host accepts a connection; a generic Google host stands in where none is known."""
    addresses = set()
    for url in urls:
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname:
            addresses.add((parsed.hostname, parsed.port or DEFAULT_PORTS.get(parsed.scheme, 443)))
    for address in sorted(addresses) or [("storage.googleapis.com", 443)]:
        try:
            socket.create_connection(address, timeout=NETWORK_TIMEOUT_SECONDS).close()
            return True
        except OSError:
            continue
    return False


def load(name: str, *, data_dir: Optional[str], manual_dir: Optional[str], in_memory: bool, image_size: int = 224,
         workers: Optional[int] = None):
    """(info, train, test) sources of a TFDS dataset with (input, label) supervised keys. Images of varying size
    are decoded and resized to `image_size` x `image_size` when read, by `workers` processes (bmjax.data.images)."""
    dataset_builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    info, x_key, y_key = _describe(name, dataset_builder, image_size)
    splits = set(dataset_builder.info.splits) or {"train", "test"}  # empty under tfds.testing.mock_data
    test_split = next((s for s in ("test", "validation") if s in splits), None)
    if "train" not in splits or test_split is None:
        raise UsageError(f"TFDS dataset {name} needs a train and a test (or validation) split, but has "
                         f"{', '.join(sorted(splits))}; choose another dataset")
    sources = []
    for split in ("train", test_split):
        if images.has_varying_size(dataset_builder.info.features[x_key]):  # read from disk, decoded on access
            sources.append(images.DecodedImages(dataset_builder, split, x_key, y_key, image_size,
                                                info.feature_shape[-1], workers))
        elif in_memory:
            sources.append(array_cache.read(dataset_builder, split, info.feature_shape,
                                            lambda split=split: TfdsSource(dataset_builder, split, x_key, y_key)))
        else:
            sources.append(TfdsSource(dataset_builder, split, x_key, y_key))
    return info, sources[0], sources[1]


def _describe(name: str, dataset_builder, image_size: int = 224) -> tuple[DatasetInfo, str, str]:
    """DatasetInfo from the builder's features; x must be a fixed-shape numeric array (or an image of any size,
    read as `image_size` x `image_size`), y a class or a number."""
    keys = dataset_builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise UsageError(f"TFDS dataset {name} has no (input, label) supervised keys; bmjax's supervised runner "
                         "needs a dataset that has them")
    x_key, y_key = keys
    x_feature, label = dataset_builder.info.features[x_key], dataset_builder.info.features[y_key]
    shape, dtype = tuple(getattr(x_feature, "shape", ())), np.dtype(getattr(x_feature, "np_dtype", object))
    if images.has_varying_size(x_feature):
        shape = (image_size, image_size, shape[-1] or 3)
    if dtype.kind not in "biuf" or None in shape:
        raise UsageError(f"TFDS dataset {name}'s input {x_key!r} is {type(x_feature).__name__} of shape {shape} "
                         f"and type {dtype}, not a fixed-shape numeric array; choose an image or numeric dataset")
    num_classes = getattr(label, "num_classes", None)
    if num_classes is None and (np.dtype(getattr(label, "np_dtype", object)).kind not in "biuf" or label.shape):
        raise UsageError(f"TFDS dataset {name}'s label {y_key!r} is neither a class nor a number; choose another "
                         "dataset")
    info = DatasetInfo(name=name, task="classification" if num_classes else "regression", feature_shape=shape,
                       num_classes=num_classes, class_names=tuple(label.names) if num_classes else None)
    return info, x_key, y_key


class TfdsSource(Source):
    """A split of a prepared TFDS dataset, decoded example by example on access.

    Images stay uint8; other features become float32, labels int32 (classes) or float32 (targets).
    """

    def __init__(self, dataset_builder, split: str, x_key: str, y_key: str):
        self.directory = dataset_builder.data_dir
        try:
            self.source = dataset_builder.as_data_source(split=split)
            self.length = len(self.source)
        except Exception as e:
            raise corrupt(self.directory, e) from None
        self.x_key, self.y_key = x_key, y_key

    def __len__(self):
        return self.length

    def __getitem__(self, indices):
        records = read_records(self.source, indices, self.directory)
        x = np.stack([r[self.x_key] for r in records]) if records else np.zeros((0,))
        y = np.asarray([r[self.y_key] for r in records])
        return {"x": x if x.dtype == np.uint8 else x.astype(np.float32),
                "y": y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)}

    def read_all(self, chunk: int = 10_000) -> ArraySource:
        """The whole split in memory, read in chunks into preallocated arrays."""
        first = self[np.arange(min(1, len(self)))]
        x = np.empty((len(self), *first["x"].shape[1:]), first["x"].dtype)
        y = np.empty((len(self),), first["y"].dtype)
        for start in range(0, len(self), chunk):
            part = self[np.arange(start, min(start + chunk, len(self)))]
            x[start:start + len(part["y"])], y[start:start + len(part["y"])] = part["x"], part["y"]
        return ArraySource(x, y)


def read_records(source, indices, directory: str) -> list:
    """The records of a TFDS data source at `indices`, in one batched read; a failed read names `directory`."""
    keys = [int(i) for i in np.asarray(indices).ravel()]
    try:
        try:
            return source.__getitems__(keys)
        except TypeError:  # tfds.testing.mock_data's sources read one key at a time
            return [source[k] for k in keys]
    except Exception as e:
        raise corrupt(directory, e) from None


def corrupt(directory: str, error: Exception) -> UsageError:
    return UsageError(f"the prepared data in {directory} cannot be read ({_first_line(error)}); delete that "
                      "folder and prepare the dataset again")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__

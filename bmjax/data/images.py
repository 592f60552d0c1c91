"""Image datasets whose pictures vary in size (ImageNet, imagenette): JPEGs decoded and resized on the host.

A split stays on disk; each batch's JPEGs are decoded, their shorter side resized to `size / CROP_FRACTION`
and the centre `size` x `size` cropped (the standard ImageNet evaluation transform) in a pool of worker
processes. Which examples a batch holds comes from the runner's data order (each process reads its own part
of each global batch), so reading is deterministic and resumes with the run; random crops, flips and mixing
happen on the device (`--augment`, `bmjax.data.augment`), keyed by the step.
"""

import io
import multiprocessing
import os
from concurrent import futures
from typing import Optional

import numpy as np

from bmjax.data.sources import Source
from bmjax.errors import UsageError

CROP_FRACTION = 0.875  # the centre crop's share of the resized shorter side (224 of 256)


def has_varying_size(feature) -> bool:
    """Whether a TFDS feature is an image without a fixed height and width."""
    import tensorflow_datasets as tfds

    return isinstance(feature, tfds.features.Image) and None in tuple(feature.shape[:2])


def decode(encoded: bytes, size: int, channels: int) -> np.ndarray:
    """An encoded image as uint8 [size, size, channels]: shorter side resized to size / CROP_FRACTION
    (bilinear, antialiased), then its centre cropped."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        image = image.convert("RGB" if channels == 3 else "L")
        width, height = image.size
        scale = size / CROP_FRACTION / min(width, height)
        resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                               Image.BILINEAR)
    left, top = (resized.size[0] - size) // 2, (resized.size[1] - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)), np.uint8)
    return array.reshape(size, size, channels)


class DecodedImages(Source):
    """A TFDS split of encoded images, decoded and resized to `size` x `size` when read."""

    def __init__(self, dataset_builder, split: str, x_key: str, y_key: str, size: int, channels: int,
                 workers: Optional[int] = None):
        import tensorflow_datasets as tfds

        from bmjax.data.tfds_source import corrupt

        self.directory, self.x_key, self.y_key = dataset_builder.data_dir, x_key, y_key
        self.size, self.channels = size, channels
        self.workers = workers or os.cpu_count() or 1
        try:
            self.source = dataset_builder.as_data_source(split=split, decoders={x_key: tfds.decode.SkipDecoding()})
            self.length = len(self.source)
        except Exception as e:
            raise corrupt(self.directory, e) from None
        self._pool = None

    def __len__(self):
        return self.length

    def _decoder(self):
        # Started on first use, from a fork server (forking a process whose JAX runtime has threads is unsafe)
        # that imports this module once for all its workers.
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._pool = futures.ProcessPoolExecutor(self.workers, context)
        return self._pool

    def __getitem__(self, indices):
        from bmjax.data.tfds_source import read_records

        records = read_records(self.source, indices, self.directory)
        encoded = [r[self.x_key] for r in records]
        chunk = max(1, len(encoded) // (4 * self.workers))
        try:
            images = list(self._decoder().map(decode, encoded, [self.size] * len(encoded),
                                              [self.channels] * len(encoded), chunksize=chunk))
        except futures.process.BrokenProcessPool as e:
            self._pool = None
            raise UsageError(f"the processes decoding images stopped ({e}); if memory is short, pass a smaller "
                             "--data_workers") from None
        except Exception as e:  # PIL's UnidentifiedImageError and the like, from a worker
            raise UsageError(f"an image in {self.directory} cannot be decoded ({type(e).__name__}: {e}); "
                             "delete that folder and prepare the dataset again") from None
        x = np.stack(images) if images else np.zeros((0, self.size, self.size, self.channels), np.uint8)
        return {"x": x, "y": np.asarray([r[self.y_key] for r in records]).astype(np.int32)}

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

"""The dataset types: random-access splits and what a model needs to know about them."""

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str  # "classification", "regression" or "language_model"
    feature_shape: tuple[int, ...]
    num_classes: Optional[int]  # None for regression; the vocabulary size of a language model
    class_names: Optional[tuple[str, ...]]


class Source:
    """One split with random access: `source[indices] -> {'x': [n, ...], 'y': [n]}`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, indices: np.ndarray) -> dict:
        raise NotImplementedError


class ArraySource(Source):
    """A split held in memory as numpy arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} features but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, indices):
        return {"x": self.x[indices], "y": self.y[indices]}

    def device_arrays(self) -> dict:
        """What the devices hold when the split lives there; `gather` reads batches from it."""
        return {"x": self.x, "y": self.y}

    @staticmethod
    def gather(arrays: dict, indices):
        """Rows `indices` as a batch, on the device (jittable)."""
        return {k: jnp.take(v, indices, axis=0) for k, v in arrays.items()}


class SubsetSource(Source):
    """Rows `rows` of another source, without copying."""

    def __init__(self, source: Source, rows: np.ndarray):
        self.source, self.rows = source, np.asarray(rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, indices):
        return self.source[self.rows[indices]]


class MappedSource(Source):
    """Another source whose features pass through `transform` on access."""

    def __init__(self, source: Source, transform: Callable[[np.ndarray], np.ndarray]):
        self.source, self.transform = source, transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, indices):
        batch = self.source[indices]
        return {**batch, "x": self.transform(batch["x"])}


@dataclasses.dataclass
class Dataset:
    info: DatasetInfo
    train: Source
    validation: Optional[Source]
    test: Source
    tokenizer: Optional[object] = None  # text datasets: turns strings into token ids and back

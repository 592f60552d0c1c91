"""The dataset types: random-access splits and what a model needs to know about them."""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

VALIDATION_SEED = 0  # fixed, not the run's seed: every run of a dataset holds out the same examples


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str  # "classification", "regression", "language_model", "masked_lm" or "seq2seq"
    feature_shape: tuple[int, ...]  # of one example's x; of its token ids where x is a dict of id arrays
    num_classes: Optional[int]  # None for regression; the vocabulary size where a model outputs tokens
    class_names: Optional[tuple[str, ...]]
    vocab_size: Optional[int] = None  # text: the tokenizer's vocabulary size


class Source:
    """One split with random access: `source[indices] -> {'x': [n, ...], 'y': [n]}`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, indices: np.ndarray) -> dict:
        raise NotImplementedError


class ArraySource(Source):
    """A split held in memory as numpy arrays; `x` may be a dict of arrays with one row per example."""

    def __init__(self, x, y: np.ndarray):
        lengths = {len(leaf) for leaf in jax.tree.leaves(x)}
        if lengths != {len(y)}:
            raise ValueError(f"{sorted(lengths)} feature rows but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, indices):
        return {"x": jax.tree.map(lambda leaf: leaf[indices], self.x), "y": self.y[indices]}

    def rows(self, indices: np.ndarray) -> "ArraySource":
        """A copy holding rows `indices` (of every leaf of x)."""
        return ArraySource(jax.tree.map(lambda leaf: leaf[indices], self.x), self.y[indices])

    def device_arrays(self) -> dict:
        """What the devices hold when the split lives there; `gather` reads batches from it."""
        return {"x": self.x, "y": self.y}

    @staticmethod
    def gather(arrays: dict, indices):
        """Rows `indices` as a batch, on the device (jittable)."""
        return jax.tree.map(lambda leaf: jnp.take(leaf, indices, axis=0), arrays)


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

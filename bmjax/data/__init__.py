"""Datasets: bmjax's own (no network needed) and TFDS's, as random-access splits."""

from bmjax.data.datasets import NAMES, load, prepare
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo, Source

__all__ = ["NAMES", "ArraySource", "Dataset", "DatasetInfo", "Source", "load", "prepare"]

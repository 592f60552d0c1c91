"""Datasets: bmjax's own (no network needed), TFDS's, and text sets, as random-access splits."""

from bmjax.data import audio, canvases, ratings  # noqa: F401  (each registers its datasets)
from bmjax.data.datasets import NAMES, DataSpec, load, prepare
from bmjax.data.registry import register
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo, Source
from bmjax.data.text import (CharTokenizer, SentencePieceTokenizer, load_tokenizer, mask_tokens, pack_sequences,
                             pad_sequences)

__all__ = ["NAMES", "ArraySource", "CharTokenizer", "DataSpec", "Dataset", "DatasetInfo", "SentencePieceTokenizer",
           "Source", "load", "load_tokenizer", "mask_tokens", "pack_sequences", "pad_sequences", "prepare", "register"]

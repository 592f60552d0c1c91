"""Text for language models: a character tokenizer and next-token windows over a token stream."""

import json
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bmjax.data.sources import Dataset, DatasetInfo, Source
from bmjax.errors import UsageError

TEXT_DATASETS = ("tiny_shakespeare",)


class CharTokenizer:
    """One token per character of the training text's alphabet."""

    def __init__(self, alphabet: str):
        self.alphabet = alphabet
        self.ids = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - set(self.ids))
        if unknown:
            raise UsageError(f"characters {''.join(unknown)!r} are not in the training text's alphabet; "
                             "use only characters the corpus has")
        return np.array([self.ids[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.alphabet[int(i)] for i in np.asarray(ids).ravel())

    def to_json(self) -> str:
        return json.dumps({"alphabet": self.alphabet})

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        return cls(json.loads(text)["alphabet"])


class WindowSource(Source):
    """Example i: tokens[i*stride : i*stride + length] as x, the same shifted by one as y."""

    def __init__(self, tokens: np.ndarray, length: int, stride: int = 1):
        if len(tokens) <= length:
            raise UsageError(f"a text of {len(tokens)} tokens has no window of {length + 1}; lower --block_size")
        self.tokens, self.length, self.stride = np.asarray(tokens, np.int32), length, stride

    def __len__(self):
        return (len(self.tokens) - self.length - 1) // self.stride + 1

    def __getitem__(self, indices):
        rows = np.asarray(indices)[:, None] * self.stride + np.arange(self.length + 1)
        windows = self.tokens[rows]
        return {"x": windows[:, :-1], "y": windows[:, 1:]}

    def device_arrays(self) -> dict:
        return {"tokens": self.tokens}

    def gather(self, arrays: dict, indices):
        """Windows cut on the device from the token stream it holds (jittable)."""
        cut = lambda start: jax.lax.dynamic_slice(arrays["tokens"], (start,), (self.length + 1,))
        windows = jax.vmap(cut)(jnp.asarray(indices) * self.stride)
        return {"x": windows[:, :-1], "y": windows[:, 1:]}


def load(name: str, *, block_size: Optional[int], data_dir: Optional[str], manual_dir: Optional[str]) -> Dataset:
    """A TFDS text dataset as windows: every one of train, non-overlapping ones to evaluate; with its tokenizer."""
    from bmjax.data import tfds_source

    if not block_size:
        raise UsageError(f"{name} is text: set --block_size, the tokens each example holds")
    dataset_builder = tfds_source.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    texts = {}
    for split in ("train", "validation", "test"):
        records = dataset_builder.as_data_source(split=split)
        texts[split] = "".join(r["text"].decode("utf-8") for r in (records[i] for i in range(len(records))))
    tokenizer = CharTokenizer.fit("".join(texts.values()))  # the corpus's alphabet, as nanoGPT builds it
    info = DatasetInfo(name, "language_model", (block_size,), tokenizer.vocab_size, None)
    windows = lambda split, stride: WindowSource(tokenizer.encode(texts[split]), block_size, stride)
    return Dataset(info, windows("train", 1), windows("validation", block_size), windows("test", block_size),
                   tokenizer)

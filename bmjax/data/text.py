"""Text for models: tokenizers, sequence padding and packing, MLM masking, and the task forms of a text set.

Tokenizers share one interface: `vocab_size`, `encode(text) -> int32 ids`,
`decode(ids) -> str`, `save(path)` (one file) and `load_tokenizer(path)`. Those
made for tasks with special tokens use one layout: pad=0, unk=1, bos=2, eos=3,
[CLS]=4, [SEP]=5, [MASK]=6, with attributes `pad_id, eos_id, cls_id, sep_id,
mask_id` and `special_ids`.

Task forms (`x`, `y`) built here from token ids:
- language_model: next-token windows over a token stream (`WindowSource`);
- classification: `[CLS] tokens [SEP]` padded to block_size, integer labels;
- masked_lm: `[CLS] tokens [SEP]` sequences packed into rows, {"tokens", "segment_ids"}, y = tokens;
- seq2seq: T5's text-to-text framing, {"inputs", "targets"}, y = targets.
"""

import io
import json
import os
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmjax import console
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo, Source
from bmjax.errors import UsageError

TEXT_DATASETS = ("tiny_shakespeare",)  # corpora read as one token stream per split
TOKENIZERS = ("char", "sentencepiece")  # or a path to a saved tokenizer file
TEXT_TASKS = ("auto", "language_model", "classification", "binary", "masked_lm", "seq2seq")

PAD_ID, UNK_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID, MASK_ID = range(7)
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]")


class _Specials:
    """The special-token ids shared by tokenizers made for classification, masked_lm and seq2seq."""

    pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID, MASK_ID
    special_ids = tuple(range(len(SPECIAL_PIECES)))


class CharTokenizer:
    """One token per character of the training text's alphabet; with `specials`, the special ids come first."""

    def __init__(self, alphabet: str, specials: bool = False):
        self.alphabet, self.specials = alphabet, specials
        self.offset = len(SPECIAL_PIECES) if specials else 0
        self.ids = {c: i + self.offset for i, c in enumerate(alphabet)}
        self.special_ids = _Specials.special_ids if specials else ()
        if specials:
            for name in ("pad_id", "unk_id", "bos_id", "eos_id", "cls_id", "sep_id", "mask_id"):
                setattr(self, name, getattr(_Specials, name))

    @classmethod
    def fit(cls, text: str, specials: bool = False) -> "CharTokenizer":
        return cls("".join(sorted(set(text))), specials)

    @property
    def vocab_size(self) -> int:
        return self.offset + len(self.alphabet)

    def encode(self, text: str) -> np.ndarray:
        if self.specials:  # characters outside the alphabet become <unk>
            return np.array([self.ids.get(c, UNK_ID) for c in text], np.int32)
        unknown = sorted(set(text) - set(self.ids))
        if unknown:
            raise UsageError(f"characters {''.join(unknown)!r} are not in the training text's alphabet; "
                             "use only characters the corpus has")
        return np.array([self.ids[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        pieces = []
        for i in np.asarray(ids).ravel():
            i = int(i)
            if i >= self.offset:
                pieces.append(self.alphabet[i - self.offset])
            elif i not in (PAD_ID, BOS_ID, EOS_ID):  # control tokens print as nothing, as in sentencepiece
                pieces.append(SPECIAL_PIECES[i])
        return "".join(pieces)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "alphabet": self.alphabet, "specials": self.specials})

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        spec = json.loads(text)
        return cls(spec["alphabet"], spec.get("specials", False))

    def save(self, path: str) -> None:
        _write(path, self.to_json().encode())


class WordTokenizer:
    """One token per word of a fixed vocabulary, after <pad> = 0: text is split on spaces (the captions of a
    generated set, whose every word is known in advance)."""

    pad_id = PAD_ID

    def __init__(self, words: Sequence[str]):
        self.words = tuple(words)
        self.ids = {word: i + 1 for i, word in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return 1 + len(self.words)

    def encode(self, text: str) -> np.ndarray:
        words = text.lower().split()
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise UsageError(f"unknown word{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; the captions "
                             f"use: {' '.join(self.words)}")
        return np.array([self.ids[w] for w in words], np.int32)

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i) - 1] for i in np.asarray(ids).ravel() if 0 < int(i) <= len(self.words))

    def save(self, path: str) -> None:
        _write(path, json.dumps({"type": "word", "words": list(self.words)}).encode())


class SentencePieceTokenizer(_Specials):
    """A sentencepiece unigram model trained offline on the training text; text round-trips exactly."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        pieces = tuple(self.processor.id_to_piece(i) for i in self.special_ids)
        if pieces != SPECIAL_PIECES:
            raise UsageError(f"this sentencepiece model's first pieces are {pieces}, not bmjax's {SPECIAL_PIECES}; "
                             "train the tokenizer with bmjax (--tokenizer=sentencepiece)")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "SentencePieceTokenizer":
        """Trained on `texts` (one sentence each, newlines inside split it further); deterministic.

        `vocab_size` is an upper bound: a small corpus yields the pieces it supports.
        """
        import sentencepiece as spm

        lines = [line for text in texts for line in text.split("\n") if line]
        if not lines:
            raise UsageError("there is no text to train a tokenizer on; check the dataset's training split")
        model = io.BytesIO()
        console.say(f"training a SentencePiece tokenizer of up to {vocab_size:,} pieces on {len(lines):,} lines")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, user_defined_symbols=["[CLS]", "[SEP]",
                                                                                                  "[MASK]", "\n"],
                hard_vocab_limit=False, character_coverage=1.0, remove_extra_whitespaces=False, num_threads=1,
                input_sentence_size=1_000_000, shuffle_input_sentence=False, minloglevel=2)
        except RuntimeError as e:
            raise UsageError(f"sentencepiece cannot train a vocabulary of {vocab_size} on this text "
                             f"({str(e).strip().splitlines()[-1]}); choose another --vocab_size") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.processor.encode(text), np.int32)

    def decode(self, ids) -> str:
        return self.processor.decode([int(i) for i in np.asarray(ids).ravel()])

    def save(self, path: str) -> None:
        _write(path, self.model_proto)


class HuggingFaceTokenizer:
    """A Hugging Face `tokenizer.json` (the `tokenizers` package); special ids looked up by their usual names."""

    NAMES = {"pad_id": ("[PAD]", "<pad>"), "unk_id": ("[UNK]", "<unk>"), "bos_id": ("<s>", "[BOS]"),
             "eos_id": ("</s>", "[EOS]", "[SEP]"), "cls_id": ("[CLS]", "<s>"), "sep_id": ("[SEP]", "</s>"),
             "mask_id": ("[MASK]", "<mask>")}

    def __init__(self, json_text: str):
        from tokenizers import Tokenizer

        self.json_text = json_text
        self.tokenizer = Tokenizer.from_str(json_text)
        for name, candidates in self.NAMES.items():
            setattr(self, name, next((self.tokenizer.token_to_id(c) for c in candidates
                                      if self.tokenizer.token_to_id(c) is not None), None))
        self.special_ids = tuple(sorted({getattr(self, n) for n in self.NAMES} - {None}))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).ravel()])

    def save(self, path: str) -> None:
        _write(path, self.json_text.encode())


def _write(path: str, content: bytes) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    except OSError as e:
        raise UsageError(f"cannot write the tokenizer to {path} ({e.strerror}); choose a writable path") from None


def load_tokenizer(path: str):
    """Any tokenizer `save` wrote, told apart by content: JSON (char or Hugging Face) or a sentencepiece model."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise UsageError(f"cannot read the tokenizer file {path} ({e.strerror}); pass a file a tokenizer's save "
                         "wrote, or --tokenizer=char|sentencepiece") from None
    if content.lstrip()[:1] == b"{":
        try:
            spec = json.loads(content)
        except ValueError:
            spec = None
        if isinstance(spec, dict) and "alphabet" in spec:
            return CharTokenizer.from_json(content.decode())
        if isinstance(spec, dict) and spec.get("type") == "word":
            return WordTokenizer(spec["words"])
        if isinstance(spec, dict) and "model" in spec:
            return HuggingFaceTokenizer(content.decode())
    else:
        try:
            return SentencePieceTokenizer(content)
        except UsageError:
            raise
        except Exception:  # sentencepiece's own error for bytes that are not a model
            pass
    raise UsageError(f"{path} is not a tokenizer file (a char or word tokenizer's JSON, a sentencepiece .model or a "
                     "Hugging Face tokenizer.json); pass another path or --tokenizer=char|sentencepiece")


def make_tokenizer(spec: Optional[str], texts: Sequence[str], *, default: str, vocab_size: int,
                   needs_specials: bool):
    """The tokenizer `spec` names (None takes `default`), trained on `texts` or read from a file."""
    spec = spec or default
    if spec == "char":
        return CharTokenizer.fit("".join(texts), specials=needs_specials)
    if spec == "sentencepiece":
        if vocab_size is None or vocab_size < 1:
            raise UsageError(f"--vocab_size must be a positive number of subwords, got {vocab_size}")
        return SentencePieceTokenizer.train(texts, vocab_size)
    if not os.path.exists(spec):
        raise UsageError(f"unknown tokenizer {spec!r}; choose one of {', '.join(TOKENIZERS)} or the path of a saved "
                         "tokenizer file")
    tokenizer = load_tokenizer(spec)
    missing = [n for n in ("pad_id", "cls_id", "sep_id", "mask_id", "eos_id") if getattr(tokenizer, n, None) is None]
    if needs_specials and missing:
        raise UsageError(f"the tokenizer in {spec} lacks {', '.join(missing)}, which this task needs; use "
                         "--tokenizer=sentencepiece or a tokenizer with [PAD], [CLS], [SEP], [MASK] and </s>")
    return tokenizer


# Sequences to fixed-shape arrays.

def pad_sequences(seqs: Sequence[Sequence[int]], length: int, pad_id: int = 0) -> np.ndarray:
    """int32 [n, length]: each sequence truncated to `length`, then padded with `pad_id`."""
    out = np.full((len(seqs), length), pad_id, np.int32)
    for row, seq in zip(out, seqs):
        seq = np.asarray(seq, np.int32)[:length]
        row[:len(seq)] = seq
    return out


def pack_sequences(seqs: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, segment_ids), int32 [rows, length]: sequences placed greedily, in order, into rows.

    A sequence goes into the current row if it fits, else it starts a new row; one longer than a row is split
    into row-sized pieces, each its own segment. Segments are numbered 1, 2, ... within a row; padding is 0.
    """
    if length < 1:
        raise UsageError(f"--block_size must be positive to pack sequences, got {length}")
    pieces = [np.asarray(seq[start:start + length], np.int32)
              for seq in seqs if len(seq) for start in range(0, len(seq), length)]
    rows, current, used = [], [], 0
    for piece in pieces:
        if used + len(piece) > length:
            rows.append(current)
            current, used = [], 0
        current.append(piece)
        used += len(piece)
    if current:
        rows.append(current)
    tokens = np.zeros((len(rows), length), np.int32)
    segment_ids = np.zeros((len(rows), length), np.int32)
    for r, row in enumerate(rows):
        start = 0
        for segment, piece in enumerate(row, 1):
            tokens[r, start:start + len(piece)] = piece
            segment_ids[r, start:start + len(piece)] = segment
            start += len(piece)
    return tokens, segment_ids


def mask_tokens(tokens, rng, *, vocab_size: int, mask_id: int, special_ids: Sequence[int], rate: float = 0.15):
    """BERT's masking (jittable with the keyword arguments fixed): (masked_tokens, weights float32).

    In each row, round(rate * candidates) positions are chosen, at least one where the row has any
    candidate (a token neither 0, the padding, nor special). A chosen position becomes [MASK] with
    probability 0.8, a random non-special token with 0.1, and stays with 0.1; `weights` is 1.0 there.
    """
    tokens = jnp.asarray(tokens)
    excluded = np.union1d(np.asarray(special_ids, np.int64), [0])
    ordinary = np.setdiff1d(np.arange(vocab_size), excluded).astype(np.int32)
    if ordinary.size == 0:
        raise UsageError(f"a vocabulary of {vocab_size} tokens has no non-special token to mask")
    choose_key, action_key, random_key = jax.random.split(rng, 3)
    candidate = ~jnp.isin(tokens, jnp.asarray(excluded, tokens.dtype))
    count = candidate.sum(axis=-1, keepdims=True)
    chosen_count = jnp.where(count > 0, jnp.maximum(1, jnp.round(rate * count)), 0)
    scores = jnp.where(candidate, jax.random.uniform(choose_key, tokens.shape), 2.0)  # candidates rank first
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    chosen = candidate & (rank < chosen_count)
    action = jax.random.uniform(action_key, tokens.shape)
    random_tokens = jnp.asarray(ordinary)[jax.random.randint(random_key, tokens.shape, 0, ordinary.size)]
    replaced = jnp.where(action < 0.8, jnp.asarray(mask_id, tokens.dtype),
                         jnp.where(action < 0.9, random_tokens.astype(tokens.dtype), tokens))
    return jnp.where(chosen, replaced, tokens), chosen.astype(jnp.float32)


# The task forms of token sequences.

def classification_arrays(token_seqs: Sequence[np.ndarray], tokenizer, block_size: int) -> np.ndarray:
    """int32 [n, block_size]: `[CLS] tokens [SEP]`, the tokens truncated to fit, padded with 0."""
    body = max(0, block_size - 2)
    return pad_sequences([np.concatenate([[tokenizer.cls_id], seq[:body], [tokenizer.sep_id]])[:block_size]
                          for seq in token_seqs], block_size, tokenizer.pad_id)


def masked_lm_source(token_seqs: Sequence[np.ndarray], tokenizer, block_size: int) -> ArraySource:
    """`[CLS] tokens [SEP]` sequences packed into rows: x = {"tokens", "segment_ids"}, y = tokens."""
    tokens, segment_ids = pack_sequences([np.concatenate([[tokenizer.cls_id], seq, [tokenizer.sep_id]])
                                          for seq in token_seqs], block_size)
    return ArraySource({"tokens": tokens, "segment_ids": segment_ids}, tokens)


def seq2seq_source(texts: Sequence[str], labels: np.ndarray, class_names: Sequence[str], prefix: str,
                   tokenizer, block_size: int) -> ArraySource:
    """Text to text, as T5 frames it: inputs "<prefix> <text></s>", targets "<class name></s>"; y = targets."""
    eos = [tokenizer.eos_id]
    inputs = pad_sequences([np.concatenate([tokenizer.encode(f"{prefix} {t}")[:block_size - 1], eos])
                            for t in texts], block_size, tokenizer.pad_id)
    names = [np.concatenate([tokenizer.encode(n), eos]) for n in class_names]
    targets = pad_sequences([names[label] for label in labels], max(len(n) for n in names), tokenizer.pad_id)
    return ArraySource({"inputs": inputs, "targets": targets}, targets)


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


def resolve_task(name: str, task: str, labelled: bool) -> str:
    """The task form of text set `name`: auto takes language_model for a corpus, classification for labels."""
    corpus = name in TEXT_DATASETS
    if task not in TEXT_TASKS:
        raise UsageError(f"unknown task {task!r} for the text dataset {name}; choose one of {', '.join(TEXT_TASKS)}")
    if task == "auto":
        return "language_model" if corpus else "classification" if labelled else "masked_lm"
    if task == "binary":
        task = "classification"
    allowed = ("language_model", "masked_lm") if corpus else \
        ("classification", "masked_lm", "seq2seq") if labelled else ("masked_lm",)
    if task not in allowed:
        raise UsageError(f"--task={task} does not fit {name}; it can be read for {', '.join(allowed)}")
    return task


def load(name: str, *, block_size: Optional[int], data_dir: Optional[str], manual_dir: Optional[str],
         task: str = "auto", tokenizer: Optional[str] = None, vocab_size: int = 8000) -> Dataset:
    """A TFDS corpus: next-token windows (every one of train, non-overlapping ones to evaluate), or for masked_lm
    non-overlapping windows as rows of one segment; with its tokenizer (characters unless asked otherwise)."""
    from bmjax.data import tfds_source

    task = resolve_task(name, task, labelled=False)
    if not block_size or block_size < 1:
        raise UsageError(f"{name} is text: set --block_size, the tokens each example holds")
    dataset_builder = tfds_source.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    texts = {}
    for split in ("train", "validation", "test"):
        records = dataset_builder.as_data_source(split=split)
        texts[split] = "".join(_text(r["text"]) for r in (records[i] for i in range(len(records))))
    if (tokenizer or "char") == "char":  # the whole corpus's alphabet, as nanoGPT builds it
        tokenizer = CharTokenizer.fit("".join(texts.values()), specials=task == "masked_lm")
    else:
        tokenizer = make_tokenizer(tokenizer, [texts["train"]], default="char", vocab_size=vocab_size,
                                   needs_specials=task == "masked_lm")
    tokens = {split: tokenizer.encode(text) for split, text in texts.items()}
    vocab = tokenizer.vocab_size
    if task == "masked_lm":
        info = DatasetInfo(name, "masked_lm", (block_size,), vocab, None, vocab)
        splits = [_window_rows(tokens[split], block_size) for split in ("train", "validation", "test")]
        return Dataset(info, *splits, tokenizer)
    info = DatasetInfo(name, "language_model", (block_size,), vocab, None, vocab)
    windows = lambda split, stride: WindowSource(tokens[split], block_size, stride)
    return Dataset(info, windows("train", 1), windows("validation", block_size), windows("test", block_size),
                   tokenizer)


def _window_rows(tokens: np.ndarray, block_size: int) -> ArraySource:
    """Non-overlapping windows of `block_size` as masked_lm rows, each one segment."""
    rows = len(tokens) // block_size
    if rows == 0:
        raise UsageError(f"a text of {len(tokens)} tokens has no row of {block_size}; lower --block_size")
    windows = np.asarray(tokens[:rows * block_size], np.int32).reshape(rows, block_size)
    return ArraySource({"tokens": windows, "segment_ids": np.ones_like(windows)}, windows)


def _text(value) -> str:
    """A TFDS Text value as str: prepared data holds bytes, tfds.testing.mock_data str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)

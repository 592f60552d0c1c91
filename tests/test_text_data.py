"""The text data layer: tokenizers, padding, packing, MLM masking, SST-2 and TFDS text sets in each task form."""

import functools
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import SHARED_DATA

from bmjax import data
from bmjax.data import datasets, sst2, text, tfds_source
from bmjax.data.text import (CharTokenizer, SentencePieceTokenizer, load_tokenizer, mask_tokens, pack_sequences,
                             pad_sequences)
from bmjax.errors import UsageError

SST2_RAW = SHARED_DATA / "sst2"
needs_sst2 = pytest.mark.skipif(not SST2_RAW.is_dir(), reason=f"genuine SST-2 files not found: {SST2_RAW}")
SPECIALS = dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3, cls_id=4, sep_id=5, mask_id=6)


def synthetic_corpus(sentences=400, seed=0) -> list[str]:
    """Sentences of made-up words, enough for a sentencepiece vocabulary of a few hundred pieces."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnop"), rng.integers(2, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words, rng.integers(3, 15))) for _ in range(sentences)]


@pytest.fixture(scope="module")
def sst2_by_task():
    if not SST2_RAW.is_dir():
        pytest.skip(f"genuine SST-2 files not found: {SST2_RAW}")
    return {task: data.load("sst2", manual_dir=str(SST2_RAW), block_size=48, task=task)
            for task in ("classification", "masked_lm", "seq2seq")}


# Tokenizers.

def test_char_tokenizer_with_specials_and_save_load(tmp_path):
    plain = CharTokenizer.fit("hello world")
    plain.save(str(tmp_path / "plain.json"))
    again = load_tokenizer(str(tmp_path / "plain.json"))
    assert isinstance(again, CharTokenizer) and again.alphabet == " dehlorw" and again.special_ids == ()
    np.testing.assert_array_equal(again.encode("low"), plain.encode("low"))
    assert CharTokenizer.from_json('{"alphabet": "ab"}').encode("ba").tolist() == [1, 0], "the old JSON still reads"

    special = CharTokenizer.fit("hello world", specials=True)
    assert special.vocab_size == 7 + 8 and special.special_ids == tuple(range(7))
    assert {k: getattr(special, k) for k in SPECIALS} == SPECIALS
    ids = special.encode("low!")
    assert ids.tolist() == [7 + 4, 7 + 5, 7 + 7, special.unk_id], "letters after the specials, '!' unknown"
    assert special.decode([special.cls_id, *special.encode("low"), special.sep_id, 0, 0]) == "[CLS]low[SEP]"
    special.save(str(tmp_path / "special.json"))
    assert load_tokenizer(str(tmp_path / "special.json")).encode("low!").tolist() == ids.tolist()


def test_sentencepiece_round_trip_save_load_and_determinism(tmp_path):
    corpus = synthetic_corpus()
    tokenizer = SentencePieceTokenizer.train(corpus, vocab_size=300)
    assert tokenizer.model_proto == SentencePieceTokenizer.train(corpus, vocab_size=300).model_proto, \
        "the same text and settings train the same model"
    assert tokenizer.model_proto != SentencePieceTokenizer.train(corpus, vocab_size=200).model_proto
    assert tokenizer.vocab_size == 300 and tokenizer.special_ids == tuple(range(7))
    assert {k: getattr(tokenizer, k) for k in SPECIALS} == SPECIALS
    sentence = "  " + corpus[0] + "\n" + corpus[1] + "  "
    ids = tokenizer.encode(sentence)
    assert ids.dtype == np.int32 and len(ids) < len(sentence) / 2, "subwords, not characters"
    assert tokenizer.decode(ids) == sentence, "spaces and newlines survive"
    assert tokenizer.decode([tokenizer.cls_id, *tokenizer.encode("ab"), tokenizer.eos_id, 0]) == "[CLS] ab"
    tokenizer.save(str(tmp_path / "sp.model"))
    loaded = load_tokenizer(str(tmp_path / "sp.model"))
    assert isinstance(loaded, SentencePieceTokenizer)
    np.testing.assert_array_equal(loaded.encode(sentence), ids)
    small = SentencePieceTokenizer.train(["ab cd", "ef gh"], vocab_size=8000)
    assert 7 < small.vocab_size < 50, "a tiny corpus gets the pieces it supports, not an error"


def test_hugging_face_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "good": 5, "film": 6}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert type(tokenizer).__name__ == "HuggingFaceTokenizer" and tokenizer.vocab_size == 7
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (0, 2, 3, 4)
    assert tokenizer.encode("good bad film").tolist() == [5, 1, 6]
    assert tokenizer.special_ids == (0, 1, 2, 3, 4)


def test_tokenizer_files_and_names_that_are_wrong(tmp_path):
    with pytest.raises(UsageError, match="cannot read the tokenizer file .*absent.model"):
        load_tokenizer(str(tmp_path / "absent.model"))
    (tmp_path / "junk.model").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(UsageError, match="junk.model is not a tokenizer file"):
        load_tokenizer(str(tmp_path / "junk.model"))
    with pytest.raises(UsageError, match="unknown tokenizer 'wordpiece'; choose one of char, sentencepiece"):
        text.make_tokenizer("wordpiece", ["a b"], default="sentencepiece", vocab_size=100, needs_specials=True)
    CharTokenizer.fit("ab").save(str(tmp_path / "plain.json"))
    with pytest.raises(UsageError, match="lacks pad_id, cls_id, sep_id, mask_id, eos_id"):
        text.make_tokenizer(str(tmp_path / "plain.json"), [], default="sentencepiece", vocab_size=100,
                            needs_specials=True)


# Padding, packing, masking.

def test_pad_sequences_truncates_and_pads():
    padded = pad_sequences([[5, 6, 7], [], [1, 2, 3, 4, 5, 6]], 4, pad_id=9)
    assert padded.dtype == np.int32
    assert padded.tolist() == [[5, 6, 7, 9], [9, 9, 9, 9], [1, 2, 3, 4]]


def test_pack_sequences_is_greedy_in_order_and_splits_long_ones():
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [22]]
    tokens, segments = pack_sequences(seqs, 5)
    assert tokens.dtype == np.int32 and segments.dtype == np.int32
    assert tokens.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [16, 17, 18, 19, 20],
                               [21, 22, 0, 0, 0]]
    assert segments.tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 2], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1],
                                 [1, 2, 0, 0, 0]]

    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 100, rng.integers(1, 40)) for _ in range(300)]
    tokens, segments = pack_sequences(seqs, 32)
    np.testing.assert_array_equal(tokens[segments > 0], np.concatenate(seqs)), "every token once, in order"
    assert np.all(tokens[segments == 0] == 0)
    for row in segments:  # segments numbered 1, 2, ... then padding, never interleaved
        used = row[row > 0]
        assert np.all(np.diff(used) >= 0) and used[0] == 1 and np.all(np.diff(np.unique(used)) == 1)
        assert np.all(row[len(used):] == 0)
    fits = [len(s) <= 32 for s in seqs]
    pieces = sum(1 for row in segments for _ in np.unique(row[row > 0]))
    assert pieces == sum(1 if fit else -(-len(s) // 32) for s, fit in zip(seqs, fits))


MASKING = dict(vocab_size=1000, mask_id=6, special_ids=tuple(range(7)))
masker = jax.jit(functools.partial(mask_tokens, **MASKING))


def test_mask_tokens_80_10_10_on_a_large_batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(7, 1000, (512, 128)).astype(np.int32)
    tokens[:, 0], tokens[:, 64] = 4, 5  # [CLS] and [SEP]
    tokens[:, 100:] = 0  # padding
    masked, weights = masker(tokens, jax.random.PRNGKey(0))
    masked, weights = np.asarray(masked), np.asarray(weights)
    assert weights.dtype == np.float32 and set(np.unique(weights)) == {0.0, 1.0}
    candidates = 98  # 100 positions less [CLS] and [SEP]
    assert np.all(weights.sum(1) == round(0.15 * candidates)), "15% of each row's candidates"
    assert not weights[:, [0, 64]].any() and not weights[:, 100:].any(), "specials and padding are never chosen"
    np.testing.assert_array_equal(masked[weights == 0], tokens[weights == 0])
    chosen_before, chosen_after = tokens[weights == 1], masked[weights == 1]
    n = len(chosen_after)
    to_mask, kept = np.mean(chosen_after == 6), np.mean(chosen_after == chosen_before)
    random = chosen_after[(chosen_after != 6) & (chosen_after != chosen_before)]
    tolerance = 4 * np.sqrt(0.1 * 0.9 / n)  # four standard errors of a 10% proportion
    assert abs(to_mask - 0.8) < 2 * tolerance and abs(kept - 0.1) < tolerance + 1 / 1000
    assert abs(len(random) / n - 0.1) < tolerance
    assert random.min() >= 7 and random.max() < 1000, "random replacements are ordinary tokens"
    expected_distinct = 993 * (1 - np.exp(-len(random) / 993))  # of uniform draws over the 993 ordinary tokens
    assert len(np.unique(random)) > 0.9 * expected_distinct, "spread over the vocabulary"


def test_mask_tokens_rows_and_determinism():
    tokens = np.zeros((512, 128), np.int32)  # the shape of the test above: one compilation serves both
    tokens[:4, :5] = [[4, 10, 5, 0, 0], [0, 0, 0, 0, 0], [4, 5, 0, 0, 0], [4, 11, 12, 13, 5]]
    tokens[4:] = np.random.default_rng(1).integers(7, 1000, (508, 128))
    masked, weights = masker(tokens, jax.random.PRNGKey(3))
    assert np.asarray(weights)[:4].sum(1).tolist() == [1, 0, 0, 1], "at least one where a row has a candidate"
    assert weights[0, 1] == 1
    again = masker(tokens, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(again[0], masked)
    np.testing.assert_array_equal(again[1], weights)
    assert not np.array_equal(weights, masker(tokens, jax.random.PRNGKey(4))[1])


# Sources holding dict features.

def test_array_source_with_dict_features_on_host_and_device():
    x = {"tokens": np.arange(20, dtype=np.int32).reshape(10, 2), "segment_ids": np.ones((10, 2), np.int32)}
    source = data.ArraySource(x, np.arange(10, dtype=np.int32))
    rows = np.array([7, 0, 7])
    host = source[rows]
    device = data.ArraySource.gather(source.device_arrays(), rows)
    assert len(source) == 10 and host["x"]["tokens"].tolist() == [[14, 15], [0, 1], [14, 15]]
    np.testing.assert_array_equal(device["x"]["tokens"], host["x"]["tokens"])
    np.testing.assert_array_equal(device["y"], host["y"])
    rest, held = datasets.carve_validation(source, 0.3)
    assert (len(rest), len(held)) == (7, 3) and isinstance(held, data.ArraySource)
    np.testing.assert_array_equal(held.x["tokens"][:, 0] // 2, held.y), "rows stay together"
    with pytest.raises(ValueError, match="feature rows but 9 labels"):
        data.ArraySource(x, np.arange(9))


# SST-2 from the genuine files.

@needs_sst2
def test_sst2_classification_from_the_genuine_files(sst2_by_task):
    dataset = sst2_by_task["classification"]
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (6920, 872, 1821)
    info = dataset.info
    assert info.task == "classification" and info.num_classes == 2 and info.class_names == ("negative", "positive")
    assert info.feature_shape == (48,) and info.vocab_size == dataset.tokenizer.vocab_size == 8000
    for split in (dataset.train, dataset.validation, dataset.test):
        assert split.x.shape == (len(split), 48) and split.x.dtype == np.int32 and split.y.dtype == np.int32
        assert set(np.unique(split.y)) == {0, 1}, "both classes"
        assert np.all(split.x[:, 0] == dataset.tokenizer.cls_id) and np.all(split.x.max(1) < 8000)
    assert np.bincount(dataset.train.y).tolist() == [3310, 3610]
    first_line = (SST2_RAW / "stsa.binary.train").read_text().splitlines()[0]
    assert dataset.train.y[0] == int(first_line[0])
    row = dataset.train.x[0]
    assert dataset.tokenizer.decode(row) == f"[CLS] {first_line[2:]}[SEP]" and row[-1] == 0
    full_rows = np.sum(dataset.train.x[:, -1] != 0)
    assert 0 < full_rows < 6920 / 5, "long sentences fill the block, ending in a truncated one; most are padded"
    assert np.all(dataset.train.x[dataset.train.x[:, -1] != 0, -1] == dataset.tokenizer.sep_id)


@needs_sst2
def test_sst2_masked_lm_packs_sentences_and_shares_the_tokenizer(sst2_by_task):
    dataset, classification = sst2_by_task["masked_lm"], sst2_by_task["classification"]
    assert dataset.tokenizer.model_proto == classification.tokenizer.model_proto, "one vocabulary for both"
    assert dataset.info.task == "masked_lm" and dataset.info.num_classes == dataset.info.vocab_size == 8000
    tokens, segments = dataset.train.x["tokens"], dataset.train.x["segment_ids"]
    assert tokens.shape == segments.shape == (len(dataset.train), 48) and tokens.dtype == segments.dtype == np.int32
    np.testing.assert_array_equal(dataset.train.y, tokens)
    cls, sep = dataset.tokenizer.cls_id, dataset.tokenizer.sep_id
    assert np.sum(tokens == cls) == 6920, "one [CLS] per training sentence"
    assert len(dataset.train) < 6920 * 0.9, "short sentences share rows"
    assert np.all((tokens == 0) == (segments == 0))
    starts = np.diff(segments, axis=1, prepend=0) != 0
    lines = (SST2_RAW / "stsa.binary.train").read_text().splitlines()
    lengths = np.array([len(dataset.tokenizer.encode(line[2:])) + 2 for line in lines])  # with [CLS] and [SEP]
    assert np.sum(starts & (segments > 0)) == np.sum(-(-lengths // 48)), "a sentence longer than a row is split"
    assert np.sum(tokens[starts & (segments > 0)] == cls) == 6920, "each sentence's first piece starts with [CLS]"
    assert np.sum(tokens == sep) == 6920
    masked, weights = mask_tokens(tokens[:64], jax.random.PRNGKey(0), vocab_size=dataset.info.vocab_size,
                                  mask_id=dataset.tokenizer.mask_id, special_ids=dataset.tokenizer.special_ids)
    assert not np.asarray(weights)[np.isin(tokens[:64], (0, cls, sep))].any()
    assert len(dataset.test) < 1821 and np.sum(dataset.test.x["tokens"] == cls) == 1821


@needs_sst2
def test_sst2_as_text_to_text(sst2_by_task):
    dataset = sst2_by_task["seq2seq"]
    tokenizer = dataset.tokenizer
    assert dataset.info.task == "seq2seq" and dataset.info.class_names == ("negative", "positive")
    inputs, targets = dataset.test.x["inputs"], dataset.test.x["targets"]
    assert inputs.shape == (1821, 48) and inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(dataset.test.y, targets)
    assert targets.shape[1] == max(len(tokenizer.encode(n)) + 1 for n in ("negative", "positive"))
    assert [tokenizer.decode(t) for t in targets[:4]] == [("negative", "positive")[int(line[0])] for line in
                                                          (SST2_RAW / "stsa.binary.test").read_text().splitlines()[:4]]
    assert np.all(np.sum(targets == tokenizer.eos_id, axis=1) == 1) and np.all(np.sum(inputs == 3, axis=1) == 1)
    first = (SST2_RAW / "stsa.binary.test").read_text().splitlines()[0][2:]
    assert tokenizer.decode(inputs[0]).startswith("sst2 sentence: " + first[:20])


@needs_sst2
def test_sst2_errors_are_usage_errors(tmp_path):
    (tmp_path / "stsa.binary.train").write_text("1 fine\n")
    with pytest.raises(UsageError, match=f"--manual_dir={tmp_path} lacks stsa.binary.dev, stsa.binary.test;"):
        data.load("sst2", manual_dir=str(tmp_path), block_size=16)
    (tmp_path / "stsa.binary.dev").write_text("1 fine\n")
    (tmp_path / "stsa.binary.test").write_text("positive fine\n")
    with pytest.raises(UsageError, match="stsa.binary.test:1 is not `0 sentence` or `1 sentence`"):
        data.load("sst2", manual_dir=str(tmp_path), block_size=16)
    with pytest.raises(UsageError, match="unknown tokenizer 'bpe'; choose one of char, sentencepiece"):
        data.load("sst2", manual_dir=str(SST2_RAW), block_size=16, tokenizer="bpe")
    with pytest.raises(UsageError, match="set --block_size"):
        data.load("sst2", manual_dir=str(SST2_RAW))
    with pytest.raises(UsageError, match="--task=language_model does not fit sst2"):
        data.load("sst2", manual_dir=str(SST2_RAW), block_size=16, task="language_model")
    with pytest.raises(UsageError, match="SST-2 has its own validation split"):
        data.load("sst2", manual_dir=str(SST2_RAW), block_size=16, validation_split=0.1)
    with pytest.raises(UsageError, match="--task=masked_lm needs a text dataset, and iris is not one"):
        data.load("iris", task="masked_lm")


def test_sst2_offline_without_files_fails_fast(tmp_path):
    if tfds_source._any_host_reachable([]):
        pytest.skip("this machine reaches TFDS's storage; the offline failure cannot be shown")
    started = time.time()
    with pytest.raises(UsageError, match="sst2 needs its raw files: pass --manual_dir=DIR holding stsa.binary"):
        data.load("sst2", data_dir=str(tmp_path), block_size=16)
    assert time.time() - started < 15


# TFDS text sets through tfds.testing.mock_data.

def test_glue_sst2_through_tfds_tests_on_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: True)  # as if online
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        dataset = data.load("sst2", data_dir=str(tmp_path), block_size=24, tokenizer="char")
        mlm = data.load("glue/sst2", data_dir=str(tmp_path), block_size=24, task="masked_lm", vocab_size=60)
    assert dataset.info.name == "sst2" and dataset.info.class_names == ("negative", "positive")
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (36, 4, 40), \
        "the validation split is the test; a tenth of train is held out"
    assert isinstance(dataset.tokenizer, CharTokenizer) and dataset.tokenizer.special_ids == tuple(range(7))
    assert dataset.train.x.shape == (36, 24) and np.all(dataset.train.x[:, 0] == 4)
    assert mlm.info.task == "masked_lm" and mlm.info.vocab_size <= 60 and mlm.train.x["tokens"].shape[1] == 24
    assert isinstance(mlm.tokenizer, SentencePieceTokenizer)


def test_unprepared_glue_offline_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_any_host_reachable", lambda urls: False)
    with pytest.raises(UsageError, match="sst2 needs its raw files: pass --manual_dir=DIR"):
        data.load("sst2", data_dir=str(tmp_path), block_size=16)
    assert sst2.FILES["validation"] == "stsa.binary.dev"


# Tiny Shakespeare in its other forms.

def test_tiny_shakespeare_masked_lm_and_subwords(shakespeare_dir):
    windows = data.load("tiny_shakespeare", data_dir=shakespeare_dir, block_size=64, task="masked_lm")
    assert windows.info.task == "masked_lm" and isinstance(windows.tokenizer, CharTokenizer)
    assert windows.info.vocab_size == 65 + 7 and windows.tokenizer.mask_id == 6
    tokens = windows.train.x["tokens"]
    assert tokens.shape[1] == 64 and np.all(windows.train.x["segment_ids"] == 1)
    assert windows.tokenizer.decode(np.concatenate(tokens[:2])).startswith("First Citizen:\nBefore we proceed")
    characters = data.load("tiny_shakespeare", data_dir=shakespeare_dir, block_size=64)
    assert len(windows.train) == len(characters.train.tokens) // 64, "non-overlapping windows"
    np.testing.assert_array_equal(tokens[1], characters.train.tokens[64:128] + 7)
    lm = data.load("tiny_shakespeare", data_dir=shakespeare_dir, block_size=32, tokenizer="sentencepiece",
                   vocab_size=500)
    assert lm.info.task == "language_model" and lm.info.num_classes == lm.info.vocab_size == 500
    batch = lm.train[np.array([0])]
    np.testing.assert_array_equal(batch["x"][0, 1:], batch["y"][0, :-1])
    assert lm.tokenizer.decode(batch["x"][0]).startswith("First Citizen:\nBefore")
    assert len(lm.train) < 1_003_854 / 2, "subwords: fewer windows than characters"

"""Labelled sentence sets: SST-2 from its raw files (or TFDS's glue/sst2), and any TFDS dataset with a Text feature.

Reading gives raw texts and labels per split (`TextSplits`); `build` trains or
reads the tokenizer on the training texts and turns every split into the form
the task asks for (see `bmjax.data.text`).
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from bmjax.data import text
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo, VALIDATION_SEED
from bmjax.errors import UsageError

NAME = "sst2"
FILES = {"train": "stsa.binary.train", "validation": "stsa.binary.dev", "test": "stsa.binary.test"}
CLASS_NAMES = ("negative", "positive")
TFDS_NAME = "glue/sst2"  # online fallback: its test labels are hidden, so its validation split is the test

MAX_CARVED = 0.1  # the largest fraction of train held out by default where the validation split becomes the test
Texts = tuple[list[str], Optional[np.ndarray]]  # (texts, int labels or None for label-free text)


@dataclasses.dataclass
class TextSplits:
    name: str
    train: Texts
    validation: Optional[Texts]
    test: Texts
    class_names: Optional[tuple[str, ...]]  # None: no labels


def load(name: str, *, data_dir: Optional[str], manual_dir: Optional[str], validation_split: Optional[float],
         task: str, tokenizer: Optional[str], vocab_size: int, block_size: Optional[int]) -> Dataset:
    """SST-2 (`name` "sst2") or a TFDS text dataset, in the form `task` asks for."""
    if name == NAME:
        splits = read_sst2(data_dir=data_dir, manual_dir=manual_dir, validation_split=validation_split)
    else:
        splits = read_tfds(name, data_dir=data_dir, manual_dir=manual_dir, validation_split=validation_split)
    return build(splits, task=task, tokenizer=tokenizer, vocab_size=vocab_size, block_size=block_size)


def read_sst2(*, data_dir: Optional[str], manual_dir: Optional[str],
              validation_split: Optional[float]) -> TextSplits:
    """SST-2 from `manual_dir`'s stsa.binary.{train,dev,test} (6920 / 872 / 1821), else from TFDS when online."""
    if manual_dir is None:
        splits = _read_sst2_tfds(data_dir, validation_split)
        return dataclasses.replace(splits, name=NAME)
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(manual_dir, f))]
    if missing:
        raise UsageError(f"--manual_dir={manual_dir} lacks {', '.join(missing)}; put SST-2's "
                         f"{', '.join(FILES.values())} there (`label sentence` per line)")
    if validation_split is not None:
        raise UsageError(f"SST-2 has its own validation split ({FILES['validation']}); drop --validation_split")
    read = {split: _read_labelled_lines(os.path.join(manual_dir, file)) for split, file in FILES.items()}
    return TextSplits(NAME, read["train"], read["validation"], read["test"], CLASS_NAMES)


def _read_labelled_lines(path: str) -> Texts:
    """`label text` per line, the label 0 (negative) or 1 (positive)."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            label, _, sentence = line.rstrip("\n").partition(" ")
            if label not in ("0", "1") or not sentence:
                raise UsageError(f"{path}:{number} is not `0 sentence` or `1 sentence`; get SST-2's file again")
            texts.append(sentence)
            labels.append(int(label))
    return texts, np.asarray(labels, np.int32)


def _read_sst2_tfds(data_dir: Optional[str], validation_split: Optional[float]) -> TextSplits:
    """glue/sst2 from TFDS; offline and unprepared, fails at once naming --manual_dir."""
    from bmjax.data import tfds_source

    dataset_builder = tfds_source.builder(TFDS_NAME, data_dir)
    if not dataset_builder.is_prepared() and \
            not tfds_source._any_host_reachable(list(dataset_builder.url_infos or {})):
        raise UsageError(f"sst2 needs its raw files: pass --manual_dir=DIR holding {', '.join(FILES.values())} "
                         f"(`label sentence` per line), or run where TFDS can download {TFDS_NAME}")
    return read_tfds(TFDS_NAME, data_dir=data_dir, manual_dir=None, validation_split=validation_split)


def is_text_dataset(dataset_builder) -> bool:
    """Whether a TFDS dataset's input is text (then `read_tfds` reads it): its supervised input where it names
    one (CIFAR-10 also holds a Text `id`, beside its image), else any Text feature."""
    import tensorflow_datasets as tfds

    features, keys = dataset_builder.info.features, dataset_builder.info.supervised_keys
    if keys and len(keys) == 2 and isinstance(keys[0], str) and keys[0] in features:
        return isinstance(features[keys[0]], tfds.features.Text)
    return any(isinstance(f, tfds.features.Text) for f in features.values())


def read_tfds(name: str, *, data_dir: Optional[str], manual_dir: Optional[str],
              validation_split: Optional[float]) -> TextSplits:
    """A TFDS text dataset: its one Text feature, with its ClassLabel where it has one.

    Where the test labels are hidden (GLUE), the validation split is the test and a validation split as large
    is carved from train (at most a tenth of it; or --validation_split of it).
    """
    from bmjax.data import tfds_source

    dataset_builder = tfds_source.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    text_key, label_key = _text_and_label_keys(name, dataset_builder)
    glue = name.startswith("glue/")
    splits = set(dataset_builder.info.splits) or ({"train", "validation", "test"} if glue else {"train", "test"})
    if "train" not in splits or not splits & {"test", "validation"}:
        raise UsageError(f"TFDS dataset {name} needs a train and a test (or validation) split, but has "
                         f"{', '.join(sorted(splits))}; choose another dataset")
    read = lambda split: _read_tfds_split(dataset_builder, split, text_key, label_key)
    train = read("train")
    test = read("test") if "test" in splits else None
    validation = read("validation") if "validation" in splits else None
    hidden = test is not None and label_key is not None and (glue or bool(np.all(test[1] < 0)))
    if hidden and validation is None:
        raise UsageError(f"TFDS dataset {name} hides its test labels and has no validation split to test on; "
                         "choose another dataset")
    if test is None or hidden:  # the validation split becomes the test
        fraction = validation_split or min(MAX_CARVED, len(validation[0]) / len(train[0]))
        test, (train, validation) = validation, _carve(train, fraction)
    elif validation is not None:
        if validation_split is not None:
            raise UsageError(f"TFDS dataset {name} has its own validation split; drop --validation_split")
    elif validation_split is not None:
        train, validation = _carve(train, validation_split)
    class_names = tuple(dataset_builder.info.features[label_key].names) if label_key else None
    return TextSplits(name, train, validation, test, class_names)


def _text_and_label_keys(name: str, dataset_builder) -> tuple[str, Optional[str]]:
    """The supervised keys where they are (Text, ClassLabel); else the only Text and the only ClassLabel feature."""
    import tensorflow_datasets as tfds

    features = dataset_builder.info.features
    keys = dataset_builder.info.supervised_keys
    kinds = (tfds.features.Text, tfds.features.ClassLabel)
    if keys and len(keys) == 2 and all(isinstance(k, str) and k in features for k in keys) and \
            all(isinstance(features[k], kind) for k, kind in zip(keys, kinds)):
        return keys[0], keys[1]
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if len(texts) != 1 or len(labels) > 1:
        raise UsageError(f"TFDS dataset {name} has Text features {texts} and class labels {labels}; bmjax reads "
                         "text sets with one Text feature and at most one ClassLabel: choose another dataset")
    return texts[0], (labels[0] if labels else None)


def _read_tfds_split(dataset_builder, split: str, text_key: str, label_key: Optional[str],
                     chunk: int = 10_000) -> Texts:
    from bmjax.data.tfds_source import corrupt

    try:
        records = dataset_builder.as_data_source(split=split)
        texts, labels = [], []
        for start in range(0, len(records), chunk):
            keys = list(range(start, min(start + chunk, len(records))))
            try:
                batch = records.__getitems__(keys)  # one batched read
            except TypeError:  # tfds.testing.mock_data's sources read one key at a time
                batch = [records[k] for k in keys]
            texts.extend(text._text(r[text_key]) for r in batch)
            if label_key:
                labels.extend(int(r[label_key]) for r in batch)
    except UsageError:
        raise
    except Exception as e:
        raise corrupt(dataset_builder.data_dir, e) from None
    return texts, (np.asarray(labels, np.int32) if label_key else None)


def _carve(train: Texts, fraction: float) -> tuple[Texts, Texts]:
    """(rest of train, validation): a fixed random `fraction` held out, each in original order."""
    texts, labels = train
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(texts))
    held_out = int(round(fraction * len(texts)))
    if held_out == 0 or held_out == len(texts):
        raise UsageError(f"--validation_split={fraction} leaves no examples on one side of the {len(texts)} "
                         "training examples; choose a fraction nearer 0.5")
    pick = lambda rows: ([texts[i] for i in rows], None if labels is None else labels[rows])
    return pick(np.sort(order[held_out:])), pick(np.sort(order[:held_out]))


def text_to_text_prefix(name: str) -> str:
    """What text-to-text inputs start with, as T5 frames GLUE: "sst2 sentence: <text>"."""
    return f"{name.split('/')[-1]} sentence:"


def build(splits: TextSplits, *, task: str, tokenizer: Optional[str], vocab_size: int,
          block_size: Optional[int]) -> Dataset:
    """Each split in the form of `task`, with a tokenizer trained on (or read for) the training texts.

    The tokenizer's training text is the same whatever the task (train sentences, the seq2seq prefix and the
    class names), so masked_lm pretraining and classification fine-tuning share one vocabulary.
    """
    labelled = splits.class_names is not None
    task = text.resolve_task(splits.name, task, labelled)
    if not block_size or block_size < 1:
        raise UsageError(f"{splits.name} is text: set --block_size, the tokens each example holds")
    prefix = text_to_text_prefix(splits.name)
    corpus = list(splits.train[0]) + ([prefix, *splits.class_names] if labelled else [])
    tokenizer = text.make_tokenizer(tokenizer, corpus, default="sentencepiece", vocab_size=vocab_size,
                                    needs_specials=True)

    def form(texts, labels):
        if task == "seq2seq":
            return text.seq2seq_source(texts, labels, splits.class_names, prefix, tokenizer, block_size)
        token_seqs = [tokenizer.encode(t) for t in texts]
        if task == "masked_lm":
            return text.masked_lm_source(token_seqs, tokenizer, block_size)
        return ArraySource(text.classification_arrays(token_seqs, tokenizer, block_size), labels)

    vocab = tokenizer.vocab_size
    if task == "classification":
        info = DatasetInfo(splits.name, task, (block_size,), len(splits.class_names), splits.class_names, vocab)
    else:
        class_names = splits.class_names if task == "seq2seq" else None
        info = DatasetInfo(splits.name, task, (block_size,), vocab, class_names, vocab)
    validation = form(*splits.validation) if splits.validation is not None else None
    return Dataset(info, form(*splits.train), validation, form(*splits.test), tokenizer)

"""`load(spec)`: bmjax's own datasets (no network needed) or any TFDS dataset, split and preprocessed."""

import dataclasses
from typing import Any, Optional, Union

import numpy as np

from bmjax.data import local, preprocess, registry, sst2, text, tfds_source
from bmjax.data.local import NAMES
from bmjax.data.sources import VALIDATION_SEED, ArraySource, Dataset, MappedSource, Source, SubsetSource
from bmjax.errors import UsageError

TEXT_ONLY_TASKS = ("language_model", "masked_lm", "seq2seq")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which dataset `load` reads, and in what form."""

    name: str
    data_dir: Optional[str] = None  # TFDS's data directory (default: its own)
    manual_dir: Optional[str] = None  # raw files to prepare a TFDS dataset from offline
    validation_split: Optional[float] = None  # a fixed fraction of the training split held out
    normalize: str = "none"  # feature scaling fitted on the training split: none, minmax, standardize
    synthetic_examples: int = 1000
    synthetic_features: int = 10
    synthetic_classes: int = 2
    in_memory: bool = True  # TFDS splits decoded into memory (else read on access)
    block_size: Optional[int] = None  # tokens per text example
    task: str = "auto"  # the form of a text set: language_model, masked_lm, seq2seq or classification
    tokenizer: Optional[str] = None  # char, sentencepiece, or a saved tokenizer's path
    vocab_size: int = 8000  # pieces of a trained subword tokenizer
    image_size: int = 224  # the side images of varying size (ImageNet) are resized and cropped to
    data_workers: Optional[int] = None  # processes decoding those images (None: one per CPU core)
    config: Any = None  # the run's config, for the settings of a registered dataset (bmjax.data.registry)

    @classmethod
    def of(cls, config, **overrides) -> "DataSpec":
        """The spec a run's config describes (`--dataset` and the data flags)."""
        return cls(name=config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                   validation_split=config.validation_split, normalize=config.normalize,
                   synthetic_examples=config.synthetic_examples, synthetic_features=config.synthetic_features,
                   synthetic_classes=config.synthetic_classes, block_size=config.block_size, task=config.task,
                   tokenizer=config.tokenizer, vocab_size=config.vocab_size, image_size=config.image_size,
                   data_workers=config.data_workers or None, config=config).replace(**overrides)

    def replace(self, **changes) -> "DataSpec":
        return dataclasses.replace(self, **changes)


def load(spec: Union[DataSpec, str], **options) -> Dataset:
    """The dataset `spec` names (or `DataSpec(name=spec, **options)`), with train/validation/test splits;
    normalisation fitted on train alone.

    Text sets (tiny_shakespeare, sst2, any TFDS dataset with a Text feature) come in the form `task` asks
    for, tokenized by `tokenizer` ("char", "sentencepiece" with up to `vocab_size` pieces, or a saved file's
    path; None takes char for a corpus, sentencepiece for sentences), `block_size` tokens an example. Splits
    are fixed per dataset, whatever the run's seed.
    """
    spec = DataSpec(name=spec, **options) if isinstance(spec, str) else spec.replace(**options)
    name, data_dir, manual_dir, task = spec.name, spec.data_dir, spec.manual_dir, spec.task
    normalize, validation_split, tokenizer = spec.normalize, spec.validation_split, spec.tokenizer
    if normalize not in preprocess.NORMALIZATIONS:
        raise UsageError(f"unknown normalization {normalize!r}; choose one of: "
                         f"{', '.join(preprocess.NORMALIZATIONS)}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise UsageError(f"--validation_split must lie in (0, 1), got {validation_split}; e.g. 0.1 holds out "
                         "a tenth of the training split")
    if name in registry.REGISTRY:
        return registry.REGISTRY[name](spec)
    if name in text.TEXT_DATASETS:  # windows of `block_size`; the splits are the corpus's own
        return text.load(name, block_size=spec.block_size, data_dir=data_dir, manual_dir=manual_dir, task=task,
                         tokenizer=tokenizer, vocab_size=spec.vocab_size)
    text_options = dict(data_dir=data_dir, manual_dir=manual_dir, validation_split=validation_split, task=task,
                        tokenizer=tokenizer, vocab_size=spec.vocab_size, block_size=spec.block_size)
    if name == sst2.NAME:
        return sst2.load(name, **text_options)
    if name not in NAMES and sst2.is_text_dataset(tfds_source.builder(name, data_dir)):
        return sst2.load(name, **text_options)
    if task in TEXT_ONLY_TASKS or tokenizer is not None:
        what = f"--task={task}" if task in TEXT_ONLY_TASKS else "--tokenizer"
        raise UsageError(f"{what} needs a text dataset, and {name} is not one; use tiny_shakespeare, sst2 or a "
                         "TFDS dataset with a Text feature")
    if name in NAMES:
        info, train, test = local.load(name, data_dir=data_dir, synthetic_examples=spec.synthetic_examples,
                                       synthetic_features=spec.synthetic_features,
                                       synthetic_classes=spec.synthetic_classes)
    else:
        info, train, test = tfds_source.load(name, data_dir=data_dir, manual_dir=manual_dir,
                                             in_memory=spec.in_memory, image_size=spec.image_size,
                                             workers=spec.data_workers)

    validation = None
    if validation_split is not None:
        train, validation = carve_validation(train, validation_split)
    if normalize != "none":
        train, validation, test = _normalize(normalize, train, validation, test)
    return Dataset(info, train, validation, test)


def prepare(name: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None) -> str:
    """Prepares TFDS dataset `name` (offline from `manual_dir` if given); returns the folder it is in."""
    if name in NAMES:
        raise UsageError(f"{name} is one of bmjax's own datasets and needs no preparation; load it directly")
    if name == sst2.NAME:
        raise UsageError(f"sst2 is read directly from --manual_dir=DIR holding {', '.join(sst2.FILES.values())} "
                         "and needs no preparation; load it directly")
    return tfds_source.prepare(name, data_dir=data_dir, manual_dir=manual_dir).data_dir


def carve_validation(train: Source, fraction: float) -> tuple[Source, Source]:
    """(rest of train, validation): a fixed random `fraction` of `train` held out, each in original order."""
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(train))
    held_out = int(round(fraction * len(train)))
    if held_out == 0 or held_out == len(train):
        raise UsageError(f"--validation_split={fraction} leaves no examples on one side of the {len(train)} "
                         "training examples; choose a fraction nearer 0.5")
    return _subset(train, np.sort(order[held_out:])), _subset(train, np.sort(order[:held_out]))


def _subset(source: Source, rows: np.ndarray) -> Source:
    if isinstance(source, ArraySource):  # a copy keeps the in-memory fast path
        return source.rows(rows)
    return SubsetSource(source, rows)  # an index remap: nothing read


def _normalize(method: str, train: Source, validation: Optional[Source], test: Source):
    """Float features scaled with statistics of `train`; uint8 images are left as they are."""
    train_x = train.x if isinstance(train, ArraySource) else train[np.arange(len(train))]["x"]
    if not np.issubdtype(train_x.dtype, np.floating):
        return train, validation, test
    normalizer = preprocess.fit_normalizer(train_x, method)

    def scaled(source):
        if source is None:
            return None
        if isinstance(source, ArraySource):
            return ArraySource(preprocess.apply_normalizer(source.x, normalizer), source.y)
        return MappedSource(source, lambda x: preprocess.apply_normalizer(x, normalizer))

    return scaled(train), scaled(validation), scaled(test)

"""Two images on one canvas with a caption that says which is where: the data of text-to-image.

`mnist_pairs`, `fashion_mnist_pairs` and `digits_pairs` place two images of their base dataset side by side
(`--layout=row`, 28x56 for MNIST, captions such as "three left of five" or "five right of three") or one above the
other (`--layout=column`, 56x28, "a sandal above a bag", "a bag below a sandal"). The caption names both classes
and their relation, in either order, so that the words and not a class label alone say what to draw.

Each split's canvases come from the same split of the base dataset (its --validation_split too), drawn with a
seed of their own: every run reads the same canvases. Some pairs of classes never meet in training (`HELD_OUT`, in
either order and relation); the validation and test splits hold canvases of them beside the others (one for
every five), so that evaluation tells whether the model composes what it learned.

    x: {"caption": int32 [caption_length], the caption's word ids left-padded with 0; "image": the canvas}
    y: int32 [2], the classes of the first (left or top) and the second (right or bottom) image
"""

import dataclasses
from typing import Optional

import numpy as np

from bmjax.data import registry
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo
from bmjax.data.text import WordTokenizer
from bmjax.errors import UsageError

LAYOUTS = ("row", "column")
RELATIONS = {"row": ("left of", "right of"), "column": ("above", "below")}
# Pairs of classes that never share a canvas in training: each class in exactly one pair.
HELD_OUT = ((0, 7), (1, 5), (2, 9), (3, 4), (6, 8))
HELD_OUT_SHARE = 0.2  # held-out canvases in the validation and test splits, per canvas of a seen pair
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION = ("a t-shirt", "a trouser", "a pullover", "a dress", "a coat", "a sandal", "a shirt", "a sneaker", "a bag",
           "an ankle boot")
BASES = {"mnist_pairs": ("mnist", NUMBERS), "fashion_mnist_pairs": ("fashion_mnist", FASHION),
         "digits_pairs": ("digits", NUMBERS)}


@dataclasses.dataclass(frozen=True)
class Captions:
    """How a canvas's two classes and relation become words, and back."""

    names: tuple[str, ...]  # each class's words
    layout: str

    @property
    def relations(self) -> tuple[str, str]:
        return RELATIONS[self.layout]

    def caption(self, first: int, second: int, flipped: bool) -> str:
        """The words for classes `first` (left or top) and `second`: in that order with the first relation, or
        naming `second` first with the second relation."""
        if flipped:
            return f"{self.names[second]} {self.relations[1]} {self.names[first]}"
        return f"{self.names[first]} {self.relations[0]} {self.names[second]}"

    def tokenizer(self) -> WordTokenizer:
        words = dict.fromkeys(w for text in self.names + self.relations for w in text.split())
        return WordTokenizer(tuple(words))

    @property
    def length(self) -> int:
        """The most words a caption has."""
        longest = max(len(name.split()) for name in self.names)
        return 2 * longest + max(len(r.split()) for r in self.relations)

    def encode(self, text: str) -> np.ndarray:
        """A caption's word ids, left-padded to `length`: a one-line error for words outside the vocabulary or a
        caption too long."""
        ids = self.tokenizer().encode(text)
        if not 0 < len(ids) <= self.length:
            raise UsageError(f"the caption {text!r} has {len(ids)} words; captions have 1 to {self.length}, e.g. "
                             f"{self.caption(3, 5, False)!r}")
        return np.concatenate([np.zeros(self.length - len(ids), np.int32), ids])

    def classes(self, text: str) -> Optional[tuple[int, int]]:
        """(first, second) classes in canvas order that a caption asks for, or None for words that are not a
        caption of this set."""
        for first in range(len(self.names)):
            for second in range(len(self.names)):
                for flipped in (False, True):
                    if " ".join(text.lower().split()) == self.caption(first, second, flipped):
                        return first, second
        return None


def held_out_table(num_classes: int) -> np.ndarray:
    """bool [classes, classes]: whether a pair of classes (in either order) is held out of training."""
    table = np.zeros((num_classes, num_classes), bool)
    for a, b in HELD_OUT:
        if max(a, b) < num_classes:
            table[a, b] = table[b, a] = True
    return table


def canvas_shape(image_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The shape of a canvas of two images of `image_shape` ([H, W] or [H, W, C])."""
    height, width = image_shape[:2]
    return ((height, 2 * width) if layout == "row" else (2 * height, width)) + tuple(image_shape[2:])


def compose(images: np.ndarray, first: np.ndarray, second: np.ndarray, layout: str) -> np.ndarray:
    """Canvases of images[first[i]] and images[second[i]]: side by side in a row, or the first above."""
    return np.concatenate([images[first], images[second]], axis=2 if layout == "row" else 1)


def pair_indices(labels: np.ndarray, rng: np.random.Generator, *, seen: int, held_out: int,
                 table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) image indices: `seen` pairs of classes not held out (each image first once, in turn,
    while they last), then `held_out` pairs whose classes are."""
    n = len(labels)
    first = np.arange(seen) % n
    second = rng.permutation(max(seen, n))[:seen] % n
    bad = table[labels[first], labels[second]]
    while bad.any():  # draw again the partners of held-out pairs
        second[bad] = rng.integers(0, n, int(bad.sum()))
        bad = table[labels[first], labels[second]]
    by_class = [np.flatnonzero(labels == c) for c in range(table.shape[0])]
    partner = table.argmax(1)  # each class's held-out partner
    extra_first = rng.integers(0, n, held_out)
    has_partner = table[labels[extra_first]].any(1)
    extra_first = extra_first[has_partner]
    extra_second = np.array([rng.choice(by_class[partner[labels[i]]]) for i in extra_first], np.int64)
    return np.concatenate([first, extra_first]), np.concatenate([second, extra_second.astype(first.dtype)])


def pairs(base: Dataset, captions: Captions) -> Dataset:
    """Each split of `base` (an image classification dataset) as captioned canvases."""
    info = base.info
    if len(info.feature_shape) not in (2, 3) or info.task != "classification":
        raise UsageError(f"{info.name} is not an image classification dataset; canvases need images and classes")
    table = held_out_table(info.num_classes)
    tokenizer = captions.tokenizer()

    def split(source, name: str) -> Optional[ArraySource]:
        if source is None:
            return None
        whole = source[np.arange(len(source))]
        images, labels = whole["x"], np.asarray(whole["y"], np.int64)
        rng = np.random.default_rng(SPLIT_SEEDS[name])
        held_out = 0 if name == "train" else int(round(HELD_OUT_SHARE * len(labels)))
        first, second = pair_indices(labels, rng, seen=len(labels), held_out=held_out, table=table)
        flipped = rng.random(len(first)) < 0.5
        texts = [captions.caption(a, b, f) for a, b, f in zip(labels[first], labels[second], flipped)]
        ids = np.stack([captions.encode(text) for text in texts])
        y = np.stack([labels[first], labels[second]], 1).astype(np.int32)
        return ArraySource({"caption": ids, "image": compose(images, first, second, captions.layout)}, y)

    train, validation, test = split(base.train, "train"), split(base.validation, "validation"), split(base.test, "test")
    shape = train.x["image"].shape[1:]
    pairs_info = DatasetInfo(f"{info.name}_pairs", "text_to_image", shape, info.num_classes, info.class_names,
                             vocab_size=tokenizer.vocab_size)
    return Dataset(pairs_info, train, validation, test, tokenizer=tokenizer)


def captions_of(name: str, layout: str) -> Captions:
    if layout not in LAYOUTS:
        raise UsageError(f"--layout={layout} is not one of: {', '.join(LAYOUTS)}")
    return Captions(BASES[name][1], layout)


def _reader(name: str):
    def read(spec) -> Dataset:
        from bmjax.data.datasets import load

        base_name = BASES[name][0]
        base = load(spec.replace(name=base_name, config=None, task="auto", tokenizer=None))
        return pairs(base, captions_of(name, getattr(spec.config, "layout", "row")))

    read.__qualname__ = f"read_{name}"
    return read


for _name in BASES:
    registry.register(_name)(_reader(_name))

"""Text to image in the manner of DALL-E (Ramesh et al. 2021): a transformer over [caption tokens, image tokens].

A VQ-VAE run (`experiments.vqvae`) is the image tokenizer. Every canvas of a captioned dataset
(`bmjax.data.canvases`) is encoded once into its grid of codes, and a GPT learns the rows

    [caption words (left-padded), image codes in raster order]

by next-token prediction on the shared runner, scored on the image codes alone (the supervised program with the
`CaptionedImages` task). To draw, the GPT reads a caption and samples the image codes one by one with a KV cache
and top-k, drawing from the codes alone; the tokenizer's decoder turns them into pixels.

Evaluation draws one image for each caption of the split (a key per row of the split, so that every split of the
batch over devices draws the same images) and lets a trained bmjax classifier read each cell of the canvas:
`pair_accuracy` is the share of drawings whose two cells are both the classes the caption named, where it named
them, over the pairs of classes seen in training; `pair_accuracy_held_out` over the pairs held out of it. The
classifier's reading of the tokenizer's own reconstructions of the real canvases is the ceiling
(`pair_accuracy_reconstructed`). `fd_classifier` is the Frechet distance between the drawn cells and the training
images in the classifier's feature space (`fd_classifier_reconstructed`: the reconstructions').
"""

import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import bmjax
from bmjax import metrics
from bmjax.data import Dataset, DatasetInfo, canvases, preprocess
from bmjax.data.sources import ArraySource
from bmjax.errors import UsageError
from bmjax.generate import generate
from bmjax.models.vqvae import VQVAE
from bmjax.tasks import TokenPrediction
from bmjax.train.adversarial import ClassifierFeatures, feature_sums, gaussian, tile
from bmjax.train.program import Program

EVAL_SEED = 4321  # the keys of the evaluation's drawings: the same captions draw the same images at every evaluation
PICTURE_SEED = 8765
GRID_COLUMNS = 8


class CaptionedImages(TokenPrediction):
    """Next-token prediction over rows [caption, image tokens], scored on the image tokens alone: `prepare` turns a
    row into the model's input (all but its last token) and targets (all but its first)."""

    def __init__(self, vocab_size: int, caption_length: int):
        super().__init__(vocab_size)
        self.caption_length = caption_length

    def prepare(self, batch, rng):
        tokens = batch["x"]
        scored = (jnp.arange(1, tokens.shape[1]) >= self.caption_length).astype(jnp.float32)
        weights = jnp.broadcast_to(scored, (tokens.shape[0], tokens.shape[1] - 1))
        return {**batch, "x": tokens[:, :-1], "y": {"targets": tokens[:, 1:], "weights": weights}}


class ImageTokenizer:
    """A trained VQ-VAE run as the tokenizer of images: `encode` (on the host, in batches) and `decode` (jittable)."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        run = bmjax.restore(workdir)
        if not isinstance(run.model, VQVAE):
            raise UsageError(f"--image_tokenizer={workdir} holds a run of {type(run.model).__name__}, not a VQ-VAE; "
                             "train one with python -m experiments.vqvae and pass its --workdir")
        self.model, self.variables = run.model, run.variables
        self.num_codes, self.cell = run.model.num_codes, 2 ** run.model.downsample
        self.image_shape = tuple(run.io.inputs.shape)  # of the images it was trained on
        self._encode = jax.jit(lambda x: self.model.apply(self.variables, preprocess.to_float(x), method=VQVAE.encode))

    def encode(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """int32 codes [n, h, w] of images [n, H, W(, C)] (uint8, or floats in [0, 1])."""
        return np.concatenate([np.asarray(self._encode(images[i:i + batch_size]))
                               for i in range(0, len(images), batch_size)])

    def decode(self, codes):
        """Images in [0, 1] of codes [batch, h, w]."""
        return self.model.apply(self.variables, codes, method=VQVAE.decode)


class Drawer:
    """Draws canvases for captions: the transformer samples their image tokens with a KV cache, drawing from the
    image codes alone (the `top_k` likeliest; 0 or None: all of them), and the tokenizer decodes them."""

    def __init__(self, model: nn.Module, tokenizer: ImageTokenizer, captions: canvases.Captions, *,
                 top_k: Optional[int], temperature: float):
        self.model, self.tokenizer, self.captions = model, tokenizer, captions
        self.top_k, self.temperature = top_k or None, temperature
        self.text_vocab = captions.tokenizer().vocab_size
        height, width = canvases.canvas_shape(tokenizer.image_shape, captions.layout)[:2]
        self.grid = (height // tokenizer.cell, width // tokenizer.cell)
        self.draw = jax.jit(self.__call__)

    def __call__(self, params, captions, keys):
        """Canvases in [0, 1] drawn for caption ids [batch, caption_length], row b with its key keys[b]."""
        tokens = generate(self.model, params, captions, self.grid[0] * self.grid[1], keys,
                          temperature=self.temperature, top_k=self.top_k,
                          token_range=(self.text_vocab, self.text_vocab + self.tokenizer.num_codes))
        return self.decode(tokens[:, captions.shape[1]:])

    def decode(self, image_tokens):
        """Canvases in [0, 1] of rows of image tokens [batch, h * w]."""
        codes = (image_tokens - self.text_vocab).reshape((image_tokens.shape[0],) + self.grid)
        return self.tokenizer.decode(codes)

    def cells(self, images, cell_shape: tuple[int, ...]):
        """[batch, 2, *cell_shape]: each canvas's first and second image."""
        halves = jnp.split(images, 2, axis=2 if self.captions.layout == "row" else 1)
        return jnp.stack([h.reshape((h.shape[0],) + tuple(cell_shape)) for h in halves], 1)


def tokens_dataset(pairs: Dataset, tokenizer: ImageTokenizer) -> Dataset:
    """Each canvas of `pairs` as one row of tokens [caption ids, text vocabulary + image codes], its classes kept
    as y."""
    canvas = tuple(pairs.info.feature_shape)
    if canvas[0] % tokenizer.cell or canvas[1] % tokenizer.cell:
        raise UsageError(f"the image tokenizer in {tokenizer.workdir} codes squares of {tokenizer.cell} pixels, and "
                         f"the canvases are {canvas[0]}x{canvas[1]}; train it with a --downsample that divides them")
    text_vocab = pairs.info.vocab_size

    def split(source):
        if source is None:
            return None
        whole = source[np.arange(len(source))]
        codes = tokenizer.encode(whole["x"]["image"]).reshape(len(source), -1)
        return ArraySource(np.concatenate([whole["x"]["caption"], codes + text_vocab], 1).astype(np.int32),
                           whole["y"])

    vocab = text_vocab + tokenizer.num_codes
    train = split(pairs.train)
    info = DatasetInfo(pairs.info.name, "language_model", (train.x.shape[1],), vocab, None, vocab_size=vocab)
    return Dataset(info, train, split(pairs.validation), split(pairs.test), tokenizer=pairs.tokenizer)


def first_cells(source, layout: str) -> ArraySource:
    """The first (left or top) image of every canvas of a captioned split, with its class."""
    whole = source[np.arange(len(source))]
    images = whole["x"]["image"]
    half = images.shape[2 if layout == "row" else 1] // 2
    return ArraySource(images[:, :, :half] if layout == "row" else images[:, :half], whole["y"][:, 0])


class TextToImage(Program):
    """The supervised program of the transformer (`transformer`), evaluated by what it draws (see the module's
    docstring); the rest is the supervised program's."""

    def __init__(self, transformer, drawer: Drawer, classifier: ClassifierFeatures, train_statistics: dict, *,
                 axis_name: Optional[str] = None):
        self.transformer, self.drawer, self.classifier = transformer, drawer, classifier
        self.train_statistics, self.axis_name = train_statistics, axis_name
        self.held_out = jnp.asarray(canvases.held_out_table(classifier.num_classes))

    # What the supervised program does.
    def init(self, rng):
        return self.transformer.init(rng)

    def state_axes(self, state):
        return self.transformer.state_axes(state)

    def train_step(self, state, batch):
        return self.transformer.train_step(state, batch)

    def schedules(self, step: int) -> dict:
        return self.transformer.schedules(step)

    def networks(self) -> dict:
        return self.transformer.networks()

    def describe(self, state) -> dict:
        tokenizer = self.drawer.tokenizer
        return {**self.transformer.describe(state), "image_tokenizer": tokenizer.workdir,
                "image_tokens": int(np.prod(self.drawer.grid)), "image_codes": tokenizer.num_codes}

    # Drawing.
    def _read(self, images, classes, held, weights):
        """Sums of the classifier's reading of canvases: right pairs (of seen and of `held` out classes) and cells,
        and its feature sums."""
        cells = self.drawer.cells(images, self.classifier.feature_shape)
        features, logits = self.classifier(cells.reshape((-1,) + cells.shape[2:]))
        predicted = jnp.argmax(logits, -1).reshape(classes.shape)
        right = jnp.all(predicted == classes, -1).astype(jnp.float32)
        return {"seen_right": jnp.sum(right * (1 - held) * weights), "held_out_right": jnp.sum(right * held * weights),
                "cells_right": jnp.sum((predicted == classes).sum(-1) * weights),
                "features": feature_sums(features, jnp.repeat(weights, 2))}

    def eval_step(self, state, batch):
        sums = self.transformer.eval_step(state, batch)
        tokens, classes, weights = batch["x"], batch["y"], batch["mask"].astype(jnp.float32)
        length = self.drawer.captions.length
        keys = row_keys(EVAL_SEED, batch["index"])
        held = self.held_out[classes[:, 0], classes[:, 1]].astype(jnp.float32)
        drawn = {"seen": jnp.sum((1 - held) * weights), "held_out": jnp.sum(held * weights),
                 "drawn": self._read(self.drawer(state.eval_params, tokens[:, :length], keys), classes, held, weights),
                 "reconstructed": self._read(self.drawer.decode(tokens[:, length:]), classes, held, weights)}
        if self.axis_name:
            drawn = jax.lax.psum(drawn, self.axis_name)
        return {**sums, "drawing": drawn}

    def summarize(self, sums, detailed: bool = False) -> dict:
        drawing = sums.get("drawing")
        summary = self.transformer.summarize({k: v for k, v in sums.items() if k != "drawing"}, detailed)
        if drawing is None:
            return summary
        seen, held = float(drawing["seen"]), float(drawing["held_out"])
        train = gaussian(self.train_statistics)
        for name, prefix in (("drawn", ""), ("reconstructed", "_reconstructed")):
            read = drawing[name]
            summary[f"pair_accuracy{prefix}"] = float(read["seen_right"]) / max(seen, 1.0)
            if held:
                summary[f"pair_accuracy_held_out{prefix}"] = float(read["held_out_right"]) / held
            summary[f"cell_accuracy{prefix}"] = float(read["cells_right"]) / (2 * (seen + held))
            summary[f"fd_classifier{prefix}"] = metrics.frechet_distance(*gaussian(read["features"]), *train)
        if detailed:
            summary["fd_features"] = f"inputs of the last Dense layer of the classifier in {self.classifier.workdir}"
        return summary

    def pictures(self, state, final: bool = False) -> dict:
        """Rows of drawings for a few fixed captions (pairs seen in training and held out of it), each labelled."""
        captions = self.drawer.captions
        texts = showcase(captions, self.classifier.num_classes)
        ids = np.repeat(np.stack([captions.encode(t) for t in texts]), GRID_COLUMNS, 0)
        images = np.asarray(self.drawer.draw(state.eval_params, jnp.asarray(ids), row_keys(PICTURE_SEED, len(ids))))
        return {"drawings": labelled(tile(images, GRID_COLUMNS), texts)}


def row_keys(seed: int, rows):
    """A key per row: `seed` folded with each row's number (`rows`, or 0..rows-1)."""
    rows = jnp.arange(rows) if isinstance(rows, int) else rows
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(rows)


def showcase(captions: canvases.Captions, num_classes: int) -> list[str]:
    """Eight captions to draw at each evaluation: four of pairs seen in training, four of pairs held out."""
    table = canvases.held_out_table(num_classes)
    seen = [(a, (a + 3) % num_classes) for a in range(num_classes) if not table[a, (a + 3) % num_classes]][:4]
    held = [pair for pair in canvases.HELD_OUT if max(pair) < num_classes][:4]
    return [captions.caption(a, b, flipped=i % 2 == 1) for i, (a, b) in enumerate(seen + held)]


def labelled(grid: np.ndarray, texts: list[str], min_row: int = 24) -> np.ndarray:
    """A uint8 grid of len(texts) equal rows with each row's text written to its left (rows scaled up to at
    least `min_row` pixels, so that the text fits)."""
    from PIL import Image, ImageDraw

    scale = max(1, -(-min_row // (grid.shape[0] // len(texts))))
    grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    draw = ImageDraw.Draw(image)
    margin = max(int(draw.textlength(t)) for t in texts) + 8
    out = Image.new(image.mode, (image.width + margin, image.height), 255 if image.mode == "L" else (255,) * 3)
    out.paste(image, (margin, 0))
    draw, row = ImageDraw.Draw(out), image.height / len(texts)
    for i, text in enumerate(texts):
        draw.text((4, int(i * row + row / 2 - 6)), text, fill=0 if out.mode == "L" else (0,) * 3)
    array = np.asarray(out)
    return array[..., None] if array.ndim == 2 else array


def build(config, context):
    """The plan of a text-to-image run: `config.dataset` (captioned canvases) tokenized by the VQ-VAE run in
    `config.image_tokenizer`, the supervised program of `config.build_model`'s transformer on it, and evaluation by
    the classifier in `config.classifier`."""
    from bmjax import data
    from bmjax.train import supervised
    from bmjax.train.program import Plan

    pairs = data.load(data.DataSpec.of(config))
    if pairs.info.task != "text_to_image":
        raise UsageError(f"--dataset={config.dataset} has no captions; choose one of "
                         f"{', '.join(canvases.BASES)}")
    tokenizer = ImageTokenizer(config.image_tokenizer)
    cell = first_cells(pairs.train, config.layout)
    if tuple(cell.x.shape[1:]) != tokenizer.image_shape:
        raise UsageError(f"the image tokenizer in {tokenizer.workdir} was trained on images of shape "
                         f"{tokenizer.image_shape}, and these canvases hold images of shape {cell.x.shape[1:]}; "
                         "train it on the canvases' base dataset")
    tokens = tokens_dataset(pairs, tokenizer)
    plan = supervised.build(config, context, dataset=tokens)
    classifier = ClassifierFeatures(config.classifier, cell.x.shape[1:])
    drawer = Drawer(plan.program.model, tokenizer, canvases.captions_of(config.dataset, config.layout),
                    top_k=config.top_k, temperature=config.temperature)
    program = TextToImage(plan.program, drawer, classifier, classifier.statistics(cell), axis_name=context.axis_name)
    return Plan(program, plan.dataset, plan.model_io)

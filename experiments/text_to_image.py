"""Text to image in the manner of DALL-E: a VQ-VAE turns images into tokens, and a GPT writes an image's tokens
after its caption. The data are two MNIST digits (or Fashion-MNIST items) on one canvas, captioned with what is
where: "seven left of two", "two right of seven"; with --layout=column, "a sandal above a bag".

    python -m experiments.text_to_image --workdir=runs/t2i --preset=cpu --data_dir=D
    python -m experiments.text_to_image --workdir=runs/t2i --mode=sample --prompt="seven left of two"
    python -m experiments.text_to_image --workdir=runs/t2i_f --dataset=fashion_mnist_pairs --layout=column

A run trains three things in its workdir, each resumable: `classifier/`, the seed CNN on the base dataset that
judges the drawings; `image_tokenizer/`, the VQ-VAE (`experiments.vqvae`) that codes 4x4 pixel squares; then the
transformer. Pairs of classes in `bmjax.data.canvases.HELD_OUT` never share a canvas in training: evaluation reports
how often the drawings show the two named classes where the caption put them, for pairs seen in training
(`pair_accuracy`) and held out of it (`pair_accuracy_held_out`), as the classifier reads each half.

Offline, prepare the base dataset first: `python -m bmjax.data prepare mnist --manual_dir=DIR --data_dir=TFDS_DIR`.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

import bmjax
from bmjax import cli, console
from bmjax.config import Config, field
from bmjax.data import canvases
from bmjax.errors import UsageError
from bmjax.models.gpt import GPT
from bmjax.runs import read_run
from bmjax.train import runlog, text_to_image
from bmjax.train.adversarial import ClassifierFeatures, tile
from experiments.dcgan import CLASSIFIER_DIR, SHARED, train_classifier

TOKENIZER_DIR = "image_tokenizer"
PRESETS = {
    # A few minutes on 2 CPU cores: a smaller transformer, fewer steps.
    "cpu": dict(num_layers=4, num_heads=4, embed_dim=128, train_steps=3000, eval_every_steps=1000),
    # Longer and wider.
    "full": dict(num_layers=6, num_heads=8, embed_dim=256, train_steps=20000, eval_every_steps=2000),
}


@dataclasses.dataclass(frozen=True)
class TextToImageConfig(Config):
    dataset: str = "mnist_pairs"
    model: str = "gpt"
    validation_split: Optional[float] = 0.1
    layout: str = field("row", "Where the two images sit: side by side (row: 'left of', 'right of') or one above "
                               "the other (column: 'above', 'below').", canvases.LAYOUTS)
    num_layers: int = field(6, "Transformer blocks.")
    num_heads: int = field(8, "Attention heads per block.")
    embed_dim: int = field(256, "Width of the residual stream.")
    dropout: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 1000
    train_steps: Optional[int] = 10000
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    b2: float = 0.95
    lr_schedule: str = "warmup_cosine"
    warmup_steps: int = 200
    min_learning_rate: float = 1e-4
    weight_decay: float = 0.1
    clip_grad_norm: Optional[float] = 1.0
    log_every_steps: int = 100
    eval_every_steps: Optional[int] = 2000
    checkpoint_every_steps: Optional[int] = 1000
    # Sharper drawing shows the named digits more often: after 3,000 steps of the cpu preset, 500 validation captions
    # drew right 71% of the time at top-k 3 and temperature 0.8, 54% at top-k 8 and 1.0, 49% from all codes.
    top_k: int = field(3, "Draw each image token from the k likeliest codes (0: from all of them).", trains=False)
    temperature: float = field(0.8, "Divide the logits by this before drawing.", trains=False)
    image_tokenizer: Optional[str] = field(None, "Workdir of the VQ-VAE run that tokenizes the images (default: "
                                                 "WORKDIR/image_tokenizer, trained first).")
    num_codes: int = field(64, "Codebook size of the VQ-VAE trained when --image_tokenizer is not given.")
    downsample: int = field(2, "Its stride-2 convolutions: each image token codes a 2^downsample pixel square.")
    tokenizer_epochs: int = field(3, "Epochs of that VQ-VAE.")
    classifier: Optional[str] = field(None, "Workdir of a bmjax classifier of the base dataset that reads the drawings "
                                            "(default: WORKDIR/classifier, trained first).", trains=False)
    classifier_epochs: int = field(2, "Epochs of the seed CNN trained when --classifier is not given.", trains=False)
    mode: str = field("train", "Train, or draw --prompt with the trained model in --workdir.", ("train", "sample"),
                      trains=False)
    prompt: str = field("seven left of two", "The caption --mode=sample draws.", trains=False)
    num_samples: int = field(16, "Drawings --mode=sample makes.", trains=False)
    out: Optional[str] = field(None, "PNG file --mode=sample writes (default: WORKDIR/samples.png).", trains=False)

    def validate(self) -> "TextToImageConfig":
        super().validate()
        for name in ("num_layers", "num_heads", "embed_dim", "num_codes", "downsample", "tokenizer_epochs",
                     "classifier_epochs", "num_samples", "temperature"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.top_k <= self.num_codes:
            raise UsageError(f"--top_k must lie in 0..{self.num_codes} (the image codes; 0: all), got {self.top_k}")
        if self.embed_dim % self.num_heads:
            raise UsageError(f"--embed_dim={self.embed_dim} must divide into --num_heads={self.num_heads} heads")
        if self.dataset not in canvases.BASES:
            raise UsageError(f"--dataset={self.dataset} has no captions; choose one of {', '.join(canvases.BASES)}")
        return self

    def paths(self) -> "TextToImageConfig":
        """This config with the classifier and the image tokenizer where they are (default: in the workdir)."""
        return self.replace(classifier=self.classifier or os.path.join(self.workdir, CLASSIFIER_DIR),
                            image_tokenizer=self.image_tokenizer or os.path.join(self.workdir, TOKENIZER_DIR))

    def build_model(self, io):
        return GPT(vocab_size=io.num_outputs, block_size=io.inputs.shape[0], num_layers=self.num_layers,
                   num_heads=self.num_heads, embed_dim=self.embed_dim, dropout=self.dropout, use_bias=False,
                   remat=self.remat, dtype=self.compute_dtype)

    def build_task(self, dataset):
        return text_to_image.CaptionedImages(dataset.info.vocab_size, self.captions().length)

    def build_program(self, context):
        return text_to_image.build(self.paths(), context)

    def captions(self) -> canvases.Captions:
        return canvases.captions_of(self.dataset, self.layout)


def train_tokenizer(config: TextToImageConfig) -> dict:
    """The VQ-VAE that codes the base dataset's images, trained in WORKDIR/image_tokenizer; a finished one is
    reported, not trained again."""
    from experiments.vqvae import Vqvae

    tokenizer = Vqvae(**{name: getattr(config, name) for name in SHARED}, dataset=canvases.BASES[config.dataset][0],
                      workdir=config.paths().image_tokenizer, epochs=config.tokenizer_epochs,
                      num_codes=config.num_codes, downsample=config.downsample,
                      validation_split=config.validation_split)
    console.say(f"training the VQ-VAE that turns images into tokens, in {tokenizer.workdir}")
    return bmjax.run(tokenizer, "experiments.vqvae")


def sample(config: TextToImageConfig) -> str:
    """A PNG grid of --num_samples drawings of --prompt by the run in --workdir (its newest checkpoint); the
    classifier's reading of them, where the run has one."""
    run_config, _, record = read_run(config.workdir)
    if not callable(getattr(run_config, "captions", None)):  # a TextToImageConfig, whichever module defined it
        raise UsageError(f"--workdir={config.workdir} holds a run of {record['config_class']}, not a text-to-image "
                         "run")
    run_config = run_config.paths()
    run = bmjax.restore(config.workdir)
    captions = run_config.captions()
    ids = captions.encode(config.prompt)
    tokenizer = text_to_image.ImageTokenizer(run_config.image_tokenizer)
    drawer = text_to_image.Drawer(run.model, tokenizer, captions, top_k=config.top_k, temperature=config.temperature)
    keys = text_to_image.row_keys(config.seed, config.num_samples)
    images = drawer.draw(run.params, np.repeat(ids[None], config.num_samples, 0), keys)
    out = config.out or os.path.join(config.workdir, "samples.png")
    runlog.save_png(tile(np.asarray(images), int(np.ceil(np.sqrt(config.num_samples)))), out)
    console.say(f"wrote {config.num_samples} drawings of {config.prompt!r} from step {run.step} to {out}")
    wanted = captions.classes(config.prompt)
    if wanted is not None and os.path.exists(os.path.join(run_config.classifier, "run.json")):
        classifier = ClassifierFeatures(run_config.classifier, tokenizer.image_shape)
        cells = drawer.cells(images, tokenizer.image_shape)
        read = np.argmax(np.asarray(classifier(cells.reshape((-1,) + tokenizer.image_shape))[1]), -1)
        right = int(np.sum(np.all(read.reshape(-1, 2) == np.asarray(wanted), -1)))
        console.say(f"the classifier reads {right} of {config.num_samples} drawings as {config.prompt!r}")
    return out


def main(config: TextToImageConfig, command: str = "experiments.text_to_image"):
    if config.mode == "sample":
        return sample(config)
    if not config.classifier:
        train_classifier(config, canvases.BASES[config.dataset][0])
    if not config.image_tokenizer:
        train_tokenizer(config)
    return bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(TextToImageConfig, presets=PRESETS, entry=main)

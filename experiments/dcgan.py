"""DCGAN (Radford et al. 2015) on MNIST, Fashion-MNIST or CIFAR-10, unconditional or class-conditional.

    python -m experiments.dcgan --workdir=runs/dcgan --preset=cpu           # minutes on 2 CPU cores
    python -m experiments.dcgan --workdir=runs/dcgan --preset=cpu --mode=sample --label=7
    python -m experiments.dcgan --workdir=runs/cdcgan --preset=paper --conditional --dataset=fashion_mnist

Evaluation measures the Frechet distance between generated and training images in the feature space of a bmjax
classifier trained on the same dataset (`fd_classifier`; not Inception's FID), beside the distance of the real
held-out images (`fd_classifier_floor`), and the share of each class among the samples as the classifier reads
them (with `--conditional`, also how often it reads the class asked for). Without `--classifier`, the seed CNN
is first trained for `--classifier_epochs` in WORKDIR/classifier. Sample grids go to WORKDIR/pictures and
TensorBoard at each evaluation, with a latent interpolation at the end.

Offline, prepare the dataset first: `python -m bmjax.data prepare mnist --manual_dir=DIR --data_dir=TFDS_DIR`.
"""

import dataclasses
import os
from typing import Optional

import jax
import numpy as np
import optax

import bmjax
from bmjax import cli, console, data, losses
from bmjax.config import Config, field
from bmjax.data import DatasetInfo
from bmjax.errors import UsageError
from bmjax.models.dcgan import NORMS, Discriminator, Generator
from bmjax.runs import read_run
from bmjax.train import adversarial, runlog
from bmjax.train.checkpoint import read_saved
from bmjax.train.program import Plan

PRESETS = {
    # Half-width networks for 1,500 steps: recognisable digits in minutes on 2 CPU cores.
    "cpu": dict(train_steps=1500, generator_features=32, discriminator_features=32, eval_every_steps=500),
    # The paper's setting: batch 128, 64-wide networks, 25 epochs.
    "paper": dict(batch_size=128, epochs=25),
}
CLASSIFIER_DIR = "classifier"


@dataclasses.dataclass(frozen=True)
class Dcgan(Config):
    dataset: str = "mnist"
    validation_split: Optional[float] = 0.1
    batch_size: int = 64
    epochs: int = 5
    steps_per_call: int = 1  # convolutions inside loops are slow on XLA:CPU (jax#12868)
    latent_dim: int = field(100, "Width of the generator's latent input, drawn from N(0, I).")
    conditional: bool = field(False, "Condition both networks on the class: one-hot label beside the latent, a "
                                     "projection discriminator.")
    generator_features: int = field(64, "Filters of the generator's last hidden map (doubling toward the latent).")
    discriminator_features: int = field(64, "Filters of the discriminator's first map (doubling toward the logit).")
    discriminator_norm: str = field("batch", "Normalisation in the discriminator after its first convolution.",
                                    NORMS)
    minibatch_std: int = field(0, "Group size of the discriminator's minibatch standard deviation, a feature "
                                  "that shows it how alike each group's images are (0: none).")
    bn_momentum: float = field(0.9, "Momentum of BatchNorm's running averages.")
    loss: str = field("non_saturating", "Adversarial loss.", losses.ADVERSARIAL)
    gradient_penalty: float = field(0.0, "Weight of WGAN-GP's gradient penalty (0: none).")
    r1_gamma: float = field(0.0, "Weight gamma of the R1 penalty on real images (0: none).")
    critic_steps: int = field(1, "Discriminator steps per generator step; each step reads one batch.")
    generator_learning_rate: float = field(2e-4, "Adam step size of the generator.")
    discriminator_learning_rate: float = field(2e-4, "Adam step size of the discriminator.")
    b1: float = field(0.5, "Decay of Adam's first moment for both networks.")
    classifier: Optional[str] = field(None, "Workdir of a bmjax classifier of the same dataset whose features "
                                            "the Frechet distance uses (default: WORKDIR/classifier, trained first).",
                                      trains=False)
    classifier_epochs: int = field(2, "Epochs of the seed CNN trained when --classifier is not given.",
                                   trains=False)
    mode: str = field("train", "Train, or draw samples from the trained generator in --workdir.",
                      ("train", "sample"), trains=False)
    num_samples: int = field(64, "Samples --mode=sample draws.", trains=False)
    label: Optional[int] = field(None, "The class --mode=sample draws from a conditional generator (default: "
                                       "one column per class).", trains=False)
    out: Optional[str] = field(None, "PNG file --mode=sample writes (default: WORKDIR/samples.png).", trains=False)

    def validate(self) -> "Dcgan":
        super().validate()
        for name in ("latent_dim", "generator_features", "discriminator_features", "critic_steps",
                     "generator_learning_rate", "discriminator_learning_rate", "num_samples", "classifier_epochs"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.minibatch_std < 0 or self.minibatch_std == 1:
            raise UsageError(f"--minibatch_std is a group size of at least 2 (or 0 for none), got {self.minibatch_std}")
        if self.gradient_penalty < 0 or self.r1_gamma < 0:
            raise UsageError("--gradient_penalty and --r1_gamma must not be negative")
        if (self.gradient_penalty or self.r1_gamma) and self.discriminator_norm == "batch":
            raise UsageError("gradient penalties treat examples independently, which BatchNorm does not; use "
                             "--discriminator_norm=layer (or none) with --gradient_penalty or --r1_gamma")
        return self

    def networks(self, info: DatasetInfo, axis_name=None) -> tuple[Generator, Discriminator]:
        shape = tuple(info.feature_shape)
        if len(shape) not in (2, 3):
            raise UsageError(f"{info.name}'s examples have shape {shape}, not images; choose an image dataset")
        classes = self.num_classes(info)
        generator = Generator(image_shape=shape if len(shape) == 3 else shape + (1,), features=self.generator_features,
                              num_classes=classes, bn_momentum=self.bn_momentum, axis_name=axis_name,
                              dtype=self.compute_dtype)
        discriminator = Discriminator(features=self.discriminator_features, num_classes=classes,
                                      norm=self.discriminator_norm, minibatch_std=self.minibatch_std,
                                      bn_momentum=self.bn_momentum, axis_name=axis_name, dtype=self.compute_dtype)
        return generator, discriminator

    def num_classes(self, info: DatasetInfo) -> int:
        if not self.conditional:
            return 0
        if info.task != "classification" or not info.num_classes:
            raise UsageError(f"--conditional needs a dataset with classes; {info.name} has none")
        return info.num_classes

    def build_program(self, context):
        dataset = data.load(data.DataSpec.of(self))
        generator, discriminator = self.networks(dataset.info, context.axis_name)
        classifier = adversarial.ClassifierFeatures(self.classifier or os.path.join(context.workdir, CLASSIFIER_DIR),
                                                    dataset.info.feature_shape)
        if classifier.dataset != self.dataset:
            console.warn(f"the classifier was trained on {classifier.dataset}, this run's images are {self.dataset}")
        adam = lambda lr: optax.adam(lr, b1=self.b1, b2=self.b2)
        program = adversarial.Adversarial(
            generator, discriminator, adam(self.generator_learning_rate), adam(self.discriminator_learning_rate),
            image_shape=dataset.info.feature_shape, latent_dim=self.latent_dim,
            num_classes=self.num_classes(dataset.info), loss=self.loss, gradient_penalty=self.gradient_penalty,
            r1_gamma=self.r1_gamma, critic_steps=self.critic_steps, ema_decay=self.ema_decay,
            classifier=classifier, train_statistics=classifier.statistics(dataset.train),
            schedules={"generator_learning_rate": optax.constant_schedule(self.generator_learning_rate),
                       "discriminator_learning_rate": optax.constant_schedule(self.discriminator_learning_rate)},
            axis_name=context.axis_name)
        return Plan(program, dataset)


# What a run trained first for another (a classifier, a tokenizer) takes from it: where its data is and what runs it.
SHARED = ("data_dir", "manual_dir", "seed", "parallel", "mesh", "host_devices", "data_placement",
          "coordinator_address", "num_processes", "process_id", "distributed")


def train_classifier(config, dataset: Optional[str] = None) -> dict:
    """The seed CNN (with a 128-wide hidden layer, whose activations are the features) trained on `dataset` (default:
    --dataset) in WORKDIR/classifier on the same devices; a finished one is reported, not trained again."""
    from experiments.mnist_cnn import MnistCnn

    classifier = MnistCnn(**{name: getattr(config, name) for name in SHARED}, dataset=dataset or config.dataset,
                          workdir=os.path.join(config.workdir, CLASSIFIER_DIR), epochs=config.classifier_epochs,
                          conv_padding="SAME", hidden_sizes=(128,), batch_size=128)
    console.say(f"training the classifier whose features the Frechet distance uses, in {classifier.workdir}")
    return bmjax.run(classifier, "experiments.mnist_cnn")


def sample(config: Dcgan, command: str = "") -> str:
    """A PNG grid of --num_samples images from the newest checkpoint's generator (its moving average if it has
    one) in --workdir; only the sampling flags (and --seed, which picks the latents) are read from `config`."""
    run, info, record = read_run(config.workdir)
    if not callable(getattr(run, "networks", None)):  # a Dcgan, whichever module (__main__ or not) defined it
        raise UsageError(f"--workdir={config.workdir} holds a run of {record['config_class']}, not a GAN")
    saved, step = read_saved(config.workdir, ("generator",), flag="--workdir")
    generator, _ = run.networks(info)
    state = saved["generator"]
    params = state.get("ema_params") or state["params"]
    classes = run.num_classes(info)
    if config.label is not None and not 0 <= config.label < max(classes, 1):
        raise UsageError(f"--label={config.label} is not a class of this generator" +
                         (f" (0-{classes - 1})" if classes else "; it is not conditional: leave --label out"))
    rows = np.arange(config.num_samples)
    labels = None
    columns = int(np.ceil(np.sqrt(config.num_samples)))
    if classes:
        columns = classes if config.label is None else columns
        labels = rows % classes if config.label is None else np.full_like(rows, config.label)
    z = adversarial.latents(jax.random.PRNGKey(config.seed), rows, run.latent_dim)
    noise = adversarial.noise_inputs(generator, jax.random.PRNGKey(config.seed + 1), rows)
    images = adversarial.generate(generator.apply, {"params": params, **state["model_state"]}, z, labels,
                                  info.feature_shape, **noise)
    out = config.out or os.path.join(config.workdir, "samples.png")
    runlog.save_png(adversarial.tile(np.asarray(images), columns), out)
    what = f" of class {info.class_names[config.label] if info.class_names else config.label}" \
        if config.label is not None else ""
    console.say(f"wrote {config.num_samples} samples{what} from step {step} to {out}")
    return out


def main(config: Dcgan, command: str = "experiments.dcgan"):
    if config.mode == "sample":
        return sample(config, command)
    if not config.classifier:
        train_classifier(config)
    return bmjax.run(config, command)


if __name__ == "__main__":
    cli.main(Dcgan, presets=PRESETS, entry=main)

"""A StyleGAN-style generator (Karras et al.) against DCGAN's discriminator, at 32x32 (CIFAR-10) or 28x28.

The generator maps the latent through a 4-layer mapping network to a style vector, and builds the image from a
learned constant with style-modulated, demodulated convolutions, per-pixel noise and RGB skip outputs; in
training, 90% of the examples switch to a second latent's styles from a random layer on (style mixing). The
discriminator has no normalisation, sees the spread of each group of 4 images (`--minibatch_std`, against mode
collapse) and pays an R1 penalty on real images (`--r1_gamma`); an exponential moving average of the
generator's weights (`--ema_decay`) is what evaluation and sampling use. Adam moves each weight by about its
step size: at StyleGAN's 2e-3 the generator's equalised N(0, 1) weights would move by 0.2% of their scale a
step, the discriminator's N(0, 0.02) weights move by 1% of theirs at 2e-4, and the discriminator won. The
generator's 1e-2 keeps the two in step. Every flag of `experiments.dcgan` applies.

    python -m experiments.stylegan --workdir=runs/style --preset=cpu        # Fashion-MNIST, minutes on 2 cores
    python -m experiments.stylegan --workdir=runs/style --mode=sample
    python -m experiments.stylegan --workdir=runs/cifar --preset=full       # CIFAR-10 (needs the network or
                                                                            # a prepared TFDS directory)
"""

import dataclasses

from bmjax import cli
from bmjax.config import field
from bmjax.data import DatasetInfo
from bmjax.errors import UsageError
from bmjax.models.stylegan import StyleGenerator
from experiments.dcgan import Dcgan, main

PRESETS = {
    "cpu": dict(dataset="fashion_mnist", train_steps=2000, generator_features=32, discriminator_features=32,
                eval_every_steps=500),
    # CIFAR-10 at 32x32 with 64-wide networks for 50 epochs (the defaults, named): hours on an accelerator.
    "full": dict(dataset="cifar10", epochs=50, generator_features=64, discriminator_features=64,
                 eval_every_steps=5000),
}


@dataclasses.dataclass(frozen=True)
class StyleGan(Dcgan):
    dataset: str = "cifar10"
    epochs: int = 50
    latent_dim: int = 128
    style_dim: int = field(128, "Width of the style vector w and of the mapping network.")
    mapping_layers: int = field(4, "Layers of the mapping network.")
    style_mixing: float = field(0.9, "Share of training examples whose styles switch to a second latent's from a "
                                     "random layer on.")
    discriminator_norm: str = "none"
    minibatch_std: int = 4
    r1_gamma: float = 0.1
    generator_learning_rate: float = 1e-2
    discriminator_learning_rate: float = 2e-4
    b1: float = 0.0
    b2: float = 0.99
    ema_decay: float = 0.999

    def validate(self) -> "StyleGan":
        super().validate()
        if not 0 <= self.style_mixing <= 1:
            raise UsageError(f"--style_mixing must lie in [0, 1], got {self.style_mixing}")
        return self

    def networks(self, info: DatasetInfo, axis_name=None):
        _, discriminator = super().networks(info, axis_name)
        shape = tuple(info.feature_shape)
        generator = StyleGenerator(image_shape=shape if len(shape) == 3 else shape + (1,),
                                   features=self.generator_features, w_dim=self.style_dim,
                                   mapping_layers=self.mapping_layers, num_classes=self.num_classes(info),
                                   style_mixing=self.style_mixing)
        return generator, discriminator


if __name__ == "__main__":
    cli.main(StyleGan, presets=PRESETS, entry=main)

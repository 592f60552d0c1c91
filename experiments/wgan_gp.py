"""WGAN-GP (Gulrajani et al. 2017): DCGAN's networks with a critic in place of the discriminator.

The critic has no BatchNorm (layer normalisation instead, as the paper suggests, since the gradient penalty
treats examples independently), minimises D(fake) - D(real) plus 10 times the penalty, and takes 5 steps per
generator step; both use Adam at 1e-4 with betas 0 and 0.9. Every flag of `experiments.dcgan` applies.

    python -m experiments.wgan_gp --workdir=runs/wgan --preset=cpu
    python -m experiments.wgan_gp --workdir=runs/wgan --mode=sample
"""

import dataclasses
from typing import Optional

from bmjax import cli
from experiments.dcgan import Dcgan, main

PRESETS = {
    # 5,000 critic steps (1,000 of the generator) of half-width networks: minutes on 2 CPU cores.
    "cpu": dict(train_steps=5000, generator_features=32, discriminator_features=32, eval_every_steps=1000),
    # The paper's setting for its DCGAN-architecture experiments: batch 64, 64-wide networks, 200k critic steps.
    "paper": dict(train_steps=200_000, eval_every_steps=10_000),
}


@dataclasses.dataclass(frozen=True)
class WganGp(Dcgan):
    loss: str = "wasserstein"
    gradient_penalty: float = 10.0
    critic_steps: int = 5
    discriminator_norm: str = "layer"
    generator_learning_rate: float = 1e-4
    discriminator_learning_rate: float = 1e-4
    b1: float = 0.0
    b2: float = 0.9
    epochs: int = 30
    checkpoint_every_steps: Optional[int] = 1000


if __name__ == "__main__":
    cli.main(WganGp, presets=PRESETS, entry=main)

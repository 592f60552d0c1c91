"""A model bmjax does not ship, declared here: a small ResNet with BatchNorm, on the 8x8 digits (or MNIST).

    python -m experiments.digits_resnet --workdir=runs/resnet                  # about 10 s on 2 CPU cores
    python -m experiments.digits_resnet --workdir=runs/resnet --parallel=pmap --host_devices=8

BatchNorm takes its statistics over the whole batch under every strategy: under `pmap` through the axis name
the runner passes in `io.axis_name`, under `jit` on a mesh through the compiler. Its running averages are the
run's model state: saved in every checkpoint and restored on resume.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmjax import cli, models
from bmjax.config import Config, field


class ResidualBlock(nn.Module):
    features: int
    strides: int
    norm: functools.partial

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm()(nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)))
        y = self.norm(scale_init=nn.initializers.zeros)(nn.Conv(self.features, (3, 3), use_bias=False)(y))
        if x.shape != y.shape:  # a 1x1 projection where the block changes width or resolution
            x = self.norm()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
        return nn.relu(x + y)


class SmallResNet(nn.Module):
    """A 3x3 stem, then `blocks` residual blocks per stage (each stage after the first halves the resolution),
    global average pooling and a dense classifier."""

    num_outputs: int
    widths: Sequence[int] = (16, 32)
    blocks: int = 1
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 axis_name=self.axis_name if train else None, dtype=self.dtype)
        x = nn.relu(norm()(nn.Conv(self.widths[0], (3, 3), use_bias=False, dtype=self.dtype)(x)))
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks):
                x = ResidualBlock(width, 2 if stage and not block else 1, norm)(x)
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x.mean(axis=(1, 2)))


@models.register("small_resnet")
def small_resnet(config: "DigitsResNet", io: models.ModelIO) -> SmallResNet:
    return SmallResNet(num_outputs=io.num_outputs, widths=config.widths, blocks=config.blocks,
                       bn_momentum=config.bn_momentum, axis_name=io.axis_name, dtype=config.compute_dtype)


@dataclasses.dataclass(frozen=True)
class DigitsResNet(Config):
    dataset: str = "digits"
    model: str = "small_resnet"
    widths: tuple[int, ...] = field((16, 32), "Channels of each stage.")
    blocks: int = field(1, "Residual blocks per stage.")
    bn_momentum: float = field(0.9, "Momentum of BatchNorm's running averages.")
    validation_split: Optional[float] = 0.1
    batch_size: int = 64
    epochs: int = 15
    learning_rate: float = 3e-3
    lr_schedule: str = "cosine"
    steps_per_call: int = 1  # XLA:CPU runs convolutions inside loops slowly (jax#12868); 0 on TPU and GPU


if __name__ == "__main__":
    cli.main(DigitsResNet)

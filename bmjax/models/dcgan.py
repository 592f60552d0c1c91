"""DCGAN's generator and discriminator (Radford et al. 2015), for any image side divisible into 4x4 to 7x7 maps.

The generator projects the latent vector to a small map and doubles its side with 4x4 strided transposed
convolutions (BatchNorm and ReLU after each but the last, tanh at the output, in [-1, 1]); the discriminator
halves it with 4x4 strided convolutions (LeakyReLU 0.2, a normalisation after each but the first) down to one
logit. Class-conditional: the generator takes the label's one-hot vector beside the latent, the discriminator
adds the projection of its features on a learned class embedding (Miyato & Koyama 2018). The WGAN-GP critic is
the discriminator with `norm="layer"` or `"none"`, since its gradient penalty treats examples independently.
The discriminator can also see each small group's spread (`minibatch_std`, Karras et al. 2018), which lets it
tell a collapsed generator's near-identical samples from real ones.
"""

import math
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.convnet import UpConv

NORMS = ("batch", "layer", "none")
INIT = nn.initializers.normal(0.02)  # the paper's N(0, 0.02) weights


def upsamplings(side: int) -> int:
    """How many times the side halves down to the first map: while it stays a whole number of at least 4."""
    count = 0
    while side % 2 == 0 and side // 2 >= 4:
        side, count = side // 2, count + 1
    if count == 0:
        raise UsageError(f"DCGAN needs images whose side halves at least once to a map of 4 or more pixels, not "
                         f"{side}; resize the images (e.g. to 28, 32 or 64)")
    return count


class Generator(nn.Module):
    image_shape: tuple[int, int, int]  # (height, width, channels)
    features: int = 64  # of the last hidden map; each earlier one has twice as many
    num_classes: int = 0  # > 0: class-conditional
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None  # BatchNorm's statistics over the global batch under pmap
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z, labels=None, *, train: bool = False):
        height, width, channels = self.image_shape
        steps = upsamplings(height)
        if width % 2 ** steps:
            raise UsageError(f"DCGAN's images are {height}x{width}: the width must halve as often as the height")
        if self.num_classes:
            z = jnp.concatenate([z, nn.one_hot(labels, self.num_classes, dtype=z.dtype)], axis=-1)
        norm = lambda x: nn.relu(nn.BatchNorm(not train, momentum=self.bn_momentum, axis_name=self.axis_name,
                                              dtype=self.dtype)(x))
        first = self.features * 2 ** (steps - 1)
        x = nn.Dense(first * (height >> steps) * (width >> steps), use_bias=False, kernel_init=INIT,
                     dtype=self.dtype)(z)
        x = norm(x.reshape(z.shape[0], height >> steps, width >> steps, first))
        for i in range(steps):
            last = i == steps - 1
            x = UpConv(channels if last else first >> (i + 1), use_bias=last, kernel_init=INIT, dtype=self.dtype,
                       name=f"ConvTranspose_{i}")(x)
            x = jnp.tanh(x) if last else norm(x)
        return x.astype(jnp.float32)


def minibatch_stddev(x, group_size: int):
    """x [B, H, W, C] with one more channel: the standard deviation over each group of consecutive examples,
    averaged over features and pixels (ProGAN's layer). Groups of consecutive examples stay within a device's
    share of the batch, so the same batch gives the same numbers on one device or many."""
    size = math.gcd(group_size, x.shape[0])
    groups = x.reshape((x.shape[0] // size, size) + x.shape[1:])
    spread = jnp.mean(jnp.sqrt(jnp.var(groups, axis=1) + 1e-8), axis=(1, 2, 3))  # [B / size]
    return jnp.concatenate([x, jnp.broadcast_to(jnp.repeat(spread, size)[:, None, None, None],
                                                x.shape[:3] + (1,)).astype(x.dtype)], axis=-1)


class Discriminator(nn.Module):
    features: int = 64  # of the first map; each later one has twice as many
    num_classes: int = 0  # > 0: the projection discriminator
    norm: str = "batch"  # after every convolution but the first: one of NORMS
    minibatch_std: int = 0  # > 1: the last map gains the spread of each group of this many examples
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, labels=None, *, train: bool = False):
        for i in range(upsamplings(x.shape[1])):
            x = nn.Conv(self.features * 2 ** i, (4, 4), strides=(2, 2), padding="SAME", use_bias=i == 0 or
                        self.norm == "none", kernel_init=INIT, dtype=self.dtype)(x)
            if i and self.norm == "batch":
                x = nn.BatchNorm(not train, momentum=self.bn_momentum, axis_name=self.axis_name, dtype=self.dtype)(x)
            elif i and self.norm == "layer":
                x = nn.LayerNorm(dtype=self.dtype)(x)
            x = nn.leaky_relu(x, 0.2)
        if self.minibatch_std > 1:
            x = minibatch_stddev(x, self.minibatch_std)
        h = x.reshape(x.shape[0], -1)
        logits = nn.Dense(1, kernel_init=INIT, dtype=self.dtype)(h)[:, 0]
        if self.num_classes:
            logits += jnp.sum(nn.Embed(self.num_classes, h.shape[-1], embedding_init=INIT, dtype=self.dtype)(labels)
                              * h, axis=-1)
        return logits.astype(jnp.float32)

"""A StyleGAN-style generator (Karras et al. 2019, 2020) for small images: a mapping network from the latent to a
style vector w, and a synthesis network from a learned constant whose convolutions are modulated by w and
demodulated, with per-pixel noise after each, skip connections through an RGB output at every resolution, and
style mixing in training.

Weights use the equalised learning rate (N(0, 1) parameters scaled by He's constant at run time; the mapping
network's by a further 0.01). The randomness a forward pass draws (noise images, the second latent and crossover
of style mixing) comes from one key per example (`noise_keys`), so that it does not depend on how the batch is
split over devices.
"""

import math
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmjax.models.dcgan import upsamplings

GAIN = math.sqrt(2.0)  # of leaky ReLU 0.2, as StyleGAN scales it


def _act(x):
    return nn.leaky_relu(x, 0.2) * GAIN


class EqualDense(nn.Module):
    features: int
    lr_multiplier: float = 1.0
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(1.0 / self.lr_multiplier), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.constant(self.bias_init / self.lr_multiplier), (self.features,))
        return x @ (kernel * (self.lr_multiplier / math.sqrt(x.shape[-1]))) + bias * self.lr_multiplier


class ModulatedConv(nn.Module):
    """A convolution whose input channels are scaled by a style (an affine map of w, starting at 1) and whose
    outputs are demodulated to unit expected variance: StyleGAN2's weight demodulation, computed as scaled
    activations around one shared kernel, which equals convolving each example with its own modulated kernel."""

    features: int
    kernel_size: int = 3
    demodulate: bool = True
    use_bias: bool = False

    @nn.compact
    def __call__(self, x, w):
        channels = x.shape[-1]
        style = EqualDense(channels, bias_init=1.0, name="style")(w)  # [B, in]
        kernel = self.param("kernel", nn.initializers.normal(1.0),
                            (self.kernel_size, self.kernel_size, channels, self.features))
        kernel = kernel / math.sqrt(self.kernel_size * self.kernel_size * channels)
        y = jax.lax.conv_general_dilated(x * style[:, None, None, :], kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.demodulate:  # 1 / ||kernel * style|| over (height, width, in) for each example and output
            y = y * jax.lax.rsqrt(jnp.square(style) @ jnp.sum(jnp.square(kernel), (0, 1)) + 1e-8)[:, None, None, :]
        return y + self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else y


class StyledLayer(nn.Module):
    """A modulated 3x3 convolution, per-pixel noise scaled by a learned strength (starting at 0), bias, leaky ReLU."""

    features: int

    @nn.compact
    def __call__(self, x, w, noise_keys):
        x = ModulatedConv(self.features)(x, w)
        noise = jax.vmap(lambda key: jax.random.normal(key, x.shape[1:3] + (1,)))(noise_keys)
        x = x + self.param("noise_strength", nn.initializers.zeros, ()) * noise
        return _act(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class StyleGenerator(nn.Module):
    image_shape: tuple[int, int, int]  # (height, width, channels)
    features: int = 64  # of every synthesis map
    w_dim: int = 128
    mapping_layers: int = 4
    num_classes: int = 0  # > 0: the label's embedding joins the latent in the mapping network
    style_mixing: float = 0.9  # probability that a training example's styles switch to a second latent's
    draws_noise: ClassVar[bool] = True  # takes `noise_keys`, one key per example

    @nn.compact
    def __call__(self, z, labels=None, *, noise_keys=None, train: bool = False):
        height, width, channels = self.image_shape
        steps = upsamplings(height)
        layers = 2 * steps + 1  # styled convolutions; each resolution's RGB output takes its last one's style
        if noise_keys is None:
            noise_keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(z.shape[0]))
        keys = jax.vmap(lambda k: jax.random.split(k, layers + 3))(noise_keys)  # [B, layers + 3, 2]

        normalize = lambda v: v * jax.lax.rsqrt(jnp.mean(jnp.square(v), -1, keepdims=True) + 1e-8)
        embedding = nn.Embed(self.num_classes, z.shape[-1], name="label_embedding") if self.num_classes else None
        mapping = [EqualDense(self.w_dim, lr_multiplier=0.01, name=f"mapping_{i}") for i in range(self.mapping_layers)]

        def style(z):
            x = normalize(z)
            if embedding is not None:
                x = jnp.concatenate([x, normalize(embedding(labels))], -1)
            for dense in mapping:
                x = _act(dense(x))
            return x

        ws = jnp.repeat(style(z)[:, None], layers, 1)
        if train and self.style_mixing:  # from a random layer on, the styles of a second latent
            other = style(jax.vmap(lambda k: jax.random.normal(k, z.shape[1:]))(keys[:, layers]))
            crossover = jax.vmap(lambda k: jax.random.randint(k, (), 1, layers))(keys[:, layers + 1])
            mixed = jax.vmap(lambda k: jax.random.uniform(k) < self.style_mixing)(keys[:, layers + 2])
            later = (jnp.arange(layers)[None] >= crossover[:, None]) & mixed[:, None]
            ws = jnp.where(later[..., None], other[:, None], ws)

        start = (height >> steps, width >> steps)
        constant = self.param("constant", nn.initializers.normal(1.0), start + (self.features,))
        x = jnp.broadcast_to(constant, (z.shape[0],) + constant.shape)
        x = StyledLayer(self.features, name="layer_0")(x, ws[:, 0], keys[:, 0])
        rgb = ModulatedConv(channels, 1, demodulate=False, use_bias=True, name="to_rgb_0")(x, ws[:, 0])
        for i in range(1, steps + 1):
            x = jax.image.resize(x, (x.shape[0], x.shape[1] * 2, x.shape[2] * 2, x.shape[3]), "bilinear")
            x = StyledLayer(self.features, name=f"layer_{2 * i - 1}")(x, ws[:, 2 * i - 1], keys[:, 2 * i - 1])
            x = StyledLayer(self.features, name=f"layer_{2 * i}")(x, ws[:, 2 * i], keys[:, 2 * i])
            rgb = jax.image.resize(rgb, x.shape[:3] + (channels,), "bilinear") + \
                ModulatedConv(channels, 1, demodulate=False, use_bias=True, name=f"to_rgb_{i}")(x, ws[:, 2 * i])
        return rgb

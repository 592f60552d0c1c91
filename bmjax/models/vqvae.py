"""A VQ-VAE (van den Oord et al. 2017): images to a grid of discrete codes and back, the image tokenizer of
text-to-image.

The encoder halves the image `downsample` times with 4x4 strided convolutions, then residual 3x3 blocks, and
projects each cell to `code_dim`; each cell takes the nearest of `num_codes` codebook vectors. The decoder mirrors
the encoder with transposed convolutions back to pixels (linear outputs; `decode` clips them to [0, 1]). Training
minimises the reconstruction error plus the paper's codebook and commitment terms,

    ||sg[z_e] - e||^2 + commitment * ||z_e - sg[e]||^2,

with the straight-through gradient through the quantisation. `encode` and `decode` are the tokenizer:

    codes = model.apply(variables, images, method=VQVAE.encode)     # int32 [batch, H / 2^d, W / 2^d]
    images = model.apply(variables, codes, method=VQVAE.decode)     # [batch, H, W(, C)] in [0, 1]

Images of any size whose sides divide by 2^downsample are encoded, so a tokenizer trained on single digits reads
canvases of several.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.convnet import CHANNEL_AXES, CONV_AXES, ConvFactory, UpConv, as_images
from bmjax.models.registry import register
from bmjax.models.transformer import partitioned


def _unit(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with the straight-through estimator.

    With `normalize`, encodings and codebook vectors are compared on the unit sphere (l2-normalised, as in Yu et
    al. 2021): the nearest code is the most similar in direction, and no code drifts out of reach of the encoder.
    Without it, a codebook started small (the paper's) tends to collapse onto a few codes.
    """

    num_codes: int
    code_dim: int
    commitment: float = 0.25
    normalize: bool = True

    def setup(self):
        self.codebook = self.param("codebook", partitioned(nn.initializers.normal(1.0), ("codes", "code_dim")),
                                   (self.num_codes, self.code_dim))

    def _vectors(self):
        codebook = self.codebook.astype(jnp.float32)
        return _unit(codebook) if self.normalize else codebook

    def _prepared(self, z):
        z = z.astype(jnp.float32)
        return _unit(z) if self.normalize else z

    def nearest(self, z):
        """The index of the nearest codebook vector to each vector of `z` [..., code_dim]."""
        codebook, z = self._vectors(), self._prepared(z)
        distances = (jnp.sum(z * z, -1, keepdims=True) - 2 * z @ codebook.T + jnp.sum(codebook * codebook, -1))
        return jnp.argmin(distances, -1).astype(jnp.int32)

    def lookup(self, codes):
        return jnp.take(self._vectors(), codes, axis=0)

    def __call__(self, z):
        """(quantised z with straight-through gradients, codes, the codebook and commitment loss per example)."""
        z = self._prepared(z)
        codes = self.nearest(z)
        chosen = self.lookup(codes).astype(z.dtype)
        axes = tuple(range(1, z.ndim))
        codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - chosen), axes)
        commitment_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(chosen)), axes)
        quantized = z + jax.lax.stop_gradient(chosen - z)
        return quantized, codes, codebook_loss + self.commitment * commitment_loss


class ResidualStack(nn.Module):
    """The paper's residual blocks: x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU."""

    features: int
    blocks: int
    conv: ConvFactory

    @nn.compact
    def __call__(self, x):
        for i in range(self.blocks):
            h = self.conv(self.features // 2, 3, use_bias=True, name=f"block_{i}_conv3x3")(nn.relu(x))
            x = x + self.conv(self.features, 1, use_bias=True, name=f"block_{i}_conv1x1")(nn.relu(h))
        return nn.relu(x)


class VQVAE(nn.Module):
    """Images [batch, H, W] or [batch, H, W, C] in [0, 1] <-> codes [batch, H / 2^downsample, W / 2^downsample]."""

    channels: int = 1
    num_codes: int = 64
    code_dim: int = 32
    features: int = 64
    downsample: int = 2
    residual_blocks: int = 2
    commitment: float = 0.25
    normalize_codes: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        conv = ConvFactory(self.dtype, self.param_dtype, kernel_init=nn.initializers.lecun_normal())
        widths = [self.features >> (self.downsample - 1 - i) for i in range(self.downsample)]
        self.down = [conv(w, 4, 2, padding=1, use_bias=True, name=f"down_{i}") for i, w in enumerate(widths)]
        self.encoder_conv = conv(self.features, 3, use_bias=True)
        self.encoder_blocks = ResidualStack(self.features, self.residual_blocks, conv)
        self.to_codes = conv(self.code_dim, 1, use_bias=True)
        self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, self.commitment, self.normalize_codes)
        self.decoder_conv = conv(self.features, 3, use_bias=True)
        self.decoder_blocks = ResidualStack(self.features, self.residual_blocks, conv)
        outs = widths[::-1][1:] + [self.channels]
        self.up = [UpConv(w, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=partitioned(nn.initializers.lecun_normal(), CONV_AXES),
                          bias_init=partitioned(nn.initializers.zeros, CHANNEL_AXES), name=f"up_{i}")
                   for i, w in enumerate(outs)]

    def _continuous(self, images):
        x = as_images(jnp.asarray(images, self.dtype), "VQVAE")
        side = 2 ** self.downsample
        if x.shape[1] % side or x.shape[2] % side:
            raise UsageError(f"the VQ-VAE halves images {self.downsample} times, so their sides must divide by "
                             f"{side}; got {x.shape[1]}x{x.shape[2]} (change --downsample)")
        x = 2.0 * x - 1.0
        for layer in self.down:
            x = nn.relu(layer(x))
        return self.to_codes(self.encoder_blocks(self.encoder_conv(x)))

    def _pixels(self, quantized, squeeze: bool):
        x = self.decoder_blocks(self.decoder_conv(quantized))
        for i, layer in enumerate(self.up):
            x = layer(x)
            x = x if i == len(self.up) - 1 else nn.relu(x)
        x = 0.5 * (x.astype(jnp.float32) + 1.0)  # the encoder reads 2x - 1
        return x[..., 0] if squeeze else x

    def encode(self, images):
        """int32 codes [batch, h, w] of images in [0, 1]."""
        return self.quantizer.nearest(self._continuous(images))

    def decode(self, codes):
        """Images in [0, 1] ([batch, H, W] for one channel) of codes [batch, h, w]."""
        images = self._pixels(self.quantizer.lookup(codes).astype(self.dtype), squeeze=self.channels == 1)
        return jnp.clip(images, 0.0, 1.0)

    def __call__(self, images, *, train: bool = False):
        """{"reconstruction" (shaped like `images`), "auxiliary_loss" (the codebook and commitment loss of each
        example), "code_counts" [batch, num_codes] (how often each code is used in each example)}."""
        quantized, codes, vq_loss = self.quantizer(self._continuous(images))
        counts = jnp.sum(jax.nn.one_hot(codes.reshape(codes.shape[0], -1), self.num_codes), axis=1)
        return {"reconstruction": self._pixels(quantized, squeeze=jnp.ndim(images) == 3), "auxiliary_loss": vq_loss,
                "code_counts": counts}


@register("vqvae")
def build_vqvae(config, io) -> VQVAE:
    shape = getattr(io.inputs, "shape", ())
    if len(shape) not in (2, 3):
        raise UsageError(f"the VQ-VAE encodes images, and this dataset's inputs have shape {tuple(shape)}; choose an "
                         "image dataset")
    return VQVAE(channels=shape[2] if len(shape) == 3 else 1, num_codes=config.num_codes, code_dim=config.code_dim,
                 features=config.features, downsample=config.downsample, residual_blocks=config.residual_blocks,
                 commitment=config.commitment, normalize_codes=config.normalize_codes, dtype=config.compute_dtype)

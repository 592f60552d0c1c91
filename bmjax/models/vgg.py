"""VGG-11, 13, 16 and 19 (Simonyan & Zisserman 2014, configurations A, B, D and E), with and without
BatchNorm, as torchvision builds them; and a variant for small images, as the common CIFAR VGG.

    vgg16 = VGG(num_outputs=1000, depth=16)                                  # 138,357,544 parameters
    small = VGG(num_outputs=10, depth=11, batch_norm=True, small_images=True)  # for 28x28 or 32x32 inputs

`--model=vgg16` (or vgg11, vgg13, vgg19, each also `_bn`) picks the variant from `--stem`: "imagenet",
"small", or "auto" (small for inputs under 64 pixels on their shorter side).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.alexnet import CLASSIFIER_INIT
from bmjax.models.convnet import (ConvFactory, NormFactory, adaptive_avg_pool, as_images, flatten_chw, max_pool,
                                   resolve_stem)
from bmjax.models.registry import register

# The widths of the 3x3 convolutions of each stage (each stage ends in a 2x2 max pool), by depth.
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # A
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),  # B
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),  # D
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),  # E
}


class VGGStage(nn.Module):
    """3x3 convolutions (pad 1, with bias), each followed by BatchNorm if `batch_norm`, and ReLU; then a 2x2
    max pool, with PyTorch's ceil_mode if `ceil_mode`. The unit that `remat` recomputes."""

    widths: Sequence[int]
    batch_norm: bool = False
    ceil_mode: bool = False
    train: bool = False
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = ConvFactory(self.dtype, self.param_dtype)
        norm = NormFactory(self.train, momentum=self.bn_momentum, axis_name=self.axis_name, dtype=self.dtype,
                           param_dtype=self.param_dtype)
        for i, width in enumerate(self.widths):
            x = conv(width, 3, use_bias=True, name=f"conv{i + 1}")(x)
            if self.batch_norm:
                x = norm(name=f"bn{i + 1}")(x)
            x = nn.relu(x)
        if min(x.shape[1:3]) < (1 if self.ceil_mode else 2):
            raise UsageError(f"VGG's {x.shape[1]}x{x.shape[2]} feature maps of width {self.widths[-1]} are too small "
                             "for its 2x2 max pool; use larger images or --stem=small")
        return max_pool(x, 2, 2, ceil_mode=self.ceil_mode)


class VGG(nn.Module):
    """torchvision's VGG: five stages of 3x3 convolutions (pad 1, with bias, then BatchNorm if `batch_norm`,
    then ReLU), each stage ending in a 2x2 max pool; adaptive average pooling to 7x7, then 4096 ReLU, dropout,
    4096 ReLU, dropout, and the classes. Parameters at 1000 classes, as torchvision counts them: vgg11
    132,863,336 (with BatchNorm 132,868,840), vgg13 133,047,848 (133,053,736), vgg16 138,357,544 (138,365,992),
    vgg19 143,667,240 (143,678,248). Initialised as torchvision's: convolutions He normal (fan out), linear
    layers N(0, 0.01), biases zero, BatchNorm's scale one.

    `small_images=True`, the common CIFAR VGG (for 28x28 to 32x32 inputs): the same convolutions, max pools
    with PyTorch's ceil_mode (so that 28x28 inputs also end as 1x1 maps, as 32x32 ones do), no adaptive pooling,
    and a classifier of one hidden layer of 512 (`hidden`), ReLU and dropout, on the flattened final map.

    The features are flattened in PyTorch's channel-major order, so torchvision's weights import with the usual
    kernel transposes only. BatchNorm takes its statistics over the whole batch (through `axis_name` under pmap).
    """

    num_outputs: int
    depth: int = 16  # 11, 13, 16 or 19
    batch_norm: bool = False
    dropout: float = 0.5
    small_images: bool = False
    hidden: Optional[int] = None  # width of the hidden classifier layers: 4096, or 512 with small_images
    bn_momentum: float = 0.9  # Flax's convention: PyTorch's momentum 0.1 is 0.9 here
    axis_name: Optional[str] = None
    remat: bool = False  # recompute each stage (the convolutions before a pool) in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.depth not in STAGES:
            raise UsageError(f"VGG has depths {', '.join(map(str, STAGES))}, not {self.depth}")
        x = as_images(x, f"vgg{self.depth}")
        stage = nn.remat(VGGStage) if self.remat else VGGStage  # named alike either way, so checkpoints fit both
        for i, widths in enumerate(STAGES[self.depth]):
            x = stage(widths, batch_norm=self.batch_norm, ceil_mode=self.small_images, train=train,
                      bn_momentum=self.bn_momentum, axis_name=self.axis_name, dtype=self.dtype,
                      param_dtype=self.param_dtype, name=f"stage{i + 1}")(x)
        if not self.small_images:
            x = adaptive_avg_pool(x, 7)
        x = flatten_chw(x)

        conv = ConvFactory(self.dtype, self.param_dtype)
        dense = lambda features, axes, name: conv.dense(features, name=name, kernel_init=CLASSIFIER_INIT, axes=axes)
        if self.small_images:
            x = nn.relu(dense(self.hidden or 512, ("embed", "mlp"), "fc1")(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            return dense(self.num_outputs, ("mlp", "classes"), "head")(x).astype(jnp.float32)
        hidden = self.hidden or 4096
        x = nn.relu(dense(hidden, ("embed", "mlp"), "fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(dense(hidden, ("mlp", "embed"), "fc2")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_outputs, ("embed", "classes"), "head")(x).astype(jnp.float32)


def _build(config, io, depth: int, batch_norm: bool) -> VGG:
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    return VGG(num_outputs=io.num_outputs, depth=depth, batch_norm=batch_norm, dropout=config.dropout,
               small_images=resolve_stem(config, io, name) == "small",
               bn_momentum=config.bn_momentum if batch_norm else 0.9,
               axis_name=io.axis_name if batch_norm else None, remat=config.remat, dtype=config.compute_dtype)


@register("vgg11")
def vgg11(config, io) -> VGG:
    return _build(config, io, 11, batch_norm=False)


@register("vgg11_bn")
def vgg11_bn(config, io) -> VGG:
    return _build(config, io, 11, batch_norm=True)


@register("vgg13")
def vgg13(config, io) -> VGG:
    return _build(config, io, 13, batch_norm=False)


@register("vgg13_bn")
def vgg13_bn(config, io) -> VGG:
    return _build(config, io, 13, batch_norm=True)


@register("vgg16")
def vgg16(config, io) -> VGG:
    return _build(config, io, 16, batch_norm=False)


@register("vgg16_bn")
def vgg16_bn(config, io) -> VGG:
    return _build(config, io, 16, batch_norm=True)


@register("vgg19")
def vgg19(config, io) -> VGG:
    return _build(config, io, 19, batch_norm=False)


@register("vgg19_bn")
def vgg19_bn(config, io) -> VGG:
    return _build(config, io, 19, batch_norm=True)

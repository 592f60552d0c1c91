"""EfficientNet-B0 to B3 (Tan & Le 2019) as torchvision's efficientnet_b0 ... efficientnet_b3.

    model = EfficientNet(num_outputs=1000, width_mult=1.0, depth_mult=1.0)   # B0: 5,288,548 parameters
    model = efficientnet("b3", num_outputs=10, small_images=True)

Each stage of B0 (expand ratio, kernel, stride, input channels, output channels, blocks) is scaled by
compound scaling: channels become `_make_divisible(c * width_mult, 8)`, blocks `ceil(n * depth_mult)`.
A block (MBConv) is a 1x1 expansion (where the expand ratio is not 1), a depthwise k x k convolution,
squeeze-and-excitation (global average, 1x1 conv with bias to max(1, block input channels // 4), SiLU,
1x1 conv with bias back, sigmoid, times the input), and a 1x1 projection without activation; every
convolution has BatchNorm (epsilon 1e-5, torchvision's for B0-B3) and SiLU. Where a block keeps its shape
its output is added to its input, the branch dropped per example in training with a probability that grows
linearly from 0 at the first block to `stochastic_depth * (blocks - 1) / blocks` at the last (torchvision's
StochasticDepth "row"; the random bits come from the "dropout" rng). The head is a 1x1 convolution to 4x
the last stage's channels (1280 at B0), global average pooling, dropout and a dense classifier.

Parameters at 1000 classes, as torchvision's: B0 5,288,548; B1 7,794,184; B2 9,109,994; B3 12,233,232.
Weights start as torchvision's: convolutions He normal (fan out), BatchNorm scale 1, the classifier
uniform in +-1/sqrt(classes) with zero bias.

`small_images=True` (for 28x28 and 32x32 inputs) gives the stem stride 1 instead of 2: 32x32 images leave
2x2 feature maps at the head instead of 1x1.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.convnet import ConvFactory, NormFactory, as_images, resolve_stem
from bmjax.models.registry import register

# B0's stages: (expand ratio, kernel, stride, input channels, output channels, blocks).
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

# name: (width_mult, depth_mult, dropout), as torchvision's efficientnet_b0 ... b3.
VARIANTS = {"b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3), "b3": (1.2, 1.4, 0.3)}


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's (and TensorFlow's) rounding of channels: the nearest multiple of `divisor`, never more
    than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def stages(width_mult: float, depth_mult: float) -> list[tuple]:
    """The scaled stages: (expand ratio, kernel, stride, input channels, output channels, blocks)."""
    return [(expand, kernel, stride, _make_divisible(c_in * width_mult), _make_divisible(c_out * width_mult),
             int(math.ceil(blocks * depth_mult))) for expand, kernel, stride, c_in, c_out, blocks in B0_STAGES]


def classifier_init(key, shape, dtype=jnp.float32):
    """torchvision's EfficientNet classifier: uniform in +-1/sqrt(out_features)."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvNormAct(nn.Module):
    """torchvision's Conv2dNormActivation: convolution without bias, BatchNorm, SiLU (or none)."""

    features: int
    kernel: int
    conv: ConvFactory
    norm: NormFactory
    strides: int = 1
    groups: int = 1
    activation: bool = True

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, self.kernel, self.strides, groups=self.groups, name="conv")(x)
        x = self.norm(name="bn")(x)
        return nn.silu(x) if self.activation else x


class SqueezeExcitation(nn.Module):
    """Channels scaled by sigmoid(fc2(silu(fc1(mean over the map)))), fc1 and fc2 1x1 convolutions with bias."""

    squeeze_channels: int
    conv: ConvFactory

    @nn.compact
    def __call__(self, x):
        scale = x.mean(axis=(1, 2), keepdims=True)
        scale = nn.silu(self.conv(self.squeeze_channels, 1, use_bias=True, name="fc1")(scale))
        scale = nn.sigmoid(self.conv(x.shape[-1], 1, use_bias=True, name="fc2")(scale))
        return x * scale


def drop_path(module: nn.Module, x, rate: float, train: bool):
    """Stochastic depth per example ("row"): zero a whole example's branch with probability `rate`, scale the
    kept ones by 1 / (1 - rate). Identity in evaluation."""
    if not train or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


class MBConv(nn.Module):
    """An inverted residual block with squeeze-and-excitation (see the module's docstring)."""

    expand_ratio: int
    kernel: int
    strides: int
    out_channels: int
    drop_rate: float
    conv: ConvFactory
    norm: NormFactory

    @nn.compact
    def __call__(self, x):
        in_channels = x.shape[-1]
        expanded = _make_divisible(in_channels * self.expand_ratio)
        y = x
        if expanded != in_channels:
            y = ConvNormAct(expanded, 1, self.conv, self.norm, name="expand")(y)
        y = ConvNormAct(expanded, self.kernel, self.conv, self.norm, strides=self.strides, groups=expanded,
                        name="depthwise")(y)
        y = SqueezeExcitation(max(1, in_channels // 4), self.conv, name="se")(y)
        y = ConvNormAct(self.out_channels, 1, self.conv, self.norm, activation=False, name="project")(y)
        if self.strides == 1 and in_channels == self.out_channels:
            y = drop_path(self, y, self.drop_rate, self.norm.train) + x
        return y


class EfficientNet(nn.Module):
    """EfficientNet at `width_mult` and `depth_mult` (B0: 1.0 and 1.0; see VARIANTS and `efficientnet`)."""

    num_outputs: int
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.2
    stochastic_depth: float = 0.2
    small_images: bool = False
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = as_images(x, "EfficientNet").astype(self.dtype)
        conv = ConvFactory(self.dtype, self.param_dtype)
        norm = NormFactory(train, momentum=self.bn_momentum, epsilon=1e-5, axis_name=self.axis_name,
                           dtype=self.dtype, param_dtype=self.param_dtype)
        block = nn.remat(MBConv) if self.remat else MBConv  # named alike either way
        settings = stages(self.width_mult, self.depth_mult)
        x = ConvNormAct(settings[0][3], 3, conv, norm, strides=1 if self.small_images else 2, name="stem")(x)
        total, index = sum(s[-1] for s in settings), 0
        for stage, (expand, kernel, stride, _, out_channels, blocks) in enumerate(settings):
            for i in range(blocks):
                rate = self.stochastic_depth * index / total
                x = block(expand, kernel, stride if i == 0 else 1, out_channels, rate, conv, norm,
                          name=f"stage{stage + 1}_block{i + 1}")(x)
                index += 1
        x = ConvNormAct(4 * settings[-1][4], 1, conv, norm, name="head")(x)
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return conv.dense(self.num_outputs, name="classifier", kernel_init=classifier_init)(x).astype(jnp.float32)


def efficientnet(variant: str, num_outputs: int, **kwargs) -> EfficientNet:
    """EfficientNet-`variant` ("b0" ... "b3") with its width, depth and dropout; `kwargs` set the rest."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown EfficientNet {variant!r}; choose one of {', '.join(VARIANTS)}")
    width, depth, dropout = VARIANTS[variant]
    return EfficientNet(num_outputs=num_outputs, width_mult=width, depth_mult=depth,
                        **{"dropout": dropout, **kwargs})


def _build(variant: str, config, io) -> EfficientNet:
    return efficientnet(variant, io.num_outputs, stochastic_depth=config.stochastic_depth,
                        small_images=resolve_stem(config, io, f"efficientnet_{variant}") == "small", bn_momentum=config.bn_momentum,
                        axis_name=io.axis_name, remat=config.remat, dtype=config.compute_dtype)


@register("efficientnet_b0")
def build_efficientnet_b0(config, io) -> EfficientNet:
    return _build("b0", config, io)


@register("efficientnet_b1")
def build_efficientnet_b1(config, io) -> EfficientNet:
    return _build("b1", config, io)


@register("efficientnet_b2")
def build_efficientnet_b2(config, io) -> EfficientNet:
    return _build("b2", config, io)


@register("efficientnet_b3")
def build_efficientnet_b3(config, io) -> EfficientNet:
    return _build("b3", config, io)

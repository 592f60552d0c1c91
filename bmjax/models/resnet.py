"""Residual networks (He et al., "Deep Residual Learning for Image Recognition", 2016), with the pre-activation
option of "Identity Mappings in Deep Residual Networks" (He et al., 2016).

Two families share one module, `ResNet`:

* ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottleneck blocks, the stride on the 3x3 convolution as in
  torchvision's "v1.5"), layer for layer torchvision's: at 1000 classes they have torchvision's parameter counts,
  11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808. The ImageNet stem is a 7x7/2 convolution,
  BatchNorm, ReLU and a 3x3/2 max pool; the small-image stem (for 28x28 or 32x32 inputs) a 3x3/1 convolution,
  BatchNorm and ReLU without pooling. Where a block changes width or resolution its shortcut is a 1x1
  convolution (no bias) and BatchNorm.
* The CIFAR ResNet-20/32/44/56 of the paper's section 4.2: a 3x3 convolution to 16 channels, three stages of
  n = (depth - 2) / 6 basic blocks of 16, 32 and 64 channels, global average pooling and a dense layer. Its
  shortcuts are the paper's option A, without parameters: where the shape changes, the input is subsampled by
  the stride and padded with zero channels. At 10 classes: 269,722 / 464,154 / 658,586 / 853,018 parameters,
  the paper's 0.27M / 0.46M / 0.66M / 0.85M.

Parameter names follow torchvision's layout, so that an importer of torchvision or Hugging Face weights maps
them one to one (every index here counts from 0):

    stem_conv, stem_norm                       conv1, bn1
    stage_{i}/block_{j}/conv_{k}, norm_{k}     layer{i+1}.{j}.conv{k+1}, bn{k+1}
    stage_{i}/block_{j}/shortcut_conv, _norm   layer{i+1}.{j}.downsample.0, .1
    head                                       fc

With `preactivation`, each block is BN-ReLU-conv (norm_k comes before conv_k and reads conv_{k-1}'s output,
norm_0 reads the block's input); a shortcut that changes shape reads the pre-activated input and has no norm
of its own, as in the paper's code (fb.resnet.torch's preresnet.lua). The stem keeps its BN-ReLU, which
serves as the pre-activation of the first block ("we adopt the first activation right after conv1 and before
splitting into two paths"), and a final BN-ReLU, `final_norm`, comes before the pooling.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.convnet import ConvFactory, NormFactory, as_images, max_pool, resolve_stem
from bmjax.models.registry import register

# Blocks per stage. The ImageNet ResNets have stages of 64/128/256/512 channels (x4 at a bottleneck's output).
IMAGENET_PRESETS = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), bottleneck=False),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), bottleneck=False),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), bottleneck=True),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), bottleneck=True),
    "resnet152": dict(stage_sizes=(3, 8, 36, 3), bottleneck=True),
}
CIFAR_PRESETS = {
    f"resnet{depth}": dict(stage_sizes=((depth - 2) // 6,) * 3, widths=(16, 32, 64), stem="small", stem_width=16,
                           shortcut="pad")
    for depth in (20, 32, 44, 56)
}
PRESETS = {**IMAGENET_PRESETS, **CIFAR_PRESETS}

SHORTCUTS = ("projection", "pad")


def shortcut(x, features: int, strides: int, kind: str, conv: ConvFactory, norm: Optional[NormFactory]):
    """The block's input as its output's shape: `x` itself, or where width or resolution change a 1x1 projection
    (`kind="projection"`, then BatchNorm unless `norm` is None) or the paper's option A (`kind="pad"`: subsample
    by the stride, zero channels appended). Called inside a block's compact method, whose layers it adds."""
    if strides == 1 and x.shape[-1] == features:
        return x
    if kind == "pad":
        x = x[:, ::strides, ::strides]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))
    x = conv(features, 1, strides, name="shortcut_conv")(x)
    return x if norm is None else norm(name="shortcut_norm")(x)


class ResidualBlock(nn.Module):
    """A basic block (3x3, 3x3) or a bottleneck (1x1, 3x3 with the stride, 1x1 to 4 x `features`) and its
    shortcut; post-activation (conv-BN-ReLU, ReLU after the sum) or, with `preactivation`, BN-ReLU-conv."""

    features: int
    strides: int
    conv: ConvFactory
    norm: NormFactory
    bottleneck: bool = False
    shortcut: str = "projection"
    preactivation: bool = False
    preactivated: bool = False  # preactivation: the input is activated already (the stem's BN-ReLU precedes)
    zero_init_residual: bool = True  # the branch's last BatchNorm starts at 0 (post-activation blocks)

    @nn.compact
    def __call__(self, x):
        f, s = self.features, self.strides
        # (width, kernel, stride) of each convolution of the residual branch
        layers = [(f, 1, 1), (f, 3, s), (4 * f, 1, 1)] if self.bottleneck else [(f, 3, s), (f, 3, 1)]
        out_features = layers[-1][0]
        last = len(layers) - 1

        if self.preactivation:
            pre = x if self.preactivated else nn.relu(self.norm(name="norm_0")(x))
            y = pre
            for k, (width, kernel, stride) in enumerate(layers):
                if k:
                    y = nn.relu(self.norm(name=f"norm_{k}")(y))
                y = self.conv(width, kernel, stride, name=f"conv_{k}")(y)
            changes_shape = s != 1 or x.shape[-1] != out_features
            return y + shortcut(pre if changes_shape else x, out_features, s, self.shortcut, self.conv, None)

        y = x
        for k, (width, kernel, stride) in enumerate(layers):
            y = self.conv(width, kernel, stride, name=f"conv_{k}")(y)
            y = self.norm(zero_init=self.zero_init_residual and k == last, name=f"norm_{k}")(y)
            if k != last:
                y = nn.relu(y)
        return nn.relu(y + shortcut(x, out_features, s, self.shortcut, self.conv, self.norm))


class Stage(nn.Module):
    """`num_blocks` residual blocks of `features` channels; the first has the stage's stride."""

    num_blocks: int
    features: int
    strides: int
    conv: ConvFactory
    norm: NormFactory
    bottleneck: bool = False
    shortcut: str = "projection"
    preactivation: bool = False
    preactivated: bool = False  # of the first block's input
    zero_init_residual: bool = True
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        # Named alike with and without remat, so that checkpoints and imported weights fit both.
        block = nn.remat(ResidualBlock) if self.remat else ResidualBlock
        for j in range(self.num_blocks):
            x = block(self.features, self.strides if j == 0 else 1, self.conv, self.norm, bottleneck=self.bottleneck,
                      shortcut=self.shortcut, preactivation=self.preactivation,
                      preactivated=self.preactivated and j == 0, zero_init_residual=self.zero_init_residual,
                      name=f"block_{j}")(x)
        return x


class ResNet(nn.Module):
    """Images [batch, H, W] or [batch, H, W, C] -> float32 logits [batch, num_outputs].

    `PRESETS[name]` holds each named network's settings: `ResNet(num_outputs=1000, **PRESETS["resnet50"])`.
    Stage i after the first halves the resolution (its first block has stride 2).
    """

    num_outputs: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)  # blocks per stage
    widths: Sequence[int] = (64, 128, 256, 512)  # channels per stage (a bottleneck's output has 4x)
    bottleneck: bool = False
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv, BN, ReLU, 3x3/2 max pool; "small": 3x3/1 conv, BN, ReLU
    stem_width: int = 64
    shortcut: str = "projection"  # where the shape changes: "projection" (1x1 conv + BN) or "pad" (option A)
    preactivation: bool = False
    zero_init_residual: bool = True  # each residual branch's last BatchNorm scale starts at 0 (not preactivation)
    bn_momentum: float = 0.9  # Flax's convention: PyTorch's momentum 0.1
    axis_name: Optional[str] = None  # the pmap axis for BatchNorm's statistics
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.stem not in ("imagenet", "small"):
            raise UsageError(f"unknown ResNet stem {self.stem!r}; choose imagenet or small")
        if self.shortcut not in SHORTCUTS:
            raise UsageError(f"unknown ResNet shortcut {self.shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
        if len(self.stage_sizes) != len(self.widths):
            raise UsageError(f"the ResNet has {len(self.stage_sizes)} stage sizes but {len(self.widths)} widths")
        x = as_images(x, "ResNet").astype(self.dtype)
        conv = ConvFactory(self.dtype, self.param_dtype)
        norm = NormFactory(train, momentum=self.bn_momentum, axis_name=self.axis_name, dtype=self.dtype,
                           param_dtype=self.param_dtype)

        if self.stem == "imagenet":
            x = conv(self.stem_width, 7, 2, padding=3, name="stem_conv")(x)
        else:
            x = conv(self.stem_width, 3, name="stem_conv")(x)
        x = nn.relu(norm(name="stem_norm")(x))
        if self.stem == "imagenet":
            x = max_pool(x, 3, strides=2, padding=1)

        for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            x = Stage(num_blocks, width, 1 if i == 0 else 2, conv, norm, bottleneck=self.bottleneck,
                      shortcut=self.shortcut, preactivation=self.preactivation,
                      preactivated=self.preactivation and i == 0, zero_init_residual=self.zero_init_residual,
                      remat=self.remat, name=f"stage_{i}")(x)
        if self.preactivation:
            x = nn.relu(norm(name="final_norm")(x))

        x = jnp.mean(x, axis=(1, 2))  # global average pooling
        return conv.dense(self.num_outputs, name="head")(x).astype(jnp.float32)


def _build(name: str, config, io, stem: str) -> ResNet:
    return ResNet(num_outputs=io.num_outputs, **{**PRESETS[name], "stem": stem}, preactivation=config.preactivation,
                  bn_momentum=config.bn_momentum, axis_name=io.axis_name, remat=config.remat,
                  dtype=config.compute_dtype)


def _build_imagenet(name: str, config, io) -> ResNet:
    return _build(name, config, io, resolve_stem(config, io, name))


def _build_cifar(name: str, config, io) -> ResNet:
    return _build(name, config, io, "small")  # the CIFAR ResNets have their own stem: config.stem is not read


@register("resnet18")
def build_resnet18(config, io) -> ResNet:
    return _build_imagenet("resnet18", config, io)


@register("resnet34")
def build_resnet34(config, io) -> ResNet:
    return _build_imagenet("resnet34", config, io)


@register("resnet50")
def build_resnet50(config, io) -> ResNet:
    return _build_imagenet("resnet50", config, io)


@register("resnet101")
def build_resnet101(config, io) -> ResNet:
    return _build_imagenet("resnet101", config, io)


@register("resnet152")
def build_resnet152(config, io) -> ResNet:
    return _build_imagenet("resnet152", config, io)


@register("resnet20")
def build_resnet20(config, io) -> ResNet:
    return _build_cifar("resnet20", config, io)


@register("resnet32")
def build_resnet32(config, io) -> ResNet:
    return _build_cifar("resnet32", config, io)


@register("resnet44")
def build_resnet44(config, io) -> ResNet:
    return _build_cifar("resnet44", config, io)


@register("resnet56")
def build_resnet56(config, io) -> ResNet:
    return _build_cifar("resnet56", config, io)

"""Inception-v1 (GoogLeNet, Szegedy et al. 2014) as torchvision's `googlenet`, and a variant for small images.

    model = GoogLeNet(num_outputs=1000)                    # 6,624,904 parameters, as torchvision's
    model = GoogLeNet(num_outputs=1000, aux_heads=True)    # 13,004,888: the two auxiliary classifiers too

The layers are torchvision's, in its order and under its names (conv1, inception3a.branch2.1.conv, ...):
BasicConv2d is a convolution without bias, BatchNorm (epsilon 0.001) and ReLU; the "5x5" branch of every
Inception module has a 3x3 kernel, as torchvision's has (its known departure from the paper, kept here so
that parameter counts and imported weights match). Weights start as torchvision's do: normal with standard
deviation 0.01 (torchvision truncates at +-2, 200 standard deviations out), biases at zero.

With `aux_heads`, the auxiliary classifiers after inception4a and inception4d (average pooling to 4x4,
a 1x1 BasicConv2d of 128 channels, dense 1024, ReLU, dropout 0.7, dense classes) run in training only: there
the model returns `(logits, (aux1_logits, aux2_logits))`, in evaluation only `logits`. Their parameters
exist either way (initialising at train=False creates them too).

`small_images=True` is for 28x28 and 32x32 inputs, as the common CIFAR ports of GoogLeNet have it: the stem
is one 3x3/1 BasicConv2d of 192 channels, without the 7x7/2 convolution and the first two max pools, so
that inception3 runs at the input's resolution (32x32 -> 3a/3b at 32x32, 4a-4e at 16x16, 5a/5b at 8x8).
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from bmjax.models.convnet import (ConvFactory, NormFactory, adaptive_avg_pool, as_images, flatten_chw, max_pool,
                                   resolve_stem)
from bmjax.models.registry import register

# torchvision's GoogLeNet: nn.init.trunc_normal_(std=0.01, a=-2, b=2) for convolutions and linear layers.
INIT = nn.initializers.normal(0.01)

# Inception modules: (name, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5" (a 3x3 kernel), pool projection).
STAGES = {
    "3": (("inception3a", 64, 96, 128, 16, 32, 32), ("inception3b", 128, 128, 192, 32, 96, 64)),
    "4": (("inception4a", 192, 96, 208, 16, 48, 64), ("inception4b", 160, 112, 224, 24, 64, 64),
          ("inception4c", 128, 128, 256, 24, 64, 64), ("inception4d", 112, 144, 288, 32, 64, 64),
          ("inception4e", 256, 160, 320, 32, 128, 128)),
    "5": (("inception5a", 256, 160, 320, 32, 128, 128), ("inception5b", 384, 192, 384, 48, 128, 128)),
}


class BasicConv2d(nn.Module):
    """Convolution (no bias), BatchNorm with epsilon 0.001, ReLU."""

    features: int
    kernel: int
    conv: ConvFactory
    norm: NormFactory
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, self.kernel, self.strides, name="conv")(x)
        return nn.relu(self.norm(name="bn")(x))


class Inception(nn.Module):
    """Four branches, concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (torchvision's "5x5");
    max pool 3/1 -> 1x1."""

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    conv: ConvFactory
    norm: NormFactory

    @nn.compact
    def __call__(self, x):
        layer = lambda features, kernel, name: BasicConv2d(features, kernel, self.conv, self.norm, name=name)
        branch1 = layer(self.ch1x1, 1, "branch1")(x)
        branch2 = layer(self.ch3x3, 3, "branch2_1")(layer(self.ch3x3red, 1, "branch2_0")(x))
        branch3 = layer(self.ch5x5, 3, "branch3_1")(layer(self.ch5x5red, 1, "branch3_0")(x))
        branch4 = layer(self.pool_proj, 1, "branch4_1")(max_pool(x, 3, strides=1, padding=1, ceil_mode=True))
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class InceptionAux(nn.Module):
    """An auxiliary classifier: average pool to 4x4, BasicConv2d 128 1x1, dense 1024, ReLU, dropout 0.7,
    dense classes."""

    num_outputs: int
    conv: ConvFactory
    norm: NormFactory
    train: bool
    dropout: float = 0.7

    @nn.compact
    def __call__(self, x):
        x = adaptive_avg_pool(x, 4)
        x = BasicConv2d(128, 1, self.conv, self.norm, name="conv")(x)
        x = flatten_chw(x)  # PyTorch's flatten order: C, H, W
        x = nn.relu(self.conv.dense(1024, name="fc1", kernel_init=INIT, axes=("embed", "mlp"))(x))
        x = nn.Dropout(self.dropout, deterministic=not self.train)(x)
        return self.conv.dense(self.num_outputs, name="fc2", kernel_init=INIT, axes=("mlp", "classes"))(x)


class GoogLeNet(nn.Module):
    """torchvision's GoogLeNet (see the module's docstring); `small_images` for 28x28 and 32x32 inputs."""

    num_outputs: int
    dropout: float = 0.2
    aux_heads: bool = False
    aux_dropout: float = 0.7
    small_images: bool = False
    bn_momentum: float = 0.9
    axis_name: Optional[str] = None
    remat: bool = False  # recompute each Inception module's activations in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = as_images(x, "GoogLeNet").astype(self.dtype)
        conv = ConvFactory(self.dtype, self.param_dtype, kernel_init=INIT)
        norm = NormFactory(train, momentum=self.bn_momentum, epsilon=1e-3, axis_name=self.axis_name,
                           dtype=self.dtype, param_dtype=self.param_dtype)
        inception = nn.remat(Inception) if self.remat else Inception  # named alike either way
        aux_head = nn.remat(InceptionAux) if self.remat else InceptionAux
        with_aux = self.aux_heads and (train or self.is_initializing())  # parameters made at any init
        if self.small_images:
            x = BasicConv2d(192, 3, conv, norm, name="conv1")(x)
        else:
            x = BasicConv2d(64, 7, conv, norm, strides=2, name="conv1")(x)
            x = max_pool(x, 3, strides=2, ceil_mode=True)
            x = BasicConv2d(64, 1, conv, norm, name="conv2")(x)
            x = BasicConv2d(192, 3, conv, norm, name="conv3")(x)
            x = max_pool(x, 3, strides=2, ceil_mode=True)
        aux = []
        for stage, modules in STAGES.items():
            if stage == "4":
                x = max_pool(x, 3, strides=2, ceil_mode=True)
            elif stage == "5":
                x = max_pool(x, 2, strides=2, ceil_mode=True)
            for name, *channels in modules:
                x = inception(*channels, conv, norm, name=name)(x)
                if with_aux and name in ("inception4a", "inception4d"):
                    head = aux_head(self.num_outputs, conv, norm, train, self.aux_dropout,
                                    name=f"aux{len(aux) + 1}")
                    aux.append(head(x).astype(jnp.float32))
        x = adaptive_avg_pool(x, 1).reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = conv.dense(self.num_outputs, name="fc", kernel_init=INIT)(x).astype(jnp.float32)
        if self.aux_heads and train:
            return logits, tuple(aux)
        return logits


@register("googlenet")
def build_googlenet(config, io) -> GoogLeNet:
    return GoogLeNet(num_outputs=io.num_outputs, aux_heads=config.aux_heads,
                     small_images=resolve_stem(config, io, "googlenet") == "small", bn_momentum=config.bn_momentum,
                     axis_name=io.axis_name, remat=config.remat, dtype=config.compute_dtype)

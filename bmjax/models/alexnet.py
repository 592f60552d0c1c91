"""AlexNet as torchvision builds it (the one-GPU variant of "One weird trick", Krizhevsky 2014), and a variant
for small images.

    alexnet = AlexNet(num_outputs=1000)                      # 61,100,840 parameters, as torchvision's
    small = AlexNet(num_outputs=10, small_images=True)       # for 28x28 or 32x32 inputs

`--model=alexnet` picks the variant from `--stem`: "imagenet", "small", or "auto" (small for inputs under 64
pixels on their shorter side).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.convnet import ConvFactory, adaptive_avg_pool, as_images, flatten_chw, max_pool, resolve_stem
from bmjax.models.registry import register

# torchvision's VGG initialises its linear layers so (AlexNet keeps PyTorch's default; see AlexNet's docstring).
CLASSIFIER_INIT = nn.initializers.normal(0.01)

# (features, kernel, stride, padding) of each convolution, per stage (the convolutions before a max pool).
IMAGENET_STAGES = (((64, 11, 4, 2),), ((192, 5, 1, 2),), ((384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)))
SMALL_STAGES = (((64, 3, 1, 1),), ((192, 5, 1, 2),), ((384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)))
class ConvStage(nn.Module):
    """Convolutions with bias and ReLU, then max pooling `pool` = (window, strides, ceil_mode) unless None;
    the unit that `remat` recomputes. Convolutions are named conv{first}, conv{first + 1}, ..."""

    convs: Sequence[tuple]  # (features, kernel, stride, padding)
    pool: Optional[tuple] = (3, 2, False)
    first: int = 1
    model: str = "AlexNet"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = ConvFactory(self.dtype, self.param_dtype)
        for i, (features, kernel, stride, padding) in enumerate(self.convs):
            name = f"conv{self.first + i}"
            x = nn.relu(conv(features, kernel, stride, padding=padding, use_bias=True, name=name)(x))
        if self.pool is None:
            return x
        window, strides, ceil_mode = self.pool
        if min(x.shape[1:3]) < (1 if ceil_mode else window):
            raise UsageError(f"{self.model}'s {x.shape[1]}x{x.shape[2]} feature maps after {name} are "
                             f"smaller than its {window}x{window} max pool; use larger images or --stem=small")
        return max_pool(x, window, strides, ceil_mode=ceil_mode)


class AlexNet(nn.Module):
    """torchvision's AlexNet: conv 64 11x11/4 (pad 2), max pool 3/2, conv 192 5x5 (pad 2), max pool 3/2, convs
    384, 256, 256 3x3 (pad 1), max pool 3/2, each convolution with bias and ReLU; adaptive average pooling to
    6x6, then dropout, 4096 ReLU, dropout, 4096 ReLU, and the classes. 61,100,840 parameters at 1000 classes.

    `small_images=True`, for 28x28 to 32x32 inputs: the 11x11/4 stem becomes a 3x3 stride-1 convolution (the
    other four and the three overlapping 3/2 max pools stay), which leaves 3x3 maps of 32x32 inputs and 2x2 of
    28x28 ones; no adaptive pooling (it would only copy those cells), and hidden layers of 1024 (`hidden`).

    Beside torchvision: the convolutions start He normal (fan out) and the linear layers N(0, 0.01), both with
    zero biases, as torchvision's VGG (torchvision's AlexNet keeps PyTorch's default U(+-1/sqrt(fan_in)) weights
    and biases, under which signals shrink about sixfold per layer). The small variant's two hidden layers start
    He normal (fan in): at N(0, 0.01) their 1024 inputs shrink the signal threefold each, and the network sat at
    chance for its first 200 steps on Fashion-MNIST. The features are flattened in PyTorch's
    channel-major order, so torchvision's weights import with the usual kernel transposes only.
    """

    num_outputs: int
    dropout: float = 0.5
    small_images: bool = False
    hidden: Optional[int] = None  # width of the two hidden classifier layers: 4096, or 1024 with small_images
    remat: bool = False  # recompute each conv stage (the convolutions before a pool) in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = as_images(x, "AlexNet")
        stage = nn.remat(ConvStage) if self.remat else ConvStage  # named alike either way, so checkpoints fit both
        first = 1
        for i, convs in enumerate(SMALL_STAGES if self.small_images else IMAGENET_STAGES):
            x = stage(convs, first=first, dtype=self.dtype, param_dtype=self.param_dtype, name=f"stage{i + 1}")(x)
            first += len(convs)
        if not self.small_images:
            x = adaptive_avg_pool(x, 6)
        x = flatten_chw(x)

        conv = ConvFactory(self.dtype, self.param_dtype)
        hidden = self.hidden or (1024 if self.small_images else 4096)
        # N(0, 0.01) keeps 4096-wide layers' signals near their scale, but shrinks 1024-wide ones threefold each
        hidden_init = nn.initializers.he_normal() if self.small_images else CLASSIFIER_INIT
        dense = lambda features, axes, name, init=CLASSIFIER_INIT: conv.dense(features, name=name, kernel_init=init,
                                                                             axes=axes)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(dense(hidden, ("embed", "mlp"), "fc1", hidden_init)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(dense(hidden, ("mlp", "embed"), "fc2", hidden_init)(x))
        return dense(self.num_outputs, ("embed", "classes"), "head")(x).astype(jnp.float32)


@register("alexnet")
def alexnet(config, io) -> AlexNet:
    return AlexNet(num_outputs=io.num_outputs, dropout=config.dropout,
                   small_images=resolve_stem(config, io, "alexnet") == "small", remat=config.remat, dtype=config.compute_dtype)

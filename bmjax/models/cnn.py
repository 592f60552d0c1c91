"""The seed convolutional network: conv/ReLU/max-pool stacks, then a dense classifier."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.convnet import max_pool
from bmjax.models.mlp import KERNEL_INIT
from bmjax.models.registry import register


class SeedCNN(nn.Module):
    """Conv k x k ReLU -> max-pool 2 per entry of `conv_features`, then optional hidden Dense layers."""

    num_outputs: int
    conv_features: Sequence[int] = (32, 64)
    hidden_sizes: Sequence[int] = ()
    kernel_size: int = 3
    conv_padding: str = "VALID"
    dropout: float = 0.0
    remat: bool = False  # recompute each convolution's output in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if x.ndim == 3:  # [batch, height, width] -> add a channel axis
            x = x[..., None]
        conv = nn.remat(nn.Conv) if self.remat else nn.Conv  # named alike either way, so checkpoints fit both
        size = x.shape[1:3]
        for i, features in enumerate(self.conv_features):
            x = conv(features, (self.kernel_size,) * 2, padding=self.conv_padding, kernel_init=KERNEL_INIT,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=f"Conv_{i}")(x)
            if min(x.shape[1:3]) < 2:
                raise UsageError(f"the CNN's inputs of {size[0]}x{size[1]} leave {x.shape[1]}x{x.shape[2]} feature "
                                 f"maps after convolution {i + 1} ({self.conv_padding} padding), too few to pool; use "
                                 "--conv_padding=SAME, a smaller --kernel_size or fewer --conv_features")
            x = max_pool(nn.relu(x), 2)  # a reshape and max on CPU: its gradient is far faster there
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width, kernel_init=KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, kernel_init=KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype)(x)


@register("cnn")
def build_cnn(config, io) -> SeedCNN:
    return SeedCNN(num_outputs=io.num_outputs, conv_features=config.conv_features, hidden_sizes=config.hidden_sizes,
                   kernel_size=config.kernel_size, conv_padding=config.conv_padding, dropout=config.dropout,
                   remat=config.remat, dtype=config.compute_dtype)

"""A configurable multi-layer perceptron."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}


class MLP(nn.Module):
    """Flattens its input, then Dense -> activation -> dropout for each hidden width, then Dense."""

    num_outputs: int
    hidden_sizes: Sequence[int] = (128,)
    activation: str = "relu"
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_sizes:
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = ACTIVATIONS[self.activation](x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=self.param_dtype)(x)

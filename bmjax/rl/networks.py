"""The agents' networks: an MLP for vector observations; for frames (MinAtar's 10x10 maps), a small CNN first or
the frame flattened into the MLP (PureJaxRL's choice for MinAtar).

Weights start orthogonal (gain sqrt 2 in the torso, 0.01 for the policy's logits, 1 for values), as the PPO
implementations whose numbers bmjax is held to do.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}
FRAMES = ("cnn", "flatten", "nature")


class Torso(nn.Module):
    """Dense layers. Frames [..., H, W, C] (`frames` set) go through a 3x3 convolution of `conv_features` filters
    first ("cnn"), through the DQN paper's three for Atari's 84x84 frames ("nature": 32 8x8 filters of stride 4,
    64 4x4 of stride 2, 64 3x3), or straight into them ("flatten")."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"
    frames: Optional[str] = None
    conv_features: int = 16

    @nn.compact
    def __call__(self, obs):
        act = ACTIVATIONS[self.activation]
        x = obs.astype(jnp.float32)
        convolutions = {"cnn": [(self.conv_features, 3, 1)], "nature": [(32, 8, 4), (64, 4, 2), (64, 3, 1)]}
        for features, size, stride in convolutions.get(self.frames, []):
            x = act(nn.Conv(features, (size, size), (stride, stride), padding="VALID",
                            kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        if self.frames:
            x = x.reshape(*x.shape[:-3], -1)
        for width in self.hidden_sizes:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return x


class ActorCritic(nn.Module):
    """Policy logits and a value, from two torsos of the same shape (no shared features)."""

    num_actions: int
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    frames: Optional[str] = None

    @nn.compact
    def __call__(self, obs, *, train: bool = False):
        logits = nn.Dense(self.num_actions, kernel_init=nn.initializers.orthogonal(0.01))(
            Torso(self.hidden_sizes, self.activation, self.frames, name="actor")(obs))
        value = nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(
            Torso(self.hidden_sizes, self.activation, self.frames, name="critic")(obs))
        return logits, value[..., 0]


class QNetwork(nn.Module):
    """An action value per action."""

    num_actions: int
    hidden_sizes: Sequence[int] = (120, 84)
    activation: str = "relu"
    frames: Optional[str] = None

    @nn.compact
    def __call__(self, obs, *, train: bool = False):
        return nn.Dense(self.num_actions)(Torso(self.hidden_sizes, self.activation, self.frames)(obs))

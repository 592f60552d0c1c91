"""MNIST-1D (Greydanus 2020): an MLP, a CNN and a GRU side by side, on the digits' 1-D signals and with their
40 positions shuffled (which leaves the MLP as it was and takes from the CNN and GRU what they owe to order).

    python -m experiments.mnist1d --workdir=runs/mnist1d_gru --preset=gru --num_seeds=3
    python -m experiments.mnist1d --workdir=runs/mnist1d_cnn_shuffled --preset=cnn --dataset=mnist1d_shuffled

The models and recipe are the paper's (its notebook's `MLPBase`, `ConvBase`, `GRUBase`: Adam 1e-2, batch 100,
6000 steps; the GRU initialised as PyTorch does, `--rnn_init=torch`); the data is generated locally with the
mnist1d package's defaults (4000 train, 1000 test), the same arrays as the paper's pickle.
"""

import dataclasses

import flax.linen as nn
import numpy as np

from bmjax import cli, data, models
from bmjax.config import Config, field
from bmjax.data.sources import ArraySource
from bmjax.models.rnn import CELLS, INITS, POOLINGS

SHUFFLE_SEED = 42  # the paper's permutation: np.random.seed(42); np.random.permutation(40)


@data.register("mnist1d_shuffled")
def mnist1d_shuffled(spec):
    """MNIST-1D with its positions permuted once, the same way for every example and split."""
    dataset = data.load(spec.replace(name="mnist1d"))
    order = np.random.RandomState(SHUFFLE_SEED).permutation(dataset.info.feature_shape[0])
    permuted = lambda split: None if split is None else ArraySource(split.x[:, order], split.y)
    return dataclasses.replace(dataset, info=dataclasses.replace(dataset.info, name="mnist1d_shuffled"),
                               train=permuted(dataset.train), validation=permuted(dataset.validation),
                               test=permuted(dataset.test))


class ResidualMLP(nn.Module):
    """The paper's MLP: dense-relu, a residual dense-relu, a linear classifier."""

    num_outputs: int
    width: int = 100

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.relu(nn.Dense(self.width)(x))
        h = h + nn.relu(nn.Dense(self.width)(h))
        return nn.Dense(self.num_outputs)(h)


class StridedCNN(nn.Module):
    """The paper's CNN: three stride-2 1-D convolutions (kernels 5, 3, 3; padding 1) and a linear classifier over
    the flattened features (25 channels x 5 positions for 40 inputs)."""

    num_outputs: int
    channels: int = 25

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = x[..., None]
        for kernel in (5, 3, 3):
            h = nn.relu(nn.Conv(self.channels, (kernel,), strides=2, padding=[(1, 1)])(h))
        return nn.Dense(self.num_outputs)(h.reshape(h.shape[0], -1))


@models.register("mnist1d_mlp")
def mnist1d_mlp(config: "Mnist1d", io: models.ModelIO) -> ResidualMLP:
    return ResidualMLP(io.num_outputs, config.hidden_size)


@models.register("mnist1d_cnn")
def mnist1d_cnn(config: "Mnist1d", io: models.ModelIO) -> StridedCNN:
    return StridedCNN(io.num_outputs, config.channels)


PRESETS = {
    "mlp": dict(model="mnist1d_mlp", hidden_size=100),
    "cnn": dict(model="mnist1d_cnn"),
    # A bidirectional GRU of 6 units whose 40 x 12 outputs, flattened, feed the classifier.
    "gru": dict(model="rnn", cell="gru", hidden_size=6, bidirectional=True, pooling="flatten"),
}


@dataclasses.dataclass(frozen=True)
class Mnist1d(Config):
    dataset: str = "mnist1d"
    model: str = "rnn"
    hidden_size: int = field(6, "Width of the MLP's layers, or of each direction of the recurrent layers.")
    channels: int = field(25, "Channels of each convolution of mnist1d_cnn.")
    cell: str = field("gru", "Recurrent cell of --model=rnn.", CELLS)
    num_layers: int = field(1, "Recurrent layers.")
    rnn_init: str = field("torch", "Initialisation of the recurrent cells: flax's (LeCun normal inputs, orthogonal "
                                "recurrence, zero biases) or torch's (all ~ U(+-1/sqrt(hidden_size))).", INITS)
    bidirectional: bool = field(True, "Read each signal in both directions.")
    pooling: str = field("flatten", "What the classifier reads of the recurrent outputs: the last state, their "
                                    "mean or max over time, or all of them.", POOLINGS)
    embed_dim: int = field(1, "Unused by float signals (token inputs are embedded to this width).")
    batch_size: int = 100
    train_steps: int = 6000
    learning_rate: float = 1e-2
    log_every_steps: int = 250
    eval_every_steps: int = 1000
    checkpoint_every_steps: int = 2000


if __name__ == "__main__":
    cli.main(Mnist1d, presets=PRESETS)

"""Seed MLP on MNIST: 784 -> 128 ReLU -> 10, Adam, batch 64, 10 epochs, 20% held out for validation.

    python -m experiments.mnist_mlp --workdir=runs/mnist_mlp
"""

import dataclasses

from bmjax import cli
from bmjax.config import Config


@dataclasses.dataclass(frozen=True)
class MnistMlp(Config):
    dataset: str = "mnist"
    model: str = "mlp"
    hidden_sizes: tuple[int, ...] = (128,)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 10
    validation_split: float = 0.2


if __name__ == "__main__":
    cli.main(MnistMlp)

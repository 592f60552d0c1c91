"""Seed CNN on MNIST: Conv 32 3x3 ReLU -> max-pool 2 -> Conv 64 3x3 ReLU -> max-pool 2 -> Dense 10, Adam, 5 epochs.

Adam's step size decays along a cosine: over five epochs that annealing is worth about 0.3% of test
accuracy (0.990 against 0.987 at a constant 1e-3).

    python -m experiments.mnist_cnn --workdir=runs/mnist_cnn
"""

import dataclasses

from bmjax import cli
from bmjax.config import Config


@dataclasses.dataclass(frozen=True)
class MnistCnn(Config):
    dataset: str = "mnist"
    model: str = "cnn"
    conv_features: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    hidden_sizes: tuple[int, ...] = ()
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    batch_size: int = 32
    epochs: int = 5
    validation_split: float = 0.1
    # XLA:CPU runs convolutions inside loops several times slower (jax#12868): one step per call there.
    # On TPU and GPU, --steps_per_call=0 runs each segment in one lax.scan.
    steps_per_call: int = 1


if __name__ == "__main__":
    cli.main(MnistCnn)

"""Seed binary classifier: 64 ReLU -> 32 ReLU -> 1 sigmoid, binary cross-entropy, Adam 1e-3, batch 32, 50 epochs.

Standardised features; prints the classification report. Data: breast_cancer, or
the synthetic set (`--dataset=synthetic --synthetic_features=10`).

    python -m experiments.tabular_binary --workdir=runs/tabular_binary
"""

import dataclasses

from bmjax import cli
from bmjax.config import Config


@dataclasses.dataclass(frozen=True)
class TabularBinary(Config):
    dataset: str = "breast_cancer"
    normalize: str = "standardize"
    model: str = "mlp"
    task: str = "binary"
    hidden_sizes: tuple[int, ...] = (64, 32)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 50
    validation_split: float = 0.1
    log_every_steps: int = 50


if __name__ == "__main__":
    cli.main(TabularBinary)

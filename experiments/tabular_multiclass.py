"""Seed three-class classifier: standardised features -> 50 ReLU -> 3 softmax, Adam, cross-entropy, on wine.

    python -m experiments.tabular_multiclass --workdir=runs/tabular_multiclass
"""

import dataclasses

from bmjax import cli
from bmjax.config import Config


@dataclasses.dataclass(frozen=True)
class TabularMulticlass(Config):
    dataset: str = "wine"
    normalize: str = "standardize"
    model: str = "mlp"
    task: str = "classification"
    hidden_sizes: tuple[int, ...] = (50,)
    optimizer: str = "adam"
    learning_rate: float = 1e-2
    batch_size: int = 16
    epochs: int = 50
    validation_split: float = 0.1
    log_every_steps: int = 50


if __name__ == "__main__":
    cli.main(TabularMulticlass)

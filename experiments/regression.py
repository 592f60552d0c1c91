"""MSE regression on the diabetes data: standardised features -> 64 ReLU -> 64 ReLU -> 1; reports MSE, MAE, R².

    python -m experiments.regression --workdir=runs/regression
"""

import dataclasses

from bmjax import cli
from bmjax.config import Config


@dataclasses.dataclass(frozen=True)
class Regression(Config):
    dataset: str = "diabetes"
    normalize: str = "standardize"
    model: str = "mlp"
    task: str = "regression"
    hidden_sizes: tuple[int, ...] = (64, 64)
    optimizer: str = "adam"
    learning_rate: float = 1e-2
    batch_size: int = 32
    epochs: int = 100
    validation_split: float = 0.1
    log_every_steps: int = 50


if __name__ == "__main__":
    cli.main(Regression)

"""MSE regression on the diabetes data: standardised features -> 16 ReLU -> 1; reports MSE, MAE, R².

Diabetes has 442 examples: a small network with a small step size generalises best
(test R² about 0.40, where least squares gets 0.33 on the same split).

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
    hidden_sizes: tuple[int, ...] = (16,)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 100
    validation_split: float = 0.1
    log_every_steps: int = 50


if __name__ == "__main__":
    cli.main(Regression)

"""Matrix factorisation with biases, rating = mu + b_u + b_i + <p_u, q_i>, on ratings of known truth or MovieLens.

    python -m experiments.matrix_factorization --workdir=runs/mf                  # generated, noise 0.5
    python -m experiments.matrix_factorization --workdir=runs/mf --num_seeds=3
    python -m experiments.matrix_factorization --workdir=runs/mf100k --dataset=movielens/100k-ratings

The generated set (`latent_factors`): --num_users x --num_items ratings from rank --latent_rank factors, biases
and a global offset, with Gaussian noise of standard deviation --rating_noise, a random --observed_share of the
pairs observed and split 80/10/10 into train, validation and test. No model can predict the noise, so the test
RMSE is bounded below by --rating_noise; a model that recovers the factors comes close to it. Trained with Adam on
the squared error of standardised ratings and an L2 penalty on the factor and bias tables (--l2).
"""

import dataclasses
from typing import ClassVar

from bmjax import cli, recommend
from bmjax.config import Config, field
from bmjax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class MatrixFactorization(Config):
    FEEDBACK: ClassVar[str] = "ratings"  # the form bmjax.data.ratings reads the dataset in

    dataset: str = field("latent_factors", "latent_factors (generated), movielens/100k-ratings or "
                                           "movielens/1m-ratings (TFDS).")
    model: str = "matrix_factorization"
    embed_dim: int = field(8, "Width of the user and item factors.")
    init_std: float = field(0.1, "Standard deviation of the factors' initialisation.")
    num_users: int = field(400, "Users of the generated set.")
    num_items: int = field(300, "Items of the generated set.")
    latent_rank: int = field(4, "Rank of the generated set's true factors.")
    rating_noise: float = field(0.5, "Standard deviation of the generated set's Gaussian rating noise.")
    observed_share: float = field(0.5, "Share of the generated set's user x item pairs observed.")
    data_seed: int = field(0, "Seed of the generated set and of every dataset's split.")
    batch_size: int = 256
    epochs: int = 20
    learning_rate: float = 3e-3
    lr_schedule: str = "cosine"
    l2: float = 5e-5
    eval_batch_size: int = 4096

    def validate(self) -> "MatrixFactorization":
        super().validate()
        for name in ("embed_dim", "num_users", "num_items", "latent_rank", "init_std"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.rating_noise < 0:
            raise UsageError(f"--rating_noise must not be negative, got {self.rating_noise}")
        if not 0 < self.observed_share <= 1:
            raise UsageError(f"--observed_share must lie in (0, 1], got {self.observed_share}")
        return self

    def build_task(self, dataset):
        return recommend.create_task(dataset)


if __name__ == "__main__":
    cli.main(MatrixFactorization)

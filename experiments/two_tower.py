"""Two-tower retrieval (Yi et al. 2019): a user tower and an item tower scored by their dot product, trained with
in-batch negatives, evaluated against the whole catalogue beside a popularity baseline.

    python -m experiments.two_tower --workdir=runs/tt                          # generated interactions
    python -m experiments.two_tower --workdir=runs/tt100k --dataset=movielens/100k-ratings

Each user's interaction is a softmax over the global batch's items (its own the positive, a repeat of it left
out; under pmap the items are gathered from every device), with the log of each item's share of the training
interactions taken off its score (--logq_correction). Each user's last two interactions are held out (the
generated set's in random order, MovieLens's by time): one for validation, one for test. Evaluation ranks every
catalogue item but the user's other known ones: recall@10 and NDCG@10. `result.json` also holds `popularity`,
the same numbers for ranking items by their training interactions.

The generated set (`latent_factors`): --interactions_per_user distinct items per user, drawn with probabilities
∝ exp(2 b_i + <p_u, q_i>) from rank --latent_rank factors (a popularity skew and each user's taste).
"""

import dataclasses
import json
import os
from typing import ClassVar

import jax

import bmjax
from bmjax import cli, data, recommend
from bmjax.config import Config, field
from bmjax.errors import UsageError
from bmjax.train import runlog


@dataclasses.dataclass(frozen=True)
class TwoTower(Config):
    FEEDBACK: ClassVar[str] = "interactions"  # the form bmjax.data.ratings reads the dataset in

    dataset: str = field("latent_factors", "latent_factors (generated), movielens/100k-ratings or "
                                           "movielens/1m-ratings (TFDS).")
    model: str = "two_tower"
    embed_dim: int = field(32, "Width of each tower's id embedding.")
    hidden_sizes: tuple[int, ...] = ()  # each tower's ReLU layers after its embedding (none: the embedding itself)
    output_dim: int = field(32, "Width of each tower's output, after hidden layers.")
    temperature: float = field(0.1, "Scores are dot products divided by this.")
    unit_vectors: bool = field(True, "Unit-length tower outputs (scores are cosines over the temperature).")
    logq_correction: bool = field(True, "Take the log of each item's share of the training interactions off its "
                                        "in-batch score.")
    num_users: int = field(2000, "Users of the generated set.")
    num_items: int = field(500, "Items of the generated set.")
    latent_rank: int = field(8, "Rank of the generated set's true factors.")
    interactions_per_user: int = field(50, "Distinct items each user of the generated set interacts with.")
    data_seed: int = field(0, "Seed of the generated set and of every dataset's split.")
    batch_size: int = 256
    epochs: int = 10
    learning_rate: float = 3e-3
    eval_batch_size: int = 1024

    def validate(self) -> "TwoTower":
        super().validate()
        for name in ("embed_dim", "output_dim", "num_users", "num_items", "latent_rank", "temperature"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.grad_accum_steps > 1:
            raise UsageError("in-batch negatives come from the whole batch, which --grad_accum_steps would split; "
                             "leave --grad_accum_steps at 1")
        return self

    def build_task(self, dataset):
        return recommend.create_task(dataset)


def run(config: TwoTower, command: str = "experiments.two_tower") -> dict:
    """Trains (or reports) the run, then adds the popularity baseline on the same splits to result.json."""
    result = bmjax.run(config, command)
    if "popularity" not in result:
        result["popularity"] = recommend.popularity_baseline(data.load(data.DataSpec.of(config)))
        path = os.path.join(os.path.abspath(config.workdir), "result.json")
        if jax.process_index() == 0:  # which alone writes results
            with open(path, "w") as f:
                json.dump(result, f, indent=2)
        for split, summary in result["popularity"].items():
            print(f"popularity baseline, {split}: {runlog.format_numbers(summary, '.4f')}")
    return result


if __name__ == "__main__":
    cli.main(TwoTower, entry=run)

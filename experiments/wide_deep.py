"""Wide & Deep (Cheng et al. 2016) for clicks: a linear model over sparse ids and their crosses beside an MLP over
their embeddings, trained jointly to one logit.

    python -m experiments.wide_deep --workdir=runs/wd                         # generated clicks
    python -m experiments.wide_deep --workdir=runs/deep --parts=deep          # the deep part alone
    python -m experiments.wide_deep --workdir=runs/wd100k --dataset=movielens/100k-ratings

The generated set (`crossed_clicks`): categorical fields f0, f1, ... of --click_cardinalities values and two
dense features, whose click log-odds add per-field effects and a random table over the pair (f0, f1) of standard
deviation --cross_strength; --crosses=f0*f1 (the default there) gives the wide part that crossed feature.
MovieLens: a click is a rating of at least --click_threshold stars; the fields are user, movie, age, occupation,
gender and genre (a movie's genres, averaged in the deep part), crossed by default as gender*genre, age*genre and
occupation*genre. Crosses are hashed into --cross_buckets buckets. One optimizer (Adam) trains both parts, where
the paper used FTRL for the wide part; --l1 and --l2 penalise the tables and kernels.
"""

import dataclasses
from typing import ClassVar

from bmjax import cli, recommend
from bmjax.config import Config, field
from bmjax.errors import UsageError

PARTS = ("wide_deep", "deep", "wide")


@dataclasses.dataclass(frozen=True)
class WideDeep(Config):
    FEEDBACK: ClassVar[str] = "clicks"  # the form bmjax.data.ratings reads the dataset in

    dataset: str = field("crossed_clicks", "crossed_clicks (generated), movielens/100k-ratings or "
                                           "movielens/1m-ratings (TFDS).")
    model: str = "wide_deep"
    parts: str = field("wide_deep", "Which parts make the logit: both, the deep part alone or the wide part alone.",
                       PARTS)
    embed_dim: int = field(8, "Width of each categorical field's embedding in the deep part.")
    hidden_sizes: tuple[int, ...] = (64, 32)
    crosses: str = field("auto", "The wide part's crossed features, field*field pairs separated by commas (auto: "
                                 "f0*f1 on crossed_clicks, gender*genre,age*genre,occupation*genre on MovieLens; "
                                 "empty for none).")
    cross_buckets: int = field(4096, "Hash buckets of the crossed features.")
    click_threshold: float = field(4.0, "MovieLens: the least rating that counts as a click.")
    click_examples: int = field(50_000, "Examples of the generated set.")
    click_cardinalities: tuple[int, ...] = field((20, 20, 10, 10), "Values of each categorical field of the "
                                                                   "generated set.")
    cross_strength: float = field(1.0, "Standard deviation of the generated set's effect of the cross f0*f1 on the "
                                       "log-odds.")
    data_seed: int = field(0, "Seed of the generated set and of every dataset's split.")
    batch_size: int = 256
    epochs: int = 10
    learning_rate: float = 1e-3
    eval_batch_size: int = 4096

    def validate(self) -> "WideDeep":
        super().validate()
        for name in ("embed_dim", "cross_buckets", "click_examples"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.cross_strength < 0:
            raise UsageError(f"--cross_strength must not be negative, got {self.cross_strength}")
        return self

    def build_task(self, dataset):
        return recommend.create_task(dataset)


if __name__ == "__main__":
    cli.main(WideDeep)

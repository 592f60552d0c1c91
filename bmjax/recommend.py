"""Recommender tasks and their metrics, as sums that add across batches and devices; the recommender experiments
train with them through the supervised program (`Config.build_task`).

- `Rating` (matrix factorisation): squared error; RMSE and MAE in stars.
- `Click` (Wide & Deep): binary cross-entropy; AUC from per-class histograms of the predicted probability over
  `AUC_BINS` equal bins (pairs within one bin count one half), log loss.
- `Retrieval` (two-tower): softmax cross-entropy over the batch's items in training, over the catalogue in
  evaluation; recall@k and NDCG@k of the held-out item among the items the user has not interacted with.

`popularity_baseline` ranks items by their training interactions, through the same sums.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmjax import data, losses, tasks
from bmjax.errors import UsageError
from bmjax.models.recommenders import leave_out

AUC_BINS = 1024
RANKS = (10,)  # the k of recall@k and NDCG@k


# ---------------------------------------------------------------------------------------------------------------
# Metric sums and what follows from them.

def auc_sums(logits, labels, mask, bins: int = AUC_BINS) -> dict:
    """{"positives", "negatives"}: [bins] weighted counts of each class's predicted probability per bin."""
    probabilities = jax.nn.sigmoid(logits.reshape(-1).astype(jnp.float32))
    at = jnp.clip((probabilities * bins).astype(jnp.int32), 0, bins - 1)
    positive = labels.reshape(-1).astype(jnp.float32) * mask
    negative = (1.0 - labels.reshape(-1).astype(jnp.float32)) * mask
    histogram = lambda w: jnp.zeros(bins, jnp.float32).at[at].add(w)
    return {"positives": histogram(positive), "negatives": histogram(negative)}


def auc(positives, negatives) -> float:
    """The area under the ROC curve from `auc_sums`: the chance a positive outranks a negative, ties one half."""
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    below = np.cumsum(negatives) - negatives  # negatives in lower bins
    pairs = positives.sum() * negatives.sum()
    return float(np.sum(positives * (below + 0.5 * negatives)) / pairs) if pairs else float("nan")


def ranking_sums(scores, targets, mask, ks: Sequence[int] = RANKS) -> dict:
    """{"ranked", "recall@k", "ndcg@k"}: sums over the rows of whether the target is among the k highest scores,
    and of 1 / log2(2 + its rank) when it is (one relevant item: the ideal DCG is 1). Rank = the number of
    scores above the target's."""
    target_scores = jnp.take_along_axis(scores, targets[:, None].astype(jnp.int32), axis=-1)
    rank = jnp.sum(scores > target_scores, axis=-1)
    sums = {"ranked": jnp.sum(mask)}
    for k in ks:
        hit = (rank < k) * mask
        sums[f"recall@{k}"] = jnp.sum(hit)
        sums[f"ndcg@{k}"] = jnp.sum(hit / jnp.log2(2.0 + rank))
    return sums


def ranking_summary(sums, ks: Sequence[int] = RANKS) -> dict:
    count = float(sums["ranked"])
    return {name: float(sums[name]) / count for k in ks for name in (f"recall@{k}", f"ndcg@{k}")}


# ---------------------------------------------------------------------------------------------------------------
# Tasks.

class Rating(tasks.Regression):
    """Squared error on standardised ratings (the model's offset starts at the mean); RMSE and MAE in stars."""

    def summarize(self, sums, detailed: bool = False) -> dict:
        summary = super().summarize(sums, detailed)
        return {"loss": summary["loss"], "rmse": math.sqrt(summary["mse"]), "mae": summary["mae"],
                "mse": summary["mse"], "r2": summary["r2"]}


class Click(tasks.Binary):
    """One logit per example, binary cross-entropy; AUC and log loss beside two-class classification's numbers."""

    def metric_sums(self, outputs, labels, example_losses, weights, mask):
        return {**super().metric_sums(outputs, labels, example_losses, weights, mask),
                **auc_sums(outputs, labels, mask)}

    def summarize(self, sums, detailed: bool = False) -> dict:
        summary = super().summarize(sums, detailed)
        summary = {"loss": summary["loss"], "auc": auc(sums["positives"], sums["negatives"]),
                   "log_loss": summary["loss"], **summary}
        if detailed:
            summary["click_rate"] = float(np.sum(sums["positives"]) / sums["count"])
        return summary


class Retrieval(tasks.Task):
    """Softmax cross-entropy of the model's scores at its target column (`bmjax.models.recommenders.TwoTower`):
    in-batch in training, over the catalogue in evaluation, where recall@k and NDCG@k are also summed."""

    def __init__(self, num_items: int, ks: Sequence[int] = RANKS):
        self.num_outputs, self.ks = num_items, tuple(ks)

    def loss(self, outputs, labels):
        scores = outputs["catalogue_scores"] if "catalogue_scores" in outputs else outputs["scores"]
        per_example = losses.softmax_cross_entropy(scores, outputs["target"])
        return per_example, jnp.ones_like(per_example)

    def metric_sums(self, outputs, labels, example_losses, weights, mask):
        sums = {"loss": jnp.sum(example_losses * mask), "count": jnp.sum(mask)}
        if "catalogue_scores" in outputs:
            sums.update(ranking_sums(outputs["catalogue_scores"], outputs["target"], mask, self.ks))
        return sums

    def summarize(self, sums, detailed: bool = False) -> dict:
        summary = {"loss": float(sums["loss"] / sums["count"])}
        if "ranked" in sums:
            summary.update(ranking_summary(sums, self.ks))
        return summary


def create_task(dataset: data.Dataset):
    """The recommender task for the form the dataset came in (an experiment's `Config.build_task`)."""
    info = dataset.info
    if info.vocab_size is None:
        raise UsageError(f"--dataset={info.name} is not a recommendation dataset; use latent_factors, "
                         "crossed_clicks, movielens/100k-ratings or movielens/1m-ratings")
    if info.task == "retrieval":
        return Retrieval(info.num_classes)
    if info.task == "classification":
        return Click(info.class_names)
    ratings = dataset.train[np.arange(len(dataset.train))]["y"]
    return Rating(np.mean(ratings), np.std(ratings))


def popularity_baseline(dataset: data.Dataset, batch_size: int = 1024) -> dict:
    """{split: recall@k and NDCG@k} of ranking every catalogue item by its number of training interactions (ties
    by id), the user's other known items left out: the same sums as the two-tower model's evaluation."""
    num_items = dataset.info.num_classes
    counts = np.bincount(dataset.train.x["item"], minlength=num_items + 1)[:num_items]
    order = np.lexsort((np.arange(num_items), -counts))  # most interactions first, ties by id
    scores = np.empty(num_items, np.float32)
    scores[order] = -np.arange(num_items)  # distinct and exact in float32

    scores_of = jax.jit(lambda seen: leave_out(jnp.broadcast_to(scores, (seen.shape[0], num_items)), seen))
    result = {}
    for split in ("validation", "test"):
        source = getattr(dataset, split)
        total = None
        for start in range(0, len(source), batch_size):
            rows = source[np.arange(start, min(start + batch_size, len(source)))]
            sums = ranking_sums(scores_of(rows["x"]["seen"]), jnp.asarray(rows["x"]["item"]),
                                jnp.ones(len(rows["y"]), jnp.float32))
            sums = jax.tree.map(lambda s: np.float64(s), sums)
            total = sums if total is None else jax.tree.map(np.add, total, sums)
        result[split] = ranking_summary(total)
    return result

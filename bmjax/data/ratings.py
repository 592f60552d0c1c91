"""Recommendation data: generated sets whose truth is known, and MovieLens through TFDS, in the three forms the
recommender experiments read (`Config.FEEDBACK` says which):

- "ratings": x = {"user", "item"} ids, y = the rating (matrix factorisation);
- "clicks": x = {"ids": [fields, slots], "crossed": [crosses], "dense": [features]}, y = 0/1 (Wide & Deep);
- "interactions": x = {"user", "item"} ids, y = the item; the evaluation splits hold one interaction per user
  and x["seen"], the user's other known items (padded with -1), which the ranking leaves out (two-tower).

Every id lives in one vocabulary of the dataset (`DatasetInfo.vocab_size` rows): each field's values fitted on
the training split, then one out-of-vocabulary row for that field, fields one after another, items first, so
that items 0..num_items-1 are the catalogue a retrieval model scores. Crossed features are hashed into
`--cross_buckets` rows of their own, as TensorFlow's `crossed_column` does.

Datasets: `latent_factors` (ratings or interactions from known low-rank factors and noise), `crossed_clicks`
(categorical clicks whose label depends on a crossed pair of fields) and `movielens/100k-ratings`,
`movielens/1m-ratings` (TFDS; clicks are ratings of at least `--click_threshold`).
"""

import dataclasses
from typing import Optional

import numpy as np

from bmjax.data import registry, tfds_source
from bmjax.data.sources import ArraySource, Dataset, DatasetInfo
from bmjax.errors import UsageError

FORMS = ("ratings", "clicks", "interactions")
SPLIT = (0.8, 0.1, 0.1)  # train / validation / test shares of rows split at random
PAD = -1  # an empty slot of a multi-valued field, a cross or a `seen` list
HASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Dense indices for a field's values seen in training; anything else maps to the out-of-vocabulary index
    `len(values)`."""

    values: np.ndarray  # sorted

    @classmethod
    def fit(cls, values) -> "Vocabulary":
        values = np.asarray(values)
        return cls(np.unique(values[values != PAD] if values.dtype.kind in "iu" else values))

    def __len__(self) -> int:
        return len(self.values) + 1  # with the out-of-vocabulary row

    @property
    def oov(self) -> int:
        return len(self.values)

    def __call__(self, values) -> np.ndarray:
        values = np.asarray(values)
        at = np.searchsorted(self.values, values).clip(0, max(len(self.values) - 1, 0))
        known = (self.values[at] == values) if len(self.values) else np.zeros(values.shape, bool)
        return np.where(known, at, self.oov).astype(np.int32)


def form(spec) -> str:
    """The form the run's experiment reads (its config's FEEDBACK)."""
    feedback = getattr(spec.config, "FEEDBACK", None)
    if feedback not in FORMS:
        raise UsageError(f"dataset {spec.name!r} is read by the recommender experiments (matrix_factorization, "
                         "wide_deep, two_tower); run it from one of them")
    return feedback


def random_split(num_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, validation and test (SPLIT's shares), each sorted; fixed by `seed`."""
    order = np.random.default_rng(seed).permutation(num_rows)
    first, second = int(SPLIT[0] * num_rows), int((SPLIT[0] + SPLIT[1]) * num_rows)
    return tuple(np.sort(part) for part in (order[:first], order[first:second], order[second:]))


# ---------------------------------------------------------------------------------------------------------------
# Ratings and interactions: users x items.

def ratings_dataset(name: str, users, items, ratings, seed: int) -> Dataset:
    """(user, item, rating) rows split at random; ids fitted on the training rows."""
    train, validation, test = random_split(len(ratings), seed)
    item_vocab, user_vocab = Vocabulary.fit(items[train]), Vocabulary.fit(users[train])

    def source(rows):
        x = {"user": len(item_vocab) + user_vocab(users[rows]), "item": item_vocab(items[rows])}
        return ArraySource(x, np.asarray(ratings[rows], np.float32))

    info = DatasetInfo(name=name, task="regression", feature_shape=(), num_classes=None, class_names=None,
                       vocab_size=len(item_vocab) + len(user_vocab))
    return Dataset(info, source(train), source(validation), source(test))


def interactions_dataset(name: str, users, items, order, seed: int) -> Dataset:
    """Implicit feedback: each user's last two interactions by `order` (ties broken at random) are held out,
    the one before last for validation, the last for test; the rest train. Evaluation rows carry `seen`, the
    user's other interactions, and are dropped where the user or the item never occurs in training (the
    catalogue is the training split's items)."""
    users, items = np.asarray(users), np.asarray(items)
    tiebreak = np.random.default_rng(seed).random(len(users))
    rows = np.lexsort((tiebreak, order, users))  # by user, then order
    sorted_users = users[rows]
    last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    second_last = np.r_[last[1:], False] & ~last
    second_last &= np.r_[False, sorted_users[1:] == sorted_users[:-1]]  # the user has another before it
    held_out_test, held_out_validation = rows[last], rows[second_last]
    keep = np.ones(len(users), bool)
    keep[held_out_test] = keep[held_out_validation] = False
    train = np.flatnonzero(keep)
    if not len(train):
        raise UsageError(f"dataset {name} leaves no interactions to train on; each user needs more than two")
    item_vocab, user_vocab = Vocabulary.fit(items[train]), Vocabulary.fit(users[train])
    item_ids, user_ids = item_vocab(items), user_vocab(users)
    num_items = item_vocab.oov  # the catalogue: items of the training split

    counts = np.bincount(item_ids[train], minlength=len(item_vocab))
    log_share = np.log(np.maximum(counts, 1) / len(train)).astype(np.float32)
    train_x = {"user": (len(item_vocab) + user_ids[train]).astype(np.int32), "item": item_ids[train],
               "item_log_share": log_share[item_ids[train]]}  # in-batch negatives' sampling correction

    # Every known item of each user, to leave out of the ranking of the others.
    by_user = np.argsort(user_ids, kind="stable")
    starts = np.searchsorted(user_ids[by_user], np.arange(len(user_vocab) + 1))
    width = max(1, int(np.diff(starts).max()) - 1)

    def evaluation(held):
        held = held[(user_ids[held] != user_vocab.oov) & (item_ids[held] != item_vocab.oov)]
        seen = np.full((len(held), width), PAD, np.int32)
        for row, r in enumerate(held):
            known = item_ids[by_user[starts[user_ids[r]]:starts[user_ids[r] + 1]]]
            others = np.unique(known[known != item_ids[r]])
            seen[row, :len(others)] = others
        x = {"user": (len(item_vocab) + user_ids[held]).astype(np.int32), "item": item_ids[held], "seen": seen}
        return ArraySource(x, item_ids[held])

    info = DatasetInfo(name=name, task="retrieval", feature_shape=(), num_classes=num_items, class_names=None,
                       vocab_size=len(item_vocab) + len(user_vocab))
    return Dataset(info, ArraySource(train_x, item_ids[train]), evaluation(held_out_validation),
                   evaluation(held_out_test))


def latent_factors_truth(num_users: int, num_items: int, rank: int, seed: int) -> dict:
    """The generator's truth: a global offset, user and item biases and rank-`rank` factors whose inner products
    have unit variance."""
    rng = np.random.default_rng(seed)
    scale = rank ** -0.25
    return {"offset": 3.5, "user_bias": rng.normal(0, 0.3, num_users), "item_bias": rng.normal(0, 0.5, num_items),
            "user_factors": rng.normal(0, scale, (num_users, rank)),
            "item_factors": rng.normal(0, scale, (num_items, rank))}


@registry.register("latent_factors")
def latent_factors(spec) -> Dataset:
    """Ratings mu + b_u + b_i + <p_u, q_i> + N(0, --rating_noise²) on a random --observed_share of the user x item
    pairs; or, for interactions, --interactions_per_user distinct items per user drawn without replacement with
    probabilities ∝ exp(2 b_i + <p_u, q_i>) (popular items and each user's taste)."""
    if form(spec) == "clicks":
        raise UsageError("latent_factors gives ratings or interactions; for clicks use --dataset=crossed_clicks or "
                         "movielens/100k-ratings")
    num_users, num_items = registry.setting(spec, "num_users"), registry.setting(spec, "num_items")
    rank, seed = registry.setting(spec, "latent_rank"), registry.setting(spec, "data_seed")
    truth = latent_factors_truth(num_users, num_items, rank, seed)
    rng = np.random.default_rng(seed + 1)
    affinity = truth["user_factors"] @ truth["item_factors"].T
    if form(spec) == "ratings":
        share, noise = registry.setting(spec, "observed_share"), registry.setting(spec, "rating_noise")
        users, items = np.nonzero(rng.random((num_users, num_items)) < share)
        mean = (truth["offset"] + truth["user_bias"][users] + truth["item_bias"][items] + affinity[users, items])
        ratings = mean + rng.normal(0, noise, len(users))
        return ratings_dataset(spec.name, users, items, ratings, seed)
    per_user = registry.setting(spec, "interactions_per_user")
    if not 3 <= per_user <= num_items:
        raise UsageError(f"--interactions_per_user={per_user} must lie in [3, --num_items={num_items}]: two are "
                         "held out per user and one at least trains")
    logits = truth["item_bias"][None, :] * 2 + affinity
    gumbel = logits - np.log(-np.log(rng.random(logits.shape)))  # the top k of Gumbel-perturbed logits: a draw
    chosen = np.argsort(-gumbel, axis=1)[:, :per_user]  # without replacement
    users = np.repeat(np.arange(num_users), per_user)
    return interactions_dataset(spec.name, users, chosen.ravel(), rng.random(users.shape), seed)


# ---------------------------------------------------------------------------------------------------------------
# Clicks: categorical fields, their crosses, dense features.

def parse_crosses(text: str, fields: tuple[str, ...]) -> list[tuple[int, int]]:
    """'a*b,c*d' -> [(index of a, index of b), ...] over `fields`."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        names = part.split("*")
        if len(names) != 2 or any(n not in fields for n in names) or names[0] == names[1]:
            raise UsageError(f"--crosses={text} is not a list of field*field pairs of two different fields among "
                             f"{', '.join(fields)}; e.g. --crosses={fields[0]}*{fields[-1]}")
        pairs.append((fields.index(names[0]), fields.index(names[1])))
    return pairs


def hash_cross(pair: int, a, b, buckets: int) -> np.ndarray:
    """The bucket of the cross of values `a` and `b` (ids of two fields) in the `pair`-th cross."""
    m1, m2, m3 = (np.uint64(m) for m in HASH_MULTIPLIERS)
    h = (np.asarray(a, np.uint64) * m1) ^ (np.asarray(b, np.uint64) * m2) ^ (np.uint64(pair + 1) * m3)
    h ^= h >> np.uint64(15)
    return ((h * m1) >> np.uint64(7)) % np.uint64(buckets)


def clicks_dataset(name: str, fields: dict, labels, dense: Optional[np.ndarray], crosses: str, buckets: int,
                   seed: int) -> Dataset:
    """Clicks from categorical `fields` ({name: values [n] or [n, slots] padded with -1}), split at random.

    x["ids"] [n, fields, slots]: each field's ids in the one vocabulary (-1 for an empty slot); x["crossed"]
    [n, crosses x slots]: the hashed buckets of each cross of two fields' values (every pair of their values,
    for multi-valued fields); x["dense"]: dense features standardised with the training split's statistics.
    """
    names = tuple(fields)
    pairs = parse_crosses(crosses, names)
    if pairs and buckets < 1:
        raise UsageError(f"--cross_buckets must be positive, got {buckets}")
    columns = {n: np.asarray(v).reshape(len(labels), -1) for n, v in fields.items()}
    slots = max(c.shape[1] for c in columns.values())
    train, validation, test = random_split(len(labels), seed)
    ids, offset = np.full((len(labels), len(names), slots), PAD, np.int32), 0
    for f, n in enumerate(names):
        vocab = Vocabulary.fit(columns[n][train].ravel())
        values = columns[n]
        ids[:, f, :values.shape[1]] = np.where(values == PAD, PAD, offset + vocab(values)) if values.dtype.kind \
            in "iu" else offset + vocab(values)
        offset += len(vocab)
    crossed = []
    for p, (a, b) in enumerate(pairs):
        widths = columns[names[a]].shape[1], columns[names[b]].shape[1]
        left, right = ids[:, a, :widths[0], None], ids[:, b, None, :widths[1]]  # every pair of their values
        bucket = hash_cross(p, np.maximum(left, 0), np.maximum(right, 0), buckets).astype(np.int32)
        crossed.append(np.where((left == PAD) | (right == PAD), PAD, bucket).reshape(len(labels), -1))
    crossed = np.concatenate(crossed, axis=1) if crossed else np.zeros((len(labels), 0), np.int32)
    if dense is not None:
        mean, std = dense[train].mean(0), dense[train].std(0)
        dense = ((dense - mean) / np.where(std > 0, std, 1)).astype(np.float32)

    def source(rows):
        x = {"ids": ids[rows], "crossed": crossed[rows]}
        if dense is not None:
            x["dense"] = dense[rows]
        return ArraySource(x, np.asarray(labels, np.int32)[rows])

    info = DatasetInfo(name=name, task="classification", feature_shape=(len(names), slots), num_classes=2,
                       class_names=("no click", "click"), vocab_size=offset)
    return Dataset(info, source(train), source(validation), source(test))


def crossed_clicks_truth(cardinalities: tuple[int, ...], cross_strength: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"bias": -0.5, "effects": [rng.normal(0, 0.5, c) for c in cardinalities],
            "cross": rng.normal(0, cross_strength, cardinalities[:2]), "dense": rng.normal(0, 0.5, 2)}


def crossed_clicks_arrays(num_examples: int, cardinalities: tuple[int, ...], cross_strength: float, seed: int):
    """(fields {f0: values, ...}, dense [n, 2], true logits [n], labels [n]): each field uniform, the label
    Bernoulli(sigmoid(bias + Σ field effects + cross[f0, f1] + dense · w))."""
    if len(cardinalities) < 2 or min(cardinalities) < 2:
        raise UsageError(f"--click_cardinalities={','.join(map(str, cardinalities))} needs two fields or more, "
                         "each of two values or more")
    truth = crossed_clicks_truth(cardinalities, cross_strength, seed)
    rng = np.random.default_rng(seed + 1)
    values = [rng.integers(0, c, num_examples) for c in cardinalities]
    dense = rng.normal(0, 1, (num_examples, 2))
    logits = truth["bias"] + sum(e[v] for e, v in zip(truth["effects"], values)) + \
        truth["cross"][values[0], values[1]] + dense @ truth["dense"]
    labels = (rng.random(num_examples) < 1 / (1 + np.exp(-logits))).astype(np.int32)
    return {f"f{i}": v for i, v in enumerate(values)}, dense, logits, labels


@registry.register("crossed_clicks")
def crossed_clicks(spec) -> Dataset:
    """Generated clicks on categorical fields f0, f1, ... (--click_cardinalities values each, uniform) and two
    dense features, whose log-odds add per-field effects, the dense features' and a random table over the cross
    of f0 and f1 (standard deviation --cross_strength): a linear model of the fields alone cannot fit it, one
    with the crossed feature f0*f1 can."""
    if form(spec) != "clicks":
        raise UsageError("crossed_clicks holds clicks for --model=wide_deep; for ratings or interactions use "
                         "--dataset=latent_factors")
    cardinalities = tuple(registry.setting(spec, "click_cardinalities"))
    seed = registry.setting(spec, "data_seed")
    fields, dense, _, labels = crossed_clicks_arrays(registry.setting(spec, "click_examples"), cardinalities,
                                                     registry.setting(spec, "cross_strength"), seed)
    crosses = registry.setting(spec, "crosses")
    return clicks_dataset(spec.name, fields, labels, dense, "f0*f1" if crosses == "auto" else crosses,
                          registry.setting(spec, "cross_buckets"), seed)


# ---------------------------------------------------------------------------------------------------------------
# MovieLens through TFDS.

MOVIELENS_FIELDS = ("user_id", "movie_id", "user_rating", "timestamp", "bucketized_user_age",
                    "user_occupation_label", "user_gender", "movie_genres")
MOVIELENS_CROSSES = "gender*genre,age*genre,occupation*genre"


def read_movielens(name: str, data_dir: Optional[str], manual_dir: Optional[str], chunk: int = 20_000) -> dict:
    """MovieLens's one split as columns: ids as strings, genres padded with -1 to the longest list."""
    builder = tfds_source.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
    try:
        source = builder.as_data_source(split="train")
    except Exception as e:
        raise tfds_source.corrupt(builder.data_dir, e) from None
    columns = {f: [] for f in MOVIELENS_FIELDS}
    for start in range(0, len(source), chunk):
        for record in tfds_source.read_records(source, np.arange(start, min(start + chunk, len(source))),
                                               builder.data_dir):
            for f in MOVIELENS_FIELDS:
                columns[f].append(record[f])
    text = lambda values: np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    genres = columns.pop("movie_genres")
    padded = np.full((len(genres), max(1, max(map(len, genres), default=1))), PAD, np.int64)
    for row, g in enumerate(genres):
        padded[row, :len(g)] = g
    return {"user_id": text(columns["user_id"]), "movie_id": text(columns["movie_id"]),
            "rating": np.asarray(columns["user_rating"], np.float32),
            "timestamp": np.asarray(columns["timestamp"], np.int64),
            "age": np.asarray(columns["bucketized_user_age"], np.float32).astype(np.int64),
            "occupation": np.asarray(columns["user_occupation_label"], np.int64),
            "gender": np.asarray(columns["user_gender"], np.int64), "genre": padded}


def movielens(spec) -> Dataset:
    """MovieLens ratings (1-5 stars) of users for movies, in the form the experiment reads; rows split at random
    (seed --data_seed) for ratings and clicks, by time for interactions."""
    columns = read_movielens(spec.name, spec.data_dir, spec.manual_dir)
    seed = registry.setting(spec, "data_seed")
    feedback = form(spec)
    if feedback == "ratings":
        return ratings_dataset(spec.name, columns["user_id"], columns["movie_id"], columns["rating"], seed)
    if feedback == "interactions":
        return interactions_dataset(spec.name, columns["user_id"], columns["movie_id"], columns["timestamp"], seed)
    labels = (columns["rating"] >= registry.setting(spec, "click_threshold")).astype(np.int32)
    fields = {"user": columns["user_id"], "movie": columns["movie_id"], "age": columns["age"],
              "occupation": columns["occupation"], "gender": columns["gender"], "genre": columns["genre"]}
    crosses = registry.setting(spec, "crosses")
    return clicks_dataset(spec.name, fields, labels, None, MOVIELENS_CROSSES if crosses == "auto" else crosses,
                          registry.setting(spec, "cross_buckets"), seed)


for _name in ("movielens/100k-ratings", "movielens/1m-ratings"):
    registry.register(_name)(movielens)

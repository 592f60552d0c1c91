"""Recommenders over embedding tables: matrix factorisation, Wide & Deep, and a two-tower retrieval model.

Ids come in the dataset's one vocabulary (`bmjax.data.ratings`: items first, then users, or each categorical
field in turn), `io.vocab_size` rows. Every table's rows carry the logical axis "vocab" and its columns "embed",
so a mesh with a `tensor` axis splits a large table by rows (and `fsdp` by columns).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from bmjax.errors import UsageError
from bmjax.models.registry import ModelIO, register

TABLE_AXES = ("vocab", "embed")
ROW_MULTIPLE = 8  # tables get whole multiples of this many rows, so that up to 8 devices can split them
MASKED = -1e9  # the score of an item left out of a ranking or of a softmax


def table(rows: int, width: int, std: Optional[float], name: str, dtype=jnp.float32) -> nn.Embed:
    """An embedding table of `rows` ids (padded to a multiple of ROW_MULTIPLE) by `width`, whose axes carry
    TABLE_AXES; N(0, std²) entries, zeros where std is None."""
    init = nn.initializers.zeros if std is None else nn.initializers.normal(std)
    return nn.Embed(-(-rows // ROW_MULTIPLE) * ROW_MULTIPLE, width, dtype=dtype,
                    embedding_init=nn.with_logical_partitioning(init, TABLE_AXES), name=name)


def leave_out(scores, seen):
    """`scores` [batch, items] with each row's `seen` items (ids, -1 for none) set to MASKED."""
    rows = jnp.broadcast_to(jnp.arange(seen.shape[0])[:, None], seen.shape)
    outside = jnp.where(seen >= 0, seen, scores.shape[1])  # padding falls outside the catalogue and is dropped
    return scores.at[rows, outside].set(MASKED, mode="drop")


class MatrixFactorization(nn.Module):
    """rating = mu + b_u + b_i + <p_u, q_i> (Koren, Bell and Volinsky 2009), users and items in one table."""

    vocab_size: int
    embed_dim: int = 16
    init_std: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        factors = table(self.vocab_size, self.embed_dim, self.init_std, "factors", self.dtype)
        biases = table(self.vocab_size, 1, None, "biases", self.dtype)
        offset = self.param("offset", nn.initializers.zeros, ())
        user, item = x["user"], x["item"]
        interaction = jnp.sum(factors(user) * factors(item), axis=-1)
        return offset + biases(user)[..., 0] + biases(item)[..., 0] + interaction


class WideDeep(nn.Module):
    """Wide & Deep (Cheng et al. 2016): one logit, the sum of a linear model over the sparse ids and their hashed
    crosses (wide) and an MLP over the fields' embeddings and the dense features (deep), trained jointly.

    x["ids"] [batch, fields, slots] (-1 for an empty slot; a multi-valued field's embeddings are averaged),
    x["crossed"] [batch, crosses] buckets in [0, cross_buckets) (-1 empty), x["dense"] [batch, features].
    """

    vocab_size: int
    cross_buckets: int
    embed_dim: int = 8
    hidden_sizes: Sequence[int] = (64, 32)
    wide: bool = True
    deep: bool = True
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        ids = x["ids"]
        present = ids >= 0
        ids = jnp.where(present, ids, 0)
        dense = x.get("dense")
        logit = self.param("bias", nn.initializers.zeros, ())
        if self.wide:
            weights = table(self.vocab_size, 1, None, "wide", self.dtype)
            logit = logit + jnp.sum(weights(ids)[..., 0] * present, axis=(1, 2))
            crossed = x["crossed"]
            if crossed.shape[-1]:
                crosses = table(self.cross_buckets, 1, None, "wide_crossed", self.dtype)
                logit = logit + jnp.sum(crosses(jnp.maximum(crossed, 0))[..., 0] * (crossed >= 0), axis=-1)
            if dense is not None and dense.shape[-1]:
                logit = logit + nn.Dense(1, use_bias=False, dtype=self.dtype, name="wide_dense")(dense)[:, 0]
        if self.deep:
            embedded = table(self.vocab_size, self.embed_dim, self.embed_dim ** -0.5, "embedding", self.dtype)(ids)
            counts = jnp.maximum(jnp.sum(present, axis=-1, keepdims=True), 1)
            pooled = jnp.sum(embedded * present[..., None], axis=2) / counts  # [batch, fields, embed]
            h = pooled.reshape(pooled.shape[0], -1)
            if dense is not None and dense.shape[-1]:
                h = jnp.concatenate([h, dense.astype(h.dtype)], axis=-1)
            for i, width in enumerate(self.hidden_sizes):
                h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"deep_{i}")(h))
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            logit = logit + nn.Dense(1, use_bias=False, dtype=self.dtype, name="deep_output")(h)[:, 0]
        return logit[:, None]  # [batch, 1]: a binary task's one output


class Tower(nn.Module):
    """Ids -> embedding -> ReLU MLP -> a vector of `output_dim` (unit length with `normalize`)."""

    rows: int
    embed_dim: int
    hidden_sizes: Sequence[int]
    output_dim: int
    normalize: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids):
        h = table(self.rows, self.embed_dim, self.embed_dim ** -0.5, "embedding", self.dtype)(ids)
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"hidden_{i}")(h))
        h = nn.Dense(self.output_dim, dtype=self.dtype, name="output")(h) if self.hidden_sizes else h
        if self.normalize:
            h = h * lax.rsqrt(jnp.sum(jnp.square(h.astype(jnp.float32)), -1, keepdims=True) + 1e-12).astype(h.dtype)
        return h


class TwoTower(nn.Module):
    """A user tower and an item tower scored by their dot product over a temperature (Yi et al. 2019).

    Training (`train=True`): each user's interaction is scored against every item of the global batch, its own
    the positive (in-batch negatives); under `pmap` the item vectors are gathered from every device, so each
    strategy computes the same softmax. With `logq_correction`, each column's score is lowered by the log of its
    item's share of the training interactions (x["item_log_share"]), correcting for popular items being drawn
    as negatives more often; a column holding the same item as the row's positive is left out.
    Evaluation: each user against the whole catalogue (items 0..num_items-1), the user's other known items
    (x["seen"]) left out. Returns {"scores" or "catalogue_scores": [batch, columns], "target": [batch]}.
    """

    vocab_size: int
    num_items: int
    embed_dim: int = 32
    hidden_sizes: Sequence[int] = ()
    output_dim: int = 32
    temperature: float = 0.1
    normalize: bool = True
    logq_correction: bool = True
    axis_name: Optional[str] = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        item_rows = self.num_items + 1  # the catalogue and the out-of-vocabulary item
        tower = lambda rows, name: Tower(rows, self.embed_dim, tuple(self.hidden_sizes), self.output_dim,
                                         self.normalize, self.dtype, name=name)
        users = tower(self.vocab_size - item_rows, "user_tower")(x["user"] - item_rows)
        item_tower = tower(item_rows, "item_tower")
        if train:
            items, ids, log_share = item_tower(x["item"]), x["item"], x["item_log_share"]
            target = jnp.arange(ids.shape[0])
            if self.axis_name:  # the global batch's items; this device's rows start at its index
                items, ids, log_share = (lax.all_gather(a, self.axis_name, tiled=True) for a in (items, ids, log_share))
                target = target + lax.axis_index(self.axis_name) * x["item"].shape[0]
            scores = users @ items.T / self.temperature
            if self.logq_correction:
                scores = scores - log_share[None, :]
            duplicate = (ids[None, :] == x["item"][:, None]) & (jnp.arange(ids.shape[0])[None, :] != target[:, None])
            return {"scores": jnp.where(duplicate, MASKED, scores), "target": target}
        scores = users @ item_tower(jnp.arange(self.num_items)).T / self.temperature
        if "seen" in x:
            scores = leave_out(scores, x["seen"])
        return {"catalogue_scores": scores, "target": x["item"]}


def _vocab(config, io: ModelIO) -> int:
    if not io.vocab_size:
        raise UsageError(f"--model={config.model} reads ids and needs a dataset of ids (latent_factors, "
                         "crossed_clicks, movielens/100k-ratings)")
    return io.vocab_size


@register("matrix_factorization")
def matrix_factorization(config, io: ModelIO) -> MatrixFactorization:
    return MatrixFactorization(vocab_size=_vocab(config, io), embed_dim=config.embed_dim, init_std=config.init_std,
                               dtype=config.compute_dtype)


@register("wide_deep")
def wide_deep(config, io: ModelIO) -> WideDeep:
    return WideDeep(vocab_size=_vocab(config, io), cross_buckets=config.cross_buckets, embed_dim=config.embed_dim,
                    hidden_sizes=tuple(config.hidden_sizes), wide=config.parts in ("wide", "wide_deep"),
                    deep=config.parts in ("deep", "wide_deep"), dropout=config.dropout, dtype=config.compute_dtype)


@register("two_tower")
def two_tower(config, io: ModelIO) -> TwoTower:
    return TwoTower(vocab_size=_vocab(config, io), num_items=io.num_outputs, embed_dim=config.embed_dim,
                    hidden_sizes=tuple(config.hidden_sizes), output_dim=config.output_dim,
                    temperature=config.temperature, normalize=config.unit_vectors,
                    logq_correction=config.logq_correction, axis_name=io.axis_name, dtype=config.compute_dtype)

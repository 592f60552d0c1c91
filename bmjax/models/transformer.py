"""Transformer building blocks: multi-head attention (grouped-query, rotary, KV cache), MLP, pre-LayerNorm block.

Every parameter carries logical axis names ("embed", "heads", "kv_heads", "kv", "mlp", "vocab") through
`nn.with_logical_partitioning`, so a mesh strategy can map them to mesh axes with `nn.logical_to_mesh_sharding`.
`model.init` then returns `nn.Partitioned` boxes: `nn.meta.unbox(variables)` gives plain arrays and
`nn.get_partition_spec(variables)` the names. Names no rule mentions stay replicated.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# GPT-2's initialisation: every weight from N(0, 0.02), biases zero, norms one.
INIT_STD = 0.02


def partitioned(init, names: tuple):
    """An initializer whose parameter carries the logical axis `names`."""
    return nn.with_logical_partitioning(init, names)


def layer_norm(dtype, param_dtype, name=None, epsilon: float = 1e-5) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=partitioned(nn.initializers.ones, ("embed",)),
                        bias_init=partitioned(nn.initializers.zeros, ("embed",)))


def flatten(x, feature_axes: int = 1):
    """[batch, len, *features] -> [batch * len, *features]. Projections multiply these rows: XLA:CPU runs a
    2-D matrix product with its gradients up to 1.5x faster than the same product over [batch, len, ...]."""
    return x.reshape((-1,) + x.shape[x.ndim - feature_axes:])


def unflatten(rows, like):
    """Rows back to the [batch, len] leading axes of `like`."""
    return rows.reshape(like.shape[:2] + rows.shape[1:])


def rotary_embedding(x, positions, base: float = 10000.0):
    """Rotates channel pairs (i, i + head_dim/2) of `x` [batch, len, heads, head_dim] by angle position * freq_i."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs  # [batch or 1, len, half]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def attention_mask(q_len: int, kv_len: int, *, causal: bool = False, padding_mask=None, mask=None, q_offset=0):
    """A boolean mask [batch or 1, 1, q_len, kv_len], True where a query may attend to a key, or None.

    `causal`: query i (at absolute position q_offset + i) sees keys at positions <= its own.
    `padding_mask` [batch, kv_len]: True for real tokens. `mask`: an explicit mask, combined with the others.
    """
    masks = [] if mask is None else [mask]
    if causal:
        query_positions = q_offset + jnp.arange(q_len)
        masks.append((jnp.arange(kv_len)[None, :] <= query_positions[:, None])[None, None])
    if padding_mask is not None:
        masks.append(padding_mask[:, None, None, :].astype(bool))
    if not masks:
        return None
    combined = masks[0]
    for m in masks[1:]:
        combined = jnp.logical_and(combined, m)
    return combined


# Causal self-attention longer than this runs in query chunks of this many rows.
CAUSAL_CHUNK = 128


def attend(query, key, value, mask=None, bias=None, dropout=lambda weights: weights):
    """softmax(query keyᵀ + bias, where mask) value, over [batch, heads, len, head_dim] arrays.

    `mask` [batch or 1, 1, len, kv_len], True = attend; `bias` [batch or 1, heads, len, kv_len].
    """
    scores = jnp.einsum("bhqd,bhkd->bhqk", query, key)
    scores = scores.astype(jnp.float32)  # softmax in float32 whatever the compute dtype
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = dropout(jax.nn.softmax(scores, axis=-1).astype(query.dtype))
    return jnp.einsum("bhqk,bhkd->bhqd", weights, value)


def _slice(scores_like, rows: slice, keys: slice):
    """Rows and keys of a mask or bias shaped like the scores; None stays None."""
    return None if scores_like is None else scores_like[..., rows, keys]


class MultiHeadAttention(nn.Module):
    """Self-attention with `num_heads` query heads sharing `num_kv_heads` key/value heads (grouped-query).

    With `decode=True` keys and values go to a cache in the "cache" collection: initialise it by running the
    model once on an input of the full length (its values are not used), then feed one token (or a chunk)
    per call with `mutable=["cache"]`. Decoding is always causal over the cached positions; a `padding_mask` or
    `mask` then spans the cache length.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: Optional[int] = None  # None: as many as query heads
    dropout: float = 0.0
    use_rotary: bool = False
    rotary_base: float = 10000.0
    use_bias: bool = True
    scale_queries: bool = True  # by head_dim ** -0.5 (T5 folds that scale into its initialisation instead)
    out_init_std: float = INIT_STD  # GPT-2 scales the residual projections down with depth
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def projection(self, heads: int, head_axis: str, name: str) -> nn.DenseGeneral:
        return nn.DenseGeneral(
            (heads, self.head_dim), use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.normal(INIT_STD), ("embed", head_axis, "kv")),
            bias_init=partitioned(nn.initializers.zeros, (head_axis, "kv")), name=name)

    @nn.compact
    def __call__(self, x, *, context=None, mask=None, causal: bool = False, padding_mask=None, bias=None,
                 train: bool = False):
        """x [batch, len, embed] -> [batch, len, embed].

        `context` [batch, kv_len, embed]: attend to it (cross-attention) instead of to `x`.
        `mask` [batch, 1, len, kv_len], True = attend. `bias` [batch or 1, heads, len, kv_len] is added to the
        scores (T5's relative position bias).
        """
        _, length, embed_dim = x.shape
        num_kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        if context is not None and self.decode:
            raise ValueError("cross-attention keeps no cache: build it with decode=False")
        source = x if context is None else context

        project = lambda heads, axis, name, y: unflatten(self.projection(heads, axis, name)(flatten(y)), y)
        query = project(self.num_heads, "heads", "query", x)  # [batch, len, heads, head_dim]
        key = project(num_kv_heads, "kv_heads", "key", source)  # [batch, kv_len, kv_heads, head_dim]
        value = project(num_kv_heads, "kv_heads", "value", source)

        offset = 0  # absolute position of the first query
        if self.decode:
            # The cache is created on the first (initialising) call, sized by that call's input length.
            cache_ready = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
            cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if cache_ready:
                offset = cache_index.value
            causal = True

        if self.use_rotary:
            positions = offset + jnp.arange(length)[None]
            query = rotary_embedding(query, positions, self.rotary_base)
            key = rotary_embedding(key, positions, self.rotary_base)

        if self.decode and cache_ready:
            # Write this call's keys and values at the cache index, then attend over the whole cache:
            # query i sits at position offset + i and sees the cached positions up to its own.
            cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, offset, 0, 0))
            cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, offset, 0, 0))
            cache_index.value = offset + length
            key, value = cached_key.value, cached_value.value
        mask = attention_mask(length, key.shape[1], causal=causal, padding_mask=padding_mask, mask=mask,
                              q_offset=offset)

        # Grouped-query attention: key/value head j serves the consecutive query heads j * repeats ... .
        repeats = self.num_heads // num_kv_heads
        key, value = jnp.repeat(key, repeats, axis=2), jnp.repeat(value, repeats, axis=2)

        if self.scale_queries:
            query = query * self.head_dim ** -0.5
        # Heads before positions, [batch, heads, len, head_dim]: plain batched matrix products (on XLA:CPU
        # the forward pass runs twice as fast as contracting the [batch, len, heads, head_dim] layout).
        query, key, value = (jnp.swapaxes(a, 1, 2) for a in (query, key, value))
        dropout = nn.Dropout(self.dropout, deterministic=not train)
        attend_part = lambda rows, keys: attend(query[:, :, rows], key[:, :, keys], value[:, :, keys],
                                                _slice(mask, rows, keys), _slice(bias, rows, keys), dropout)
        if causal and not self.decode and length > CAUSAL_CHUNK:
            # Query rows in chunks, each attending to the keys up to its last row: the masked upper triangle
            # is never computed (at 256 positions, fwd + bwd 2.3x faster on XLA:CPU; 2.2x at 1024).
            out = jnp.concatenate([attend_part(slice(start, start + CAUSAL_CHUNK), slice(0, start + CAUSAL_CHUNK))
                                   for start in range(0, length, CAUSAL_CHUNK)], axis=2)
        else:
            out = attend_part(slice(None), slice(None))
        out = jnp.swapaxes(out, 1, 2)  # [batch, len, heads, head_dim]

        return unflatten(nn.DenseGeneral(
            embed_dim, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=partitioned(nn.initializers.normal(self.out_init_std), ("heads", "kv", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)), name="out")(flatten(out, 2)), x)


# The MLP's activations: plain ones act on one projection, gated ones multiply act(x W_gate) by x W_up.
ACTIVATIONS = {"gelu": nn.gelu,  # tanh approximation, as GPT-2
               "gelu_exact": lambda x: nn.gelu(x, approximate=False),  # erf, as BERT and ViT
               "relu": nn.relu}  # T5
GATED_ACTIVATIONS = {"swiglu": nn.silu, "geglu": nn.gelu}


class MLP(nn.Module):
    """Dense(hidden) -> activation -> Dense(embed); gated activations (swiglu, geglu) add a gate projection."""

    hidden_dim: int
    activation: str = "gelu"
    use_bias: bool = True
    out_init_std: float = INIT_STD
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def dense(self, features: int, names: tuple, std: float, name: str) -> nn.Dense:
        return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=partitioned(nn.initializers.normal(std), names),
                        bias_init=partitioned(nn.initializers.zeros, names[-1:]), name=name)

    @nn.compact
    def __call__(self, x):
        rows = flatten(x)
        up = lambda: self.dense(self.hidden_dim, ("embed", "mlp"), INIT_STD, "up")(rows)
        if self.activation in ACTIVATIONS:
            hidden = ACTIVATIONS[self.activation](up())
        elif self.activation in GATED_ACTIVATIONS:
            gate = self.dense(self.hidden_dim, ("embed", "mlp"), INIT_STD, "gate")(rows)
            hidden = GATED_ACTIVATIONS[self.activation](gate) * up()
        else:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of "
                             f"{', '.join(list(ACTIVATIONS) + list(GATED_ACTIVATIONS))}")
        return unflatten(self.dense(x.shape[-1], ("mlp", "embed"), self.out_init_std, "down")(hidden), x)


class Block(nn.Module):
    """A residual attention + MLP block.

    Pre-LayerNorm (GPT-2, ViT): x + dropout(attention(LN(x))), then x + dropout(mlp(LN(x))).
    Post-LayerNorm (`post_norm=True`, BERT): LN(x + dropout(attention(x))), then LN(x + dropout(mlp(x))).
    Call it positionally, `block(x, mask, padding_mask, causal, train)`, so that `remat` can hold `causal`
    and `train` static.
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    num_kv_heads: Optional[int] = None
    activation: str = "gelu"
    dropout: float = 0.0
    use_rotary: bool = False
    use_bias: bool = True
    post_norm: bool = False
    norm_epsilon: float = 1e-5
    out_init_std: float = INIT_STD
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, padding_mask=None, causal: bool = False, train: bool = False):
        attention = MultiHeadAttention(
            self.num_heads, self.head_dim, self.num_kv_heads, dropout=self.dropout, use_rotary=self.use_rotary,
            use_bias=self.use_bias, out_init_std=self.out_init_std, decode=self.decode, dtype=self.dtype,
            param_dtype=self.param_dtype, name="attention")
        mlp = MLP(self.mlp_dim, self.activation, use_bias=self.use_bias, out_init_std=self.out_init_std,
                  dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")
        residual_dropout = nn.Dropout(self.dropout, deterministic=not train)
        norm = lambda name: layer_norm(self.dtype, self.param_dtype, name, self.norm_epsilon)
        attend = lambda h: attention(h, mask=mask, causal=causal, padding_mask=padding_mask, train=train)

        if self.post_norm:
            x = norm("attention_norm")(x + residual_dropout(attend(x)))
            return norm("mlp_norm")(x + residual_dropout(mlp(x)))
        x = x + residual_dropout(attend(norm("attention_norm")(x)))
        return x + residual_dropout(mlp(norm("mlp_norm")(x)))


def block_class(remat: bool) -> type[Block]:
    """`Block`, or with `remat` a Block whose activations are recomputed in the backward pass instead of kept
    (less memory, about a third more compute)."""
    return nn.remat(Block, static_argnums=(4, 5)) if remat else Block

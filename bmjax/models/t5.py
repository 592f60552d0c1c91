"""T5, the encoder-decoder transformer of "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (Raffel et al.), computed as Hugging Face's `T5ForConditionalGeneration` computes it.

A shared token embedding feeds two stacks of pre-norm layers (RMS norm without mean or bias, no biases anywhere).
Self-attention adds a learned bias per (head, relative-position bucket), computed once per stack and shared by its
layers: bidirectional in the encoder, causal in the decoder. Decoder layers also attend to the encoder output.
Scores are not scaled by 1/sqrt(head_dim). The MLP is ReLU (T5 v1.0) or gated GELU ("geglu", v1.1). Logits come
from the tied embedding, with the decoder output scaled by embed_dim**-0.5 (v1.0), or from an untied head (v1.1).

`x` = {"inputs": [batch, input_len] int32, "targets": [batch, target_len] int32}; 0 is padding and also the
decoder's start token: the decoder reads the targets shifted right by one. `generate` decodes with a KV cache.

Differences from Hugging Face: none in evaluation (`bmjax.hf.t5` loads its weights; the tests check the
logits). In training, HF's dropout between the MLP's activation and its output projection is left out, and the
attention and MLP projections start from bmjax's N(0, 0.02) rather than T5's fan-in-scaled initialisation (the
token embedding and relative-bias table do start from T5's N(0, 1)). In decoding, the cross-attention keys and
values are recomputed from the encoder output at each step: `MultiHeadAttention` caches self-attention only.
"""

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.generate import sample_token
from bmjax.models.registry import register
from bmjax.models.transformer import MLP, MultiHeadAttention, partitioned

PAD_ID = 0  # padding, and the decoder's start token
EOS_ID = 1

# Named sizes. "t5-small" has 60,506,624 parameters; the v1.1 ones use gated GELU and an untied head.
PRESETS = {
    "tiny": dict(vocab_size=128, num_layers=2, num_heads=4, embed_dim=32, head_dim=8, mlp_dim=64),
    "t5-small": dict(vocab_size=32128, num_layers=6, num_heads=8, embed_dim=512, head_dim=64, mlp_dim=2048),
    "t5-base": dict(vocab_size=32128, num_layers=12, num_heads=12, embed_dim=768, head_dim=64, mlp_dim=3072),
    "t5-v1_1-small": dict(vocab_size=32128, num_layers=8, num_heads=6, embed_dim=512, head_dim=64, mlp_dim=1024,
                          activation="geglu", tie_embeddings=False),
}


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
    """T5's bucket of each relative position (key position - query position), an int32 array of the same shape.

    Bidirectional: half the buckets for keys before the query, half for keys after it. Causal: keys after the
    query share bucket 0. Within a half, distances below half of its buckets get a bucket each; longer ones
    share buckets logarithmically up to `max_distance`, and everything beyond falls in the last bucket.
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # max(distance, 1) keeps the log finite where the exact branch is taken anyway.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    distance_if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    distance_if_large = jnp.minimum(distance_if_large, num_buckets - 1)
    return bucket + jnp.where(distance < max_exact, distance, distance_if_large)


def rms_norm(module: nn.Module, name: str) -> nn.RMSNorm:
    """T5's layer norm: x / sqrt(mean(x**2) + eps) * scale, no mean subtracted, no bias."""
    return nn.RMSNorm(epsilon=module.norm_epsilon, dtype=module.dtype, param_dtype=module.param_dtype,
                      scale_init=partitioned(nn.initializers.ones, ("embed",)), name=name)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head): query/key positions -> float32 bias [1, heads, queries, keys]."""

    num_heads: int
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_positions, key_positions):
        table = self.param("embedding", partitioned(nn.initializers.normal(1.0), ("relpos_buckets", "heads")),
                           (self.num_buckets, self.num_heads), self.param_dtype)
        buckets = relative_position_bucket(key_positions[None, :] - query_positions[:, None],
                                           bidirectional=self.bidirectional, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
        bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [queries, keys, heads]
        return jnp.transpose(bias, (2, 0, 1))[None]


class EncoderLayer(nn.Module):
    """x + dropout(self_attention(norm(x))), then x + dropout(mlp(norm(x))). Called positionally so that
    `remat` can hold `train` static: `layer(x, bias, padding_mask, train)`."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    activation: str = "relu"
    dropout: float = 0.0
    norm_epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias, padding_mask, train: bool = False):
        residual_dropout = nn.Dropout(self.dropout, deterministic=not train)
        attention = t5_attention(self, "attention")
        h = attention(rms_norm(self, "attention_norm")(x), bias=bias, padding_mask=padding_mask, train=train)
        x = x + residual_dropout(h)
        h = t5_mlp(self)(rms_norm(self, "mlp_norm")(x))
        return x + residual_dropout(h)


class DecoderLayer(nn.Module):
    """Causal self-attention (KV-cached with `decode`), cross-attention to the encoder output, MLP; each
    pre-norm and residual. Called positionally: `layer(x, bias, encoded, encoder_mask, train)`."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    activation: str = "relu"
    dropout: float = 0.0
    norm_epsilon: float = 1e-6
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias, encoded, encoder_mask, train: bool = False):
        residual_dropout = nn.Dropout(self.dropout, deterministic=not train)
        self_attention = t5_attention(self, "self_attention", decode=self.decode)
        h = self_attention(rms_norm(self, "self_attention_norm")(x), bias=bias, causal=True, train=train)
        x = x + residual_dropout(h)
        cross_attention = t5_attention(self, "cross_attention")  # keys from the encoder: nothing to cache
        h = cross_attention(rms_norm(self, "cross_attention_norm")(x), context=encoded, padding_mask=encoder_mask,
                            train=train)
        x = x + residual_dropout(h)
        h = t5_mlp(self)(rms_norm(self, "mlp_norm")(x))
        return x + residual_dropout(h)


def t5_attention(layer: nn.Module, name: str, decode: bool = False) -> MultiHeadAttention:
    """Attention as T5 computes it: no biases, scores not scaled by 1/sqrt(head_dim)."""
    return MultiHeadAttention(layer.num_heads, layer.head_dim, dropout=layer.dropout, use_bias=False,
                              scale_queries=False, decode=decode, dtype=layer.dtype, param_dtype=layer.param_dtype,
                              name=name)


def t5_mlp(layer: nn.Module) -> MLP:
    return MLP(layer.mlp_dim, layer.activation, use_bias=False, dtype=layer.dtype, param_dtype=layer.param_dtype,
               name="mlp")


def layer_class(layer: type[nn.Module], remat: bool):
    """`layer`, or with `remat` one whose activations are recomputed in the backward pass; `train` (the last
    positional argument) stays a static Python bool."""
    if not remat:
        return layer
    train_index = {EncoderLayer: 4, DecoderLayer: 5}[layer]  # counting self as 0
    return nn.remat(layer, static_argnums=(train_index,))


class Encoder(nn.Module):
    """Embedded inputs [batch, len, embed] -> encoder output [batch, len, embed]."""

    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    activation: str = "relu"
    dropout: float = 0.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_epsilon: float = 1e-6
    remat: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, padding_mask, train: bool = False):
        positions = jnp.arange(x.shape[1])
        bias = RelativePositionBias(self.num_heads, bidirectional=True, num_buckets=self.relative_buckets,
                                    max_distance=self.relative_max_distance, param_dtype=self.param_dtype,
                                    name="relative_bias")(positions, positions)
        dropout = nn.Dropout(self.dropout, deterministic=not train)
        x = dropout(x)
        layer = layer_class(EncoderLayer, self.remat)
        for i in range(self.num_layers):
            x = layer(self.num_heads, self.head_dim, self.mlp_dim, self.activation, self.dropout, self.norm_epsilon,
                      dtype=self.dtype, param_dtype=self.param_dtype, name=f"layer_{i}")(x, bias, padding_mask, train)
        return dropout(rms_norm(self, "final_norm")(x))


class Decoder(nn.Module):
    """Embedded decoder inputs [batch, len, embed] and the encoder output -> [batch, len, embed].

    With `decode=True` the self-attention keeps a KV cache: the first call, on inputs of the full decoding
    length, creates it (its outputs are not used); later calls feed one token at a time with `mutable=["cache"]`,
    and the relative bias is computed for the query's absolute position against every cached key position.
    """

    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    activation: str = "relu"
    dropout: float = 0.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_epsilon: float = 1e-6
    remat: bool = False
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, encoded, encoder_mask, train: bool = False):
        length = x.shape[1]
        query_positions = key_positions = jnp.arange(length)
        if self.decode:
            # Which cache positions hold keys: none in a fresh (zero-filled) cache, sized by the initialising call.
            cache_ready = self.has_variable("cache", "filled")
            filled = self.variable("cache", "filled", jnp.zeros, (length,), bool)
            if cache_ready:
                key_positions = jnp.arange(filled.value.shape[0])
                query_positions = jnp.sum(filled.value, dtype=jnp.int32) + jnp.arange(length)
                filled.value = key_positions <= query_positions[-1]
        bias = RelativePositionBias(self.num_heads, bidirectional=False, num_buckets=self.relative_buckets,
                                    max_distance=self.relative_max_distance, param_dtype=self.param_dtype,
                                    name="relative_bias")(query_positions, key_positions)
        dropout = nn.Dropout(self.dropout, deterministic=not train)
        x = dropout(x)
        layer = layer_class(DecoderLayer, self.remat)
        for i in range(self.num_layers):
            x = layer(self.num_heads, self.head_dim, self.mlp_dim, self.activation, self.dropout, self.norm_epsilon,
                      self.decode, dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"layer_{i}")(x, bias, encoded, encoder_mask, train)
        return dropout(rms_norm(self, "final_norm")(x))


def shift_right(targets):
    """The decoder's inputs: the targets delayed by one position, starting with the start token (0)."""
    return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=PAD_ID)[:, :-1]


class T5(nn.Module):
    """Encoder-decoder transformer: {"inputs", "targets"} -> float32 logits [batch, target_len, vocab_size].

    `encode(inputs)` runs the encoder once; `decode_logits(decoder_inputs, encoded, encoder_mask)` runs the
    decoder on already shifted inputs (KV-cached with `decode=True`, as `generate` uses it).
    """

    vocab_size: int
    num_layers: int = 6  # in each stack, unless num_decoder_layers is set
    num_heads: int = 8
    embed_dim: int = 512
    head_dim: int = 64
    mlp_dim: int = 2048
    num_decoder_layers: Optional[int] = None
    dropout: float = 0.1
    activation: str = "relu"  # T5 v1.0; "geglu" for v1.1
    tie_embeddings: bool = True  # v1.0; v1.1 has an untied head
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_epsilon: float = 1e-6
    remat: bool = False  # recompute each layer's activations in the backward pass
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        stack = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                     activation=self.activation, dropout=self.dropout, relative_buckets=self.relative_buckets,
                     relative_max_distance=self.relative_max_distance, norm_epsilon=self.norm_epsilon,
                     remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
        self.token_embedding = nn.Embed(
            self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=partitioned(nn.initializers.normal(1.0), ("vocab", "embed")))
        self.encoder = Encoder(self.num_layers, **stack)
        self.decoder = Decoder(self.num_decoder_layers or self.num_layers, decode=self.decode, **stack)
        if not self.tie_embeddings:
            self.head = nn.Dense(
                self.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=partitioned(nn.initializers.normal(self.embed_dim ** -0.5), ("embed", "vocab")))

    def __call__(self, x, *, train: bool = False):
        if not isinstance(x, dict) or not {"inputs", "targets"} <= set(x):
            found = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise UsageError(f"T5 reads a batch x with keys 'inputs' and 'targets' (token ids), got {found}")
        inputs, targets = x["inputs"], x["targets"]
        encoded = self.encode(inputs, train=train)
        return self.decode_logits(shift_right(targets), encoded, inputs != PAD_ID, train=train)

    def encode(self, inputs, *, train: bool = False):
        """inputs [batch, input_len] -> encoder output [batch, input_len, embed]; padding (0) is masked out."""
        return self.encoder(self.token_embedding(inputs), inputs != PAD_ID, train)

    def decode_logits(self, decoder_inputs, encoded, encoder_mask, *, train: bool = False):
        """decoder_inputs [batch, len] (targets shifted right), encoder output and its mask [batch, input_len]
        -> float32 logits [batch, len, vocab_size]."""
        x = self.decoder(self.token_embedding(decoder_inputs), encoded, encoder_mask, train)
        if self.tie_embeddings:
            logits = self.token_embedding.attend(x * self.embed_dim ** -0.5)
        else:
            logits = self.head(x)
        return logits.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------------
# Generation: encode once, then one compiled loop over decoder steps with the decoder's KV cache.

@functools.partial(jax.jit, static_argnames=("model", "max_length", "temperature", "top_k", "top_p", "greedy"))
def _generate(model, params, inputs, rng, max_length, temperature, top_k, top_p, greedy, eos_id):
    batch_size = inputs.shape[0]
    encoder_mask = inputs != PAD_ID
    encoded = model.apply({"params": params}, inputs, method=T5.encode)

    def decoder_step(cache, tokens):
        logits, updated = model.apply({"params": params, "cache": cache}, tokens, encoded, encoder_mask,
                                      method=T5.decode_logits, mutable=["cache"])
        return updated["cache"], logits[:, -1]

    # An empty cache for max_length positions: the shapes of one initialising call, filled with zeros.
    full_length = jnp.zeros((batch_size, max_length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.apply({"params": params}, full_length, encoded, encoder_mask,
                                                method=T5.decode_logits, mutable=["cache"])[1]["cache"])
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def step(carry, step_rng):
        cache, previous, finished = carry
        cache, logits = decoder_step(cache, previous[:, None])
        token = sample_token(logits, step_rng, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
        token = jnp.where(finished, PAD_ID, token).astype(jnp.int32)  # after an EOS: padding
        return (cache, token, finished | (token == eos_id)), token

    start = jnp.full((batch_size,), PAD_ID, jnp.int32)
    carry = (cache, start, jnp.zeros((batch_size,), bool))
    _, tokens = jax.lax.scan(step, carry, jax.random.split(rng, max_length))
    return tokens.T


def generate(model: T5, params, inputs, max_length: int, rng=None, *, greedy: bool = True, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, eos_id: int = EOS_ID):
    """Decodes `max_length` tokens for each row of `inputs` [batch, input_len] -> [batch, max_length] int32.

    `model` is the training-mode T5 and `params` its "params" collection (boxed or not). `greedy` takes the
    argmax; otherwise logits are divided by `temperature`, filtered to the `top_k` largest and/or the `top_p`
    nucleus, and sampled with `rng`. A row's tokens after its first `eos_id` are padding (0). Compiles once per
    model, shape and sampling setting.
    """
    inputs = jnp.asarray(inputs, jnp.int32)
    if inputs.ndim != 2 or inputs.shape[1] == 0:
        raise UsageError(f"inputs must be token ids [batch, input_len] with input_len >= 1, got shape {inputs.shape}")
    if max_length < 1:
        raise UsageError(f"max_length must be at least 1, got {max_length}")
    if not greedy:
        if rng is None:
            raise UsageError("sampling needs a PRNG key: pass rng=jax.random.PRNGKey(seed), or greedy=True")
        if temperature <= 0:
            raise UsageError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
        if top_k is not None and not 1 <= top_k <= model.vocab_size:
            raise UsageError(f"top_k must be between 1 and the vocabulary size ({model.vocab_size}), got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {top_p}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _generate(model.clone(decode=True), nn.meta.unbox(params), inputs, rng, max_length, temperature, top_k,
                     top_p, greedy, jnp.asarray(eos_id, jnp.int32))


@register("t5")
def build_t5(config, io) -> T5:
    return T5(vocab_size=io.num_outputs, num_layers=config.num_layers, num_heads=config.num_heads,
              embed_dim=config.embed_dim, head_dim=config.head_dim, mlp_dim=config.mlp_dim,
              activation=config.activation, dropout=config.dropout, remat=config.remat, dtype=config.compute_dtype)

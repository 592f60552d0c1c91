"""A GPT language model: token (+ learned position) embeddings, pre-LayerNorm blocks, final LayerNorm, logits."""

import math
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from bmjax.models.transformer import INIT_STD, block_class, layer_norm, partitioned
from bmjax.models.registry import register

# Named sizes. "nano" is nanoGPT's CPU Shakespeare-character setup; "gpt2" is GPT-2 small (124M parameters
# with tied embeddings), "gpt2-medium" the 350M one.
PRESETS = {
    "nano": dict(vocab_size=65, block_size=64, num_layers=4, num_heads=4, embed_dim=128),
    "gpt2": dict(vocab_size=50257, block_size=1024, num_layers=12, num_heads=12, embed_dim=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, num_layers=24, num_heads=16, embed_dim=1024),
}


class GPT(nn.Module):
    """Causal decoder-only transformer: tokens [batch, len] -> float32 logits [batch, len, vocab_size].

    With `decode=True` it keeps a KV cache in the "cache" collection (see `bmjax.generate`), and the learned
    position embeddings are looked up at the cached position.
    """

    vocab_size: int
    block_size: int  # the most positions the model reads
    num_layers: int
    num_heads: int
    embed_dim: int
    num_kv_heads: Optional[int] = None
    mlp_ratio: int = 4
    dropout: float = 0.0
    positions: str = "learned"  # or "rotary"
    activation: str = "gelu"  # or "swiglu"
    tie_embeddings: bool = True
    use_bias: bool = True
    norm_epsilon: float = 1e-5  # GPT-2's LayerNorm epsilon
    remat: bool = False  # recompute each block's activations in the backward pass
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        _, length = tokens.shape
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"unknown positions {self.positions!r}; choose 'learned' or 'rotary'")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not a multiple of num_heads={self.num_heads}")

        # Absolute position of the first token: 0, or in decode mode the number of tokens already cached.
        offset = 0
        if self.decode:
            cache_ready = self.has_variable("cache", "position_index")
            position_index = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
            if cache_ready:
                offset = position_index.value
                position_index.value = offset + length
        elif length > self.block_size:
            raise ValueError(f"{length} tokens do not fit in block_size={self.block_size}")

        token_embedding = nn.Embed(
            self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=partitioned(nn.initializers.normal(INIT_STD), ("vocab", "embed")), name="token_embedding")
        x = token_embedding(tokens)
        if self.positions == "learned":
            position_embedding = nn.Embed(
                self.block_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                embedding_init=partitioned(nn.initializers.normal(INIT_STD), ("positions", "embed")),
                name="position_embedding")
            x = x + position_embedding(offset + jnp.arange(length))[None]
        x = nn.Dropout(self.dropout, deterministic=not train)(x)

        block = block_class(self.remat)
        for i in range(self.num_layers):
            x = block(
                self.num_heads, self.embed_dim // self.num_heads, self.mlp_ratio * self.embed_dim,
                num_kv_heads=self.num_kv_heads, activation=self.activation, dropout=self.dropout,
                use_rotary=self.positions == "rotary", use_bias=self.use_bias, norm_epsilon=self.norm_epsilon,
                # GPT-2 scales the projections into the residual stream by 1/sqrt(number of residual layers).
                out_init_std=INIT_STD / math.sqrt(2 * self.num_layers),
                decode=self.decode, dtype=self.dtype, param_dtype=self.param_dtype, name=f"block_{i}",
            )(x, None, None, True, train)  # mask, padding_mask, causal, train
        x = layer_norm(self.dtype, self.param_dtype, "final_norm", self.norm_epsilon)(x)

        if self.tie_embeddings:
            logits = token_embedding.attend(x)  # x @ token_embedding.T
        else:
            logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=partitioned(nn.initializers.normal(INIT_STD), ("embed", "vocab")),
                              name="head")(x)
        return logits.astype(jnp.float32)


@register("gpt")
def build_gpt(config, io) -> GPT:
    return GPT(vocab_size=io.num_outputs, block_size=config.block_size, num_layers=config.num_layers,
               num_heads=config.num_heads, num_kv_heads=config.num_kv_heads, embed_dim=config.embed_dim,
               positions=config.positions, activation=config.activation, use_bias=config.use_bias,
               dropout=config.dropout, remat=config.remat, dtype=config.compute_dtype)

"""BERT (Devlin et al., 2018), computed as Hugging Face's `BertModel` computes it, so imported weights
(`bmjax.hf.bert.import_bert`) give the same outputs.

Embeddings: token + learned position + token type, then LayerNorm (epsilon 1e-12) and dropout. Blocks:
post-LayerNorm, exact GELU, bidirectional attention masked by padding. One shared encoder submodule, named
"bert", serves both heads, so `--restore_from` a masked-LM run moves the encoder into a classifier:

- `BertForMaskedLM`: dense + GELU + LayerNorm, then the token embedding transposed (tied) + an output bias
  -> float32 logits [batch, len, vocab_size];
- `BertForSequenceClassification`: pooler (dense + tanh on the first token) + dropout + dense
  -> float32 logits [batch, num_outputs].

Inputs `x`: token ids [batch, len] (`pad_id` marks padding), or a dict {"tokens": [b, l], "segment_ids":
[b, l]} for rows packed with several sequences: segment 0 is padding, tokens attend only within their own
segment and positions restart at 0 in each. Either form may carry "token_types" [b, l] (sentence A/B) in
the dict; without it every token has type 0.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.transformer import ACTIVATIONS, INIT_STD, block_class, layer_norm, partitioned
from bmjax.models.registry import register

# Named sizes: Google's BERT miniatures (Turc et al., 2019) and the two original models. bert-base with a
# 30522-token vocabulary has 109,482,240 parameters in its encoder and pooler, as `transformers.BertModel`.
PRESETS = {
    "bert-tiny": dict(num_layers=2, embed_dim=128, num_heads=2),
    "bert-mini": dict(num_layers=4, embed_dim=256, num_heads=4),
    "bert-small": dict(num_layers=4, embed_dim=512, num_heads=8),
    "bert-medium": dict(num_layers=8, embed_dim=512, num_heads=8),
    "bert-base": dict(num_layers=12, embed_dim=768, num_heads=12),
    "bert-large": dict(num_layers=24, embed_dim=1024, num_heads=16),
}
DEFAULT_BLOCK_SIZE = 512  # BERT's position table, used when block_size is None


def segment_positions(segment_ids):
    """Position of each token within its segment [batch, len]: 0 at the first token of every run of equal ids."""
    index = jnp.arange(segment_ids.shape[-1])
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], dtype=bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    run_start = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return index - run_start


def read_inputs(x, pad_id: int):
    """(tokens, token_types, positions, padding_mask, mask) from token ids or a packed-rows dict.

    `padding_mask` [batch, len] is True for real tokens; `mask` [batch, 1, len, len] (packed rows only, else
    None) is True where query and key share a segment.
    """
    if isinstance(x, dict):
        if "tokens" not in x:
            raise UsageError(f"BERT's input dict needs 'tokens' (it has {', '.join(sorted(x))}); pass "
                             "{'tokens': ids, 'segment_ids': ids} or an array of token ids")
        tokens = jnp.asarray(x["tokens"])
        token_types = x.get("token_types")
        segment_ids = x.get("segment_ids")
    else:
        tokens, token_types, segment_ids = jnp.asarray(x), None, None
    if tokens.ndim != 2:
        raise UsageError(f"BERT takes token ids [batch, len], got an input of shape {tokens.shape}; use a text "
                         "dataset")
    tokens = tokens.astype(jnp.int32)
    token_types = jnp.zeros_like(tokens) if token_types is None else jnp.asarray(token_types, jnp.int32)
    if segment_ids is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        return tokens, token_types, positions, tokens != pad_id, None
    segment_ids = jnp.asarray(segment_ids, jnp.int32)
    if segment_ids.shape != tokens.shape:
        raise UsageError(f"segment_ids {segment_ids.shape} and tokens {tokens.shape} differ in shape; give "
                         "one segment id per token")
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return tokens, token_types, segment_positions(segment_ids), segment_ids != 0, same_segment[:, None]


class BertSizes(nn.Module):
    """The fields every BERT module shares (the encoder's sizes); `encoder()` builds the shared encoder."""

    vocab_size: int = 30522
    block_size: Optional[int] = DEFAULT_BLOCK_SIZE  # positions the model reads (HF: max_position_embeddings)
    num_layers: int = 12
    num_heads: int = 12
    embed_dim: int = 768
    mlp_dim: Optional[int] = None  # None: 4 * embed_dim
    dropout: float = 0.1
    type_vocab_size: int = 2
    pad_id: int = 0
    hidden_act: str = "gelu_exact"  # a name in transformer.ACTIVATIONS (HF's "gelu" is the exact one)
    norm_epsilon: float = 1e-12
    remat: bool = False  # recompute each block's activations in the backward pass
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def sizes(self) -> dict:
        return {name: getattr(self, name) for name in BertSizes.__dataclass_fields__
                if name not in ("parent", "name")}

    def encoder(self) -> "BertEncoder":
        return BertEncoder(**self.sizes(), name="bert")

    def act(self, x):
        return ACTIVATIONS[self.hidden_act](x)


class BertEncoder(BertSizes):
    """Embeddings and post-LayerNorm blocks: `x` (see the module docstring) -> hidden states [b, l, embed]."""

    def setup(self):
        if self.embed_dim % self.num_heads:
            raise UsageError(f"embed_dim={self.embed_dim} is not a multiple of num_heads={self.num_heads}; "
                             "choose sizes that divide")
        if self.hidden_act not in ACTIVATIONS:
            raise UsageError(f"unknown hidden_act {self.hidden_act!r}; choose one of {', '.join(ACTIVATIONS)}")
        dtype = jnp.dtype(self.dtype)
        embed = lambda rows, names: nn.Embed(
            rows, self.embed_dim, dtype=dtype, param_dtype=self.param_dtype,
            embedding_init=partitioned(nn.initializers.normal(INIT_STD), names))
        self.token_embedding = embed(self.vocab_size, ("vocab", "embed"))
        self.position_embedding = embed(self.block_size or DEFAULT_BLOCK_SIZE, ("positions", "embed"))
        self.token_type_embedding = embed(self.type_vocab_size, ("token_types", "embed"))
        self.embedding_norm = layer_norm(dtype, self.param_dtype, epsilon=self.norm_epsilon)
        self.embedding_dropout = nn.Dropout(self.dropout)
        block = block_class(self.remat)
        self.blocks = [block(self.num_heads, self.embed_dim // self.num_heads, self.mlp_dim or 4 * self.embed_dim,
                             activation=self.hidden_act, dropout=self.dropout, post_norm=True,
                             norm_epsilon=self.norm_epsilon, dtype=dtype, param_dtype=self.param_dtype)
                       for _ in range(self.num_layers)]

    def __call__(self, x, *, train: bool = False):
        tokens, token_types, positions, padding_mask, mask = read_inputs(x, self.pad_id)
        block_size = self.block_size or DEFAULT_BLOCK_SIZE
        if tokens.shape[1] > block_size:
            raise UsageError(f"{tokens.shape[1]} tokens do not fit in block_size={block_size}; use shorter "
                             "examples or a larger --block_size")
        h = (self.token_embedding(tokens) + self.token_type_embedding(token_types)
             + self.position_embedding(positions))
        h = self.embedding_dropout(self.embedding_norm(h), deterministic=not train)
        for block in self.blocks:
            h = block(h, mask, padding_mask, False, train)  # mask, padding_mask, causal, train
        return h

    def attend(self, hidden):
        """hidden [..., embed] @ token_embedding.T -> [..., vocab_size] (the tied MLM decoder)."""
        return self.token_embedding.attend(hidden)


class BertForMaskedLM(BertSizes):
    """BERT with its masked-language-model head: `x` -> float32 logits [batch, len, vocab_size]."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        encoder = self.encoder()
        hidden = encoder(x, train=train)
        dtype = jnp.dtype(self.dtype)
        hidden = nn.Dense(self.embed_dim, dtype=dtype, param_dtype=self.param_dtype,
                          kernel_init=partitioned(nn.initializers.normal(INIT_STD), ("embed", "embed_out")),
                          bias_init=partitioned(nn.initializers.zeros, ("embed_out",)), name="mlm_dense")(hidden)
        hidden = layer_norm(dtype, self.param_dtype, "mlm_norm", self.norm_epsilon)(self.act(hidden))
        bias = self.param("mlm_bias", partitioned(nn.initializers.zeros, ("vocab",)), (self.vocab_size,),
                          self.param_dtype)
        logits = encoder.attend(hidden).astype(jnp.float32) + bias.astype(jnp.float32)
        return logits


class BertForSequenceClassification(BertSizes):
    """BERT with a pooler and a classifier on the first token: `x` -> float32 logits [batch, num_outputs]."""

    num_outputs: int = 2

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        hidden = self.encoder()(x, train=train)
        first = jax.lax.index_in_dim(hidden, 0, axis=1, keepdims=False)  # [CLS], sliced: LiteRT takes no gather
        dtype = jnp.dtype(self.dtype)
        pooled = nn.Dense(self.embed_dim, dtype=dtype, param_dtype=self.param_dtype,
                          kernel_init=partitioned(nn.initializers.normal(INIT_STD), ("embed", "embed_out")),
                          bias_init=partitioned(nn.initializers.zeros, ("embed_out",)), name="pooler")(first)
        pooled = nn.Dropout(self.dropout, deterministic=not train)(jnp.tanh(pooled))
        logits = nn.Dense(self.num_outputs, dtype=dtype, param_dtype=self.param_dtype,
                          kernel_init=partitioned(nn.initializers.normal(INIT_STD), ("embed_out", "classes")),
                          bias_init=partitioned(nn.initializers.zeros, ("classes",)), name="classifier")(pooled)
        return logits.astype(jnp.float32)


def _encoder_sizes(config) -> dict:
    return dict(block_size=config.block_size, num_layers=config.num_layers, num_heads=config.num_heads,
                embed_dim=config.embed_dim, mlp_dim=config.mlp_dim, dropout=config.dropout, remat=config.remat,
                dtype=config.compute_dtype)


@register("bert_mlm")
def build_bert_mlm(config, io) -> BertForMaskedLM:
    return BertForMaskedLM(vocab_size=io.num_outputs, **_encoder_sizes(config))


@register("bert_classifier")
def build_bert_classifier(config, io) -> BertForSequenceClassification:
    return BertForSequenceClassification(num_outputs=io.num_outputs, vocab_size=io.vocab_size or BertSizes.vocab_size,
                                         **_encoder_sizes(config))

"""Sampling from a causal language model with a KV cache: prefill the prompt, then one compiled decode loop.

Works with any linen model that has `decode` and `block_size` attributes and keeps its cache in the "cache"
collection, such as `bmjax.models.gpt.GPT`.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def top_k_logits(logits, k: int):
    """Keeps the k largest logits on the last axis (ties with the k-th are kept too); sets the rest to -inf."""
    kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth_largest, -jnp.inf, logits)


def top_p_logits(logits, p: float):
    """Nucleus filtering: keeps the smallest set of most likely tokens whose probability sums to at least p."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    # A token is kept while the mass of the tokens before it is still below p; the most likely always is.
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep = mass_before < p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def keys_per_row(rng) -> bool:
    """Whether `rng` holds a key for each row of a batch (raw uint32 keys [batch, 2], or typed keys [batch])."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return jnp.ndim(rng) == (1 if typed else 2)


def _split(rng, num: int):
    """`num` keys from `rng` ([num, ...]; [num, batch, ...] from a key per row)."""
    if keys_per_row(rng):
        return jax.vmap(lambda key: jax.random.split(key, num), out_axes=1)(rng)
    return jax.random.split(rng, num)


def _fold(rng, data: int):
    """`rng` (or each row's key) folded with `data`."""
    if keys_per_row(rng):
        return jax.vmap(jax.random.fold_in, (0, None))(rng, data)
    return jax.random.fold_in(rng, data)


def sample_token(logits, rng, *, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, greedy: bool = False, token_range: Optional[tuple[int, int]] = None):
    """One token id per row of `logits` [batch, vocab], drawn with `rng` (or with each row's own key). With
    `token_range=(start, stop)`, only ids start..stop-1 are drawn."""
    if token_range is not None:
        ids = jnp.arange(logits.shape[-1])
        logits = jnp.where((ids >= token_range[0]) & (ids < token_range[1]), logits, -jnp.inf)
    if greedy:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None:
        logits = top_p_logits(logits, top_p)
    if keys_per_row(rng):
        return jax.vmap(lambda key, row: jax.random.categorical(key, row))(rng, logits)
    return jax.random.categorical(rng, logits, axis=-1)


def init_cache(decoder: nn.Module, params, batch_size: int, length: int):
    """An empty cache for `length` positions: the shapes of one initialising call, filled with zeros."""
    tokens = jnp.zeros((batch_size, length), jnp.int32)
    shapes = jax.eval_shape(lambda: decoder.apply({"params": params}, tokens, mutable=["cache"])[1]["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("decoder", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "greedy", "token_range"))
def _generate(decoder, params, prompt_tokens, rng, max_new_tokens, temperature, top_k, top_p, greedy, token_range):
    batch_size, prompt_len = prompt_tokens.shape
    cache = init_cache(decoder, params, batch_size, prompt_len + max_new_tokens)

    def forward(cache, tokens):
        logits, updated = decoder.apply({"params": params, "cache": cache}, tokens, mutable=["cache"])
        return updated["cache"], logits[:, -1]

    # Prefill: the whole prompt in one call fills its cache positions and gives the next token's logits.
    cache, logits = forward(cache, prompt_tokens)

    def step(carry, step_rng):
        cache, logits = carry
        token = sample_token(logits, step_rng, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                             token_range=token_range)
        # The last step's forward pass is not needed; it keeps the loop body uniform.
        cache, logits = forward(cache, token[:, None].astype(jnp.int32))
        return (cache, logits), token

    _, new_tokens = jax.lax.scan(step, (cache, logits), _split(rng, max_new_tokens))
    return jnp.concatenate([prompt_tokens, new_tokens.T.astype(prompt_tokens.dtype)], axis=1)


def generate(model: nn.Module, params, prompt_tokens, max_new_tokens: int, rng, *, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
             token_range: Optional[tuple[int, int]] = None):
    """Extends `prompt_tokens` [batch, prompt_len] by `max_new_tokens` sampled tokens -> [batch, prompt_len + new].

    `model` is the training-mode model and `params` its "params" collection (boxed or not).

    `greedy` takes the argmax; otherwise logits are divided by `temperature`, filtered to the `top_k` largest
    and/or the `top_p` nucleus, and sampled with `rng`: one key for the batch, or a key per row ([batch, 2]), with
    which each row's tokens do not depend on the other rows of its batch. `token_range=(start, stop)` draws only ids
    start..stop-1 (image tokens after a caption, say). Traceable: it may run inside a compiled step.
    Past the model's `block_size`, it reads a sliding window of
    the latest tokens: each time the window is full, its cache is filled again from the last half of it, so every
    token sees at least half a block of context. Compiles once per model, shape and sampling setting (a few shapes
    when the window slides).
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] == 0:
        raise ValueError(f"prompt_tokens must be [batch, prompt_len] with prompt_len >= 1, got {prompt_tokens.shape}")
    if max_new_tokens < 1:
        return prompt_tokens
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
    if top_k is not None and not 1 <= top_k <= getattr(model, "vocab_size", top_k):
        raise ValueError(f"top_k must be between 1 and the vocabulary size, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    params, decoder, block = nn.meta.unbox(params), model.clone(decode=True), model.block_size
    tokens, window = prompt_tokens, 0
    while tokens.shape[1] < prompt_tokens.shape[1] + max_new_tokens:
        # The first window reads the prompt (its latest block - 1 tokens); later ones the last half block.
        context = tokens[:, -(block - 1 if window == 0 else block // 2):]
        wanted = prompt_tokens.shape[1] + max_new_tokens - tokens.shape[1]
        count = min(wanted, block - context.shape[1])
        out = _generate(decoder, params, context, _fold(rng, window) if window else rng, count, temperature, top_k,
                        top_p, greedy, None if token_range is None else tuple(token_range))
        tokens, window = jnp.concatenate([tokens, out[:, context.shape[1]:]], axis=1), window + 1
    return tokens

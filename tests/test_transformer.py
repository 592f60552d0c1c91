"""Transformer blocks, GPT and generation: masks, grouped-query attention, KV cache, sampling, dtypes, axis names."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax.generate import generate, top_k_logits, top_p_logits
from bmjax.models.gpt import GPT, PRESETS
from bmjax.models.transformer import CAUSAL_CHUNK, MultiHeadAttention, attention_mask, rotary_embedding

TINY = dict(vocab_size=61, block_size=24, num_layers=2, num_heads=4, embed_dim=32)


def init_params(model, length=8, seed=0, spread=0.0):
    """The model's unboxed params; `spread` adds noise so that random logits are far from ties."""
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((2, length), jnp.int32))
    params = nn.meta.unbox(variables)["params"]
    if spread:
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
        leaves = [p + spread * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
        params = jax.tree.unflatten(treedef, leaves)
    return params


@functools.partial(jax.jit, static_argnames=("model", "train"))
def forward(model, params, tokens, train=False, rng=None):
    """Compiled logits (eager linen applies are slow on CPU)."""
    return model.apply({"params": params}, tokens, train=train, rngs={"dropout": rng} if train else None)


def random_tokens(shape, seed=1, vocab_size=TINY["vocab_size"]):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, vocab_size, jnp.int32)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_gpt_logits_shape_and_dtype():
    model = GPT(**TINY, dropout=0.1)
    params = init_params(model)
    tokens = random_tokens((3, 16))
    logits = forward(model, params, tokens)
    assert logits.shape == (3, 16, TINY["vocab_size"]) and logits.dtype == jnp.float32
    train_logits = forward(model, params, tokens, train=True, rng=jax.random.PRNGKey(0))
    assert not np.allclose(logits, train_logits)  # dropout acts in training only
    with pytest.raises(ValueError, match="block_size"):
        jax.eval_shape(forward, model, params, random_tokens((1, 25)))


@pytest.mark.parametrize("preset, expected", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168)])
def test_preset_parameter_counts(preset, expected):
    model = GPT(**PRESETS[preset])
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    assert count(nn.meta.unbox(shapes)) == expected


def test_causal_mask_hides_later_tokens():
    model = GPT(**TINY)
    params = init_params(model)
    tokens = random_tokens((2, 12))
    t = 5
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % TINY["vocab_size"])
    logits, changed_logits = (forward(model, params, x) for x in (tokens, changed))
    np.testing.assert_allclose(logits[:, :t + 1], changed_logits[:, :t + 1], atol=1e-6)
    assert not np.allclose(logits[:, t + 1:], changed_logits[:, t + 1:], atol=1e-4)


def test_chunked_causal_attention_equals_the_whole_score_matrix():
    # Past CAUSAL_CHUNK positions causal attention runs in query chunks; an explicit causal mask (causal=False)
    # takes the whole score matrix. Same outputs and gradients, with padding and a score bias, at a length that
    # is not a multiple of the chunk.
    length = 2 * CAUSAL_CHUNK + 3
    attention = MultiHeadAttention(num_heads=2, head_dim=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, length, 16))
    padding_mask = jnp.arange(length)[None] < jnp.array([[length - 5], [length]])
    bias = jax.random.normal(jax.random.PRNGKey(2), (1, 2, length, length))
    params = attention.init(jax.random.PRNGKey(1), x[:, :4])
    whole_mask = attention_mask(length, length, causal=True, padding_mask=padding_mask)

    def loss(params, x, causal):
        out = attention.apply(params, x, causal=causal, bias=bias, padding_mask=padding_mask if causal else None,
                              mask=None if causal else whole_mask)
        return jnp.sum(jnp.sin(out)), out

    chunked, whole = (jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)(
        params, x, causal) for causal in (True, False))
    np.testing.assert_allclose(chunked[0][1], whole[0][1], atol=1e-5)
    for a, b in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(whole[1])):
        np.testing.assert_allclose(a, b, atol=1e-4)
    scores = f"f32[2,2,{length},{length}]"  # the whole score matrix, computed without chunks only
    assert scores not in str(jax.make_jaxpr(lambda x: attention.apply(params, x, causal=True))(x))
    assert scores in str(jax.make_jaxpr(lambda x: attention.apply(params, x, mask=whole_mask))(x))


def test_padding_mask_hides_padded_keys():
    attention = MultiHeadAttention(num_heads=4, head_dim=8)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 32))
    padding_mask = jnp.array([[True] * 4 + [False] * 2, [True] * 6])
    params = attention.init(jax.random.PRNGKey(1), x)
    changed = x.at[0, 4:].set(5.0)  # only padded positions of row 0 change
    out, changed_out = (attention.apply(params, y, padding_mask=padding_mask) for y in (x, changed))
    np.testing.assert_allclose(out[0, :4], changed_out[0, :4], atol=1e-6)
    np.testing.assert_allclose(out[1], changed_out[1], atol=1e-6)
    unmasked, changed_unmasked = (attention.apply(params, y) for y in (x, changed))
    assert not np.allclose(unmasked[0, :4], changed_unmasked[0, :4], atol=1e-4)
    # An explicit boolean mask [batch, 1, q_len, kv_len] is the same as building it from the arguments.
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None] & padding_mask[:, None, None, :]
    np.testing.assert_allclose(attention.apply(params, x, mask=mask),
                               attention.apply(params, x, causal=True, padding_mask=padding_mask), atol=1e-6)


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_grouped_query_attention_has_fewer_kv_parameters(num_kv_heads):
    full = init_params(GPT(**TINY))
    grouped_model = GPT(**TINY, num_kv_heads=num_kv_heads)
    grouped = init_params(grouped_model)
    key = grouped["block_0"]["attention"]["key"]["kernel"]
    assert key.shape == (32, num_kv_heads, 8)
    assert full["block_0"]["attention"]["key"]["kernel"].shape == (32, 4, 8)
    assert count(grouped) < count(full)
    assert forward(grouped_model, grouped, random_tokens((2, 10))).shape == (2, 10, TINY["vocab_size"])
    with pytest.raises(ValueError, match="multiple"):
        jax.eval_shape(GPT(**TINY, num_kv_heads=3).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_position_kinds_run(positions):
    model = GPT(**TINY, positions=positions, activation="swiglu")
    params = init_params(model)
    assert ("position_embedding" in params) == (positions == "learned")
    assert "gate" in params["block_0"]["mlp"]
    logits = forward(model, params, random_tokens((2, 10)))
    assert logits.shape == (2, 10, TINY["vocab_size"]) and np.isfinite(logits).all()


def test_rotary_scores_depend_only_on_relative_position():
    q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 1, 16))
    def score(query_position, key_position):
        rq = rotary_embedding(q, jnp.array([[query_position]]))
        rk = rotary_embedding(k, jnp.array([[key_position]]))
        return float(jnp.sum(rq * rk))
    assert score(3, 1) == pytest.approx(score(13, 11), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def full_forward_greedy(model, params, prompt, max_new_tokens):
    """Greedy decoding without a cache: recompute the whole sequence for every new token."""
    total = prompt.shape[1] + max_new_tokens
    tokens = jnp.zeros((prompt.shape[0], total), jnp.int32).at[:, :prompt.shape[1]].set(prompt)
    for t in range(prompt.shape[1], total):
        # Causal: the zeros after position t - 1 do not change its logits, so one compiled shape serves all steps.
        tokens = tokens.at[:, t].set(jnp.argmax(forward(model, params, tokens)[:, t - 1], axis=-1))
    return tokens


@pytest.mark.parametrize("positions, num_kv_heads", [("learned", None), ("rotary", 2)])
def test_greedy_generate_matches_full_recomputation(positions, num_kv_heads):
    model = GPT(**TINY, positions=positions, num_kv_heads=num_kv_heads)
    params = init_params(model, spread=0.3)
    prompt = random_tokens((2, 5))
    generated = generate(model, params, prompt, 12, jax.random.PRNGKey(0), greedy=True)
    assert generated.shape == (2, 17) and generated.dtype == jnp.int32
    np.testing.assert_array_equal(generated, full_forward_greedy(model, params, prompt, 12))
    assert len(np.unique(generated[:, 5:])) > 2  # not a degenerate repetition


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_logits_match_full_forward(positions):
    model = GPT(**TINY, positions=positions, num_kv_heads=2)
    params = init_params(model)
    tokens = random_tokens((2, 14))
    expected = forward(model, params, tokens)

    decoder = model.clone(decode=True)
    cache = jax.jit(decoder.init)(jax.random.PRNGKey(0), tokens)["cache"]  # sized for 14 positions
    step = jax.jit(lambda cache, chunk: decoder.apply({"params": params, "cache": cache}, chunk, mutable=["cache"]))
    # Prefill a chunk of 4 tokens, then one token at a time.
    logits, updated = step(cache, tokens[:, :4])
    pieces = [logits]
    for t in range(4, 14):
        logits, updated = step(updated["cache"], tokens[:, t:t + 1])
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), expected, atol=1e-5)
    assert int(updated["cache"]["block_0"]["attention"]["cache_index"]) == 14


def test_top_k_logits():
    logits = jnp.array([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 2.0]])
    filtered = top_k_logits(logits, 2)
    np.testing.assert_array_equal(filtered, [[-np.inf, 4.0, 3.0, -np.inf], [-np.inf, -np.inf, 5.0, 2.0]])
    np.testing.assert_array_equal(top_k_logits(logits, 4), logits)


def test_top_p_logits():
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    kept = lambda p: np.isfinite(np.asarray(top_p_logits(logits, p)))
    np.testing.assert_array_equal(kept(0.5), [[True, True, False, False], [False, False, True, True]])
    np.testing.assert_array_equal(kept(0.3), [[True, False, False, False], [False, False, False, True]])
    np.testing.assert_array_equal(kept(0.75), [[True, True, True, False], [False, True, True, True]])
    np.testing.assert_array_equal(kept(1.0), np.ones((2, 4), bool))
    np.testing.assert_allclose(top_p_logits(logits, 0.5)[0, :2], logits[0, :2])  # kept logits unchanged
    # Mass exactly p (powers of two sum exactly): the first two already reach 0.75, so the third goes.
    exact = jnp.log(jnp.array([4.0, 2.0, 1.0, 1.0]))
    np.testing.assert_array_equal(np.isfinite(top_p_logits(exact, 0.75)), [True, True, False, False])


def test_sampling_is_reproducible_and_filtered():
    model = GPT(**TINY)
    params = init_params(model, spread=0.3)
    prompt = random_tokens((2, 3))
    sample = lambda seed, **kw: generate(model, params, prompt, 10, jax.random.PRNGKey(seed), temperature=0.8, **kw)
    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))
    greedy = generate(model, params, prompt, 10, jax.random.PRNGKey(5), greedy=True)
    np.testing.assert_array_equal(sample(3, top_k=1), greedy)
    np.testing.assert_array_equal(sample(4, top_p=1e-6), greedy)


def test_generate_slides_a_window_past_the_block():
    """Past block_size, each token comes from the latest window: the prompt's block, then from half a block on."""
    block = 8
    model = GPT(**{**TINY, "block_size": block, "num_layers": 1})
    params = init_params(model, spread=0.3)
    prompt = random_tokens((2, 3))
    out = generate(model, params, prompt, 14, jax.random.PRNGKey(0), greedy=True)
    assert out.shape == (2, 17)
    tokens, start = prompt, 0  # the same tokens recomputed without a cache, the window slid by hand
    apply = jax.jit(model.apply)
    for _ in range(14):
        if tokens.shape[1] - start == block:
            start = tokens.shape[1] - block // 2
        logits = apply({"params": params}, tokens[:, start:])
        tokens = jnp.concatenate([tokens, jnp.argmax(logits[:, -1], -1)[:, None].astype(tokens.dtype)], axis=1)
    np.testing.assert_array_equal(out, tokens)
    long_prompt = random_tokens((1, 12))  # longer than the block: the window starts at its end
    assert generate(model, params, long_prompt, 5, jax.random.PRNGKey(0)).shape == (1, 17)


def test_bfloat16_compute_keeps_float32_params_and_gradients():
    model = GPT(**TINY, dtype=jnp.bfloat16)
    params = init_params(model)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    tokens = random_tokens((2, 12))

    def loss(params):
        logits = model.apply({"params": params}, tokens[:, :-1])
        assert logits.dtype == jnp.float32
        labels = jax.nn.one_hot(tokens[:, 1:], TINY["vocab_size"])
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(value) and value == pytest.approx(np.log(TINY["vocab_size"]), rel=0.1)
    assert all(g.dtype == jnp.float32 and np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["block_1"]["mlp"]["up"]["kernel"]).sum()) > 0


def test_parameters_carry_logical_axis_names():
    model = GPT(**TINY, tie_embeddings=False)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    boxed = variables["params"]
    assert all(isinstance(leaf, nn.Partitioned)
               for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
    specs = nn.get_partition_spec(boxed)
    block = specs["block_0"]
    assert specs["token_embedding"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["head"]["kernel"] == jax.sharding.PartitionSpec("embed", "vocab")
    assert specs["final_norm"]["scale"] == jax.sharding.PartitionSpec("embed")
    assert block["attention"]["query"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads", "kv")
    assert block["attention"]["out"]["kernel"] == jax.sharding.PartitionSpec("heads", "kv", "embed")
    assert block["mlp"]["up"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    assert block["mlp"]["down"]["kernel"] == jax.sharding.PartitionSpec("mlp", "embed")

    # Unboxing gives the plain arrays; rules map logical names to mesh axes (unnamed ones stay replicated).
    plain = nn.meta.unbox(variables)["params"]
    assert isinstance(plain["block_0"]["attention"]["query"]["kernel"], jax.Array)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",))
    shardings = nn.logical_to_mesh_sharding(specs, mesh, [("heads", "model"), ("mlp", "model")])
    assert shardings["block_0"]["attention"]["query"]["kernel"].spec == jax.sharding.PartitionSpec(None, "model", None)
    assert shardings["block_0"]["mlp"]["down"]["kernel"].spec == jax.sharding.PartitionSpec("model", None)

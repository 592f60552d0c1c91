"""T5: shapes, padding, causality, relative-position buckets, cached decoding, sizes, dtypes, axis names, and
agreement with Hugging Face's T5ForConditionalGeneration where torch and transformers are installed."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax import models
from bmjax.errors import UsageError
from bmjax.models.t5 import PRESETS, T5, generate, relative_position_bucket

# Smaller than the "tiny" preset, to keep compilation short; the decoder is deeper than the encoder.
TINY = dict(vocab_size=64, num_layers=1, num_decoder_layers=2, num_heads=2, embed_dim=16, head_dim=8, mlp_dim=32)
VOCAB = TINY["vocab_size"]


def random_tokens(shape, seed, low=2):
    """Token ids in [low, VOCAB): no padding (0) and, with low=2, no EOS (1). (NumPy: nothing to compile.)"""
    return jnp.asarray(np.random.default_rng(seed).integers(low, VOCAB, shape), jnp.int32)


def batch(inputs_shape=(2, 9), targets_shape=(2, 7), seed=1):
    return {"inputs": random_tokens(inputs_shape, seed), "targets": random_tokens(targets_shape, seed + 1)}


def key(seed):
    """A PRNG key of the "rbg" kind: XLA's own generator compiles about 3x faster on CPU than threefry, which
    matters for the many dropout masks of a training pass."""
    return jax.random.key(seed, impl="rbg")


def init_params(model, seed=0, spread=0.0):
    """Unboxed params; `spread` adds noise so that the random model's greedy choices are far from ties (and not
    merely a copy of the decoder's input token, as T5's initialisation favours)."""
    @jax.jit
    def init(rng):
        params = nn.meta.unbox(model.init(rng, batch((1, 4), (1, 3))))["params"]
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(rng, 1), len(leaves))
        return jax.tree.unflatten(treedef, [p + spread * jax.random.normal(k, p.shape, p.dtype)
                                            for p, k in zip(leaves, keys)])

    return init(key(seed))


@functools.partial(jax.jit, static_argnames=("model", "train"))
def forward(model, params, x, train=False, rng=None):
    return model.apply({"params": params}, x, train=train, rngs={"dropout": rng} if train else None)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny():
    """T5 v1.0: ReLU, logits through the tied embedding."""
    model = T5(**TINY, dropout=0.1)
    return model, init_params(model, spread=0.3)


@pytest.fixture(scope="module")
def tiny_v11():
    """T5 v1.1: gated GELU, untied head (whose random greedy choices vary more than the tied one's)."""
    model = T5(**TINY, activation="geglu", tie_embeddings=False)
    return model, init_params(model, spread=0.3)


def test_logits_shape_dtype_dropout_and_bad_batch(tiny):
    model, params = tiny
    x = batch()
    logits = forward(model, params, x)
    assert logits.shape == (2, 7, VOCAB) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    train_logits = forward(model, params, x, train=True, rng=key(0))
    assert not np.allclose(logits, train_logits)  # dropout acts in training only
    with pytest.raises(UsageError, match="'inputs' and 'targets'"):
        model.apply({"params": params}, x["inputs"])


def test_registry_builds_t5_with_the_vocabulary_as_outputs():
    from experiments.t5_sst2 import T5Sst2

    config = T5Sst2(num_layers=1, num_heads=2, embed_dim=16, head_dim=8, mlp_dim=32, vocab_size=999)
    model = models.build("t5", config, models.ModelIO(num_outputs=50))
    assert isinstance(model, T5) and model.vocab_size == 50, "the task's vocabulary, not --vocab_size"
    assert (model.num_layers, model.head_dim, model.mlp_dim, model.dropout) == (1, 8, 32, config.dropout)


def test_encoder_padding_does_not_change_real_tokens(tiny):
    model, params = tiny
    x = batch((2, 6), (2, 5))
    padded = dict(x, inputs=jnp.pad(x["inputs"], ((0, 0), (0, 5))))  # five padding ids (0) appended
    np.testing.assert_allclose(forward(model, params, x), forward(model, params, padded), atol=1e-5)
    # Without the mask the padding would be attended to: the same tokens with id 3 instead of 0 differ.
    not_padding = dict(x, inputs=jnp.pad(x["inputs"], ((0, 0), (0, 5)), constant_values=3))
    assert not np.allclose(forward(model, params, x), forward(model, params, not_padding), atol=1e-3)


def test_decoder_is_causal(tiny):
    model, params = tiny
    x = batch((2, 8), (2, 10))
    changed = dict(x, targets=x["targets"].at[:, 6].set((x["targets"][:, 6] + 1) % VOCAB))
    before, after = forward(model, params, x), forward(model, params, changed)
    # The decoder reads the targets shifted right: logits at position i see targets before i only.
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not np.allclose(before[:, 7:], after[:, 7:], atol=1e-3)


def test_relative_position_buckets_by_hand():
    bucket = jax.jit(relative_position_bucket, static_argnames=("bidirectional", "num_buckets", "max_distance"))
    # Bidirectional, 32 buckets, max distance 128: 16 per direction, keys after the query from bucket 16 on;
    # distances below 8 exact, then 8 + floor(log(d / 8) / log(128 / 8) * 8), at most 15.
    relative = np.array([0, -1, 1, -7, -8, -20, 20, -127, -128, 200, -1000])
    expected = [0, 1, 17, 7, 8, 10, 26, 15, 15, 31, 15]
    np.testing.assert_array_equal(bucket(relative, bidirectional=True), expected)
    # Causal: all 32 buckets for keys before the query, later keys in bucket 0; exact below 16, then
    # 16 + floor(log(d / 16) / log(128 / 16) * 16), at most 31.
    relative = np.array([3, 0, -3, -15, -16, -50, -127, -1000])
    expected = [0, 0, 3, 15, 16, 24, 31, 31]
    np.testing.assert_array_equal(bucket(relative, bidirectional=False), expected)
    # 8 buckets, max distance 20, bidirectional: 4 per direction, exact below 2, then
    # 2 + floor(log(d / 2) / log(10) * 2): 2 up to d = 6, 3 from d = 7 (log(3.5) / log(10) * 2 = 1.09).
    np.testing.assert_array_equal(
        bucket(np.array([-1, -2, -5, -6, -7, -30, 30]), bidirectional=True, num_buckets=8,
                                 max_distance=20), [1, 2, 2, 2, 3, 3, 7])


def test_cached_decoder_steps_match_the_full_forward_pass(tiny):
    model, params = tiny
    x = batch((2, 9), (2, 6))
    full = forward(model, params, x)
    cached = model.clone(decode=True)
    encoded = jax.jit(functools.partial(cached.apply, method=T5.encode))({"params": params}, x["inputs"])
    mask = x["inputs"] != 0
    decoder_inputs = jnp.pad(x["targets"], ((0, 0), (1, 0)))[:, :-1]

    @jax.jit
    def decoder_step(variables, tokens):
        return cached.apply(variables, tokens, encoded, mask, method=T5.decode_logits, mutable=["cache"])

    # A call on all 6 positions creates the cache; zeroed, it is the empty cache generate starts from.
    shapes = jax.eval_shape(decoder_step, {"params": params}, decoder_inputs)[1]["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    for i in range(6):
        logits, variables = decoder_step({"params": params, "cache": cache}, decoder_inputs[:, i:i + 1])
        cache = variables["cache"]
        np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5)


def greedy_by_recomputation(model, params, inputs, max_length, eos_id):
    """Greedy decoding that reruns the whole model for each new token (no cache)."""
    targets = np.zeros((inputs.shape[0], max_length), np.int32)
    finished = np.zeros(inputs.shape[0], bool)
    for i in range(max_length):
        # Positions from i on are still zero: causality keeps them from affecting logits at i.
        logits = forward(model, params, {"inputs": inputs, "targets": jnp.asarray(targets)})
        token = np.where(finished, 0, np.argmax(logits[:, i], axis=-1))
        targets[:, i] = token
        finished |= token == eos_id
    return targets


def test_cached_greedy_generation_equals_recomputation(tiny_v11):
    model, params = tiny_v11
    inputs = random_tokens((3, 7), seed=5).at[2, 4:].set(0)  # the last row is padded
    no_eos = np.asarray(generate(model, params, inputs, 8, eos_id=-1))
    assert no_eos.shape == (3, 8) and no_eos.dtype == np.int32
    np.testing.assert_array_equal(no_eos, greedy_by_recomputation(model, params, inputs, 8, eos_id=-1))
    assert len(np.unique(no_eos)) > 5  # varied tokens, not one id repeated
    # Call a token that a row produces after step 0 the EOS: that row stops there and is padding afterwards.
    row, step = next((r, i) for r in range(3) for i in range(1, 7) if no_eos[r, i] != no_eos[r, 0])
    eos = int(no_eos[row, step])
    with_eos = np.asarray(generate(model, params, inputs, 8, eos_id=eos))
    np.testing.assert_array_equal(with_eos, greedy_by_recomputation(model, params, inputs, 8, eos_id=eos))
    np.testing.assert_array_equal(with_eos[row, :step + 1], no_eos[row, :step + 1])
    assert np.all(with_eos[row, step + 1:] == 0)


def test_sampling_is_reproducible_and_checks_its_arguments(tiny_v11):
    model, params = tiny_v11
    inputs = random_tokens((2, 5), seed=6)
    rng = key(3)
    first = generate(model, params, inputs, 6, rng, greedy=False, temperature=1.5, top_k=20, top_p=0.95)
    again = generate(model, params, inputs, 6, rng, greedy=False, temperature=1.5, top_k=20, top_p=0.95)
    other = generate(model, params, inputs, 6, key(4), greedy=False, temperature=1.5, top_k=20,
                     top_p=0.95)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.all((np.asarray(first) >= 0) & (np.asarray(first) < VOCAB))
    with pytest.raises(UsageError, match="rng"):
        generate(model, params, inputs, 4, greedy=False)
    with pytest.raises(UsageError, match="temperature"):
        generate(model, params, inputs, 4, rng, greedy=False, temperature=0.0)
    with pytest.raises(UsageError, match="max_length"):
        generate(model, params, inputs, 0)


@pytest.mark.parametrize("preset, expected", [("t5-small", 60_506_624), ("t5-base", 222_903_552)])
def test_preset_parameter_counts(preset, expected):
    shapes = jax.eval_shape(T5(**PRESETS[preset]).init, jax.random.PRNGKey(0), batch((1, 4), (1, 3)))
    assert count(nn.meta.unbox(shapes)) == expected


def test_bfloat16_forward_and_remat_gradients(tiny):
    _, params = tiny
    x = batch()
    reference = forward(T5(**TINY, dropout=0.1), params, x)  # the fixture's model: already compiled
    half = T5(**TINY, dropout=0.1, dtype=jnp.bfloat16)
    logits = forward(half, params, x)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    assert np.abs(logits - reference).max() < 0.1 * np.abs(reference).max()  # bfloat16 rounding only

    def loss(model, params):
        return jnp.mean(forward(model, params, x) ** 2)

    plain = jax.grad(functools.partial(loss, T5(**TINY)))(params)
    recomputed = jax.grad(functools.partial(loss, T5(**TINY, remat=True)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), plain, recomputed)


def test_every_parameter_has_logical_axis_names():
    model = T5(**dict(TINY, activation="geglu", tie_embeddings=False, num_layers=2, num_decoder_layers=1))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch((1, 4), (1, 3)))
    specs = nn.get_partition_spec(variables)["params"]
    names = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    shapes = jax.tree.leaves(nn.meta.unbox(variables)["params"])
    assert len(names) == len(shapes)
    for spec, shape in zip(names, shapes):
        assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec), spec
    assert specs["token_embedding"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["head"]["kernel"] == jax.sharding.PartitionSpec("embed", "vocab")
    assert specs["encoder"]["relative_bias"]["embedding"] == jax.sharding.PartitionSpec("relpos_buckets", "heads")
    attention = specs["decoder"]["layer_0"]["cross_attention"]
    assert attention["query"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads", "kv")
    assert specs["decoder"]["layer_0"]["mlp"]["gate"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    assert "layer_1" not in specs["decoder"] and "layer_1" in specs["encoder"]  # num_decoder_layers=1


@pytest.mark.parametrize("feed_forward, tied", [("relu", True), ("gated-gelu", False)])
def test_matches_hugging_face_t5(feed_forward, tied):
    torch = pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0")
    transformers = pytest.importorskip("transformers", reason="transformers not installed: pip install transformers")
    from bmjax.hf.t5 import t5_model, t5_params

    torch.manual_seed(0)
    # 8 buckets up to distance 20 on 30 input tokens: exact, logarithmic and clipped buckets all occur.
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=2, num_heads=4,
        feed_forward_proj=feed_forward, tie_word_embeddings=tied, relative_attention_num_buckets=8,
        relative_attention_max_distance=20, decoder_start_token_id=0)
    hf_model = transformers.T5ForConditionalGeneration(config).eval()
    inputs = torch.randint(2, VOCAB, (2, 30))
    inputs[1, 20:] = 0  # padding
    targets = torch.randint(2, VOCAB, (2, 25))
    with torch.no_grad():
        expected = hf_model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=targets).logits.numpy()

    model = t5_model(config)
    assert model.tie_embeddings == tied and model.activation == ("relu" if tied else "geglu")
    params = t5_params(hf_model.state_dict(), config)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, jax.eval_shape(lambda: init_params(model)))
    x = {"inputs": jnp.asarray(inputs.numpy()), "targets": jnp.asarray(targets.numpy())}
    logits = forward(model, params, x)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)

    if tied:
        return  # greedy decoding is compared on the v1.1 configuration only, to keep the test short
    with torch.no_grad():
        hf_tokens = hf_model.generate(input_ids=inputs, attention_mask=(inputs != 0).long(), do_sample=False,
                                      num_beams=1, max_new_tokens=8, min_new_tokens=8, eos_token_id=None,
                                      use_cache=False)  # HF's cache fails (IndexError) with more decoder layers
                                                        # than encoder layers; recomputation it is
    np.testing.assert_array_equal(generate(model, params, x["inputs"], 8, eos_id=-1), hf_tokens[:, 1:].numpy())

"""BERT: shapes, padding and packed-segment masks, dtypes, axis names, presets, and equality with Hugging Face
`transformers` through the importer (`bmjax.hf.bert.import_bert`)."""

import functools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax import models
from bmjax.errors import UsageError
from bmjax.models.bert import PRESETS, BertEncoder, BertForMaskedLM, BertForSequenceClassification

TINY = dict(vocab_size=50, block_size=16, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=48, dropout=0.1)
# Two rows padded with 0 (the pad id) to length 8.
PADDED = np.array([[7, 3, 9, 12, 4, 0, 0, 0],
                   [5, 8, 2, 11, 6, 13, 21, 30]], np.int32)


def init_params(model, x=PADDED, seed=0, spread=0.05):
    """Unboxed params, with noise added so that biases and norms are not their trivial initial values."""
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), x))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [p + spread * jax.random.normal(k, p.shape, p.dtype)
                                        for p, k in zip(leaves, keys)])


@functools.partial(jax.jit, static_argnames=("model", "train"))
def forward(model, params, x, train=False, rng=None):
    return model.apply({"params": params}, x, train=train, rngs={"dropout": rng} if train else None)


def packed(tokens, segment_ids, token_types=None):
    """A packed-rows input; every call carries token types, so that one compiled forward serves them all."""
    types = np.zeros_like(tokens) if token_types is None else token_types
    return {"tokens": tokens, "segment_ids": segment_ids, "token_types": types}


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def mlm():
    model = BertForMaskedLM(**TINY)
    return model, init_params(model)


def test_shapes_and_registry(mlm):
    model, params = mlm
    logits = forward(model, params, PADDED)
    assert logits.shape == (2, 8, TINY["vocab_size"]) and logits.dtype == jnp.float32

    classifier = BertForSequenceClassification(num_outputs=3, **TINY)
    assert isinstance(classifier, BertForSequenceClassification) and classifier.vocab_size == TINY["vocab_size"]
    classifier_params = init_params(classifier)
    logits = forward(classifier, classifier_params, PADDED, train=True, rng=jax.random.PRNGKey(3))
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32

    # The registry gives the MLM the task's vocabulary and the classifier the tokenizer's, and a pretrained
    # encoder moves into a classifier by name: both hold the same "bert" subtree.
    from experiments.bert_pretrain import BertPretrain

    sizes = BertPretrain(**{k: v for k, v in TINY.items() if k != "vocab_size"})
    assert models.build("bert_mlm", sizes, models.ModelIO(num_outputs=77)).vocab_size == 77
    built = models.build("bert_classifier", sizes, models.ModelIO(num_outputs=3, vocab_size=77))
    assert (built.vocab_size, built.num_outputs, built.mlp_dim) == (77, 3, TINY["mlp_dim"])
    same_shapes = jax.tree.map(lambda a, b: a.shape == b.shape, params["bert"], classifier_params["bert"])
    assert all(jax.tree.leaves(same_shapes))
    assert set(classifier_params) == {"bert", "pooler", "classifier"}
    assert set(params) == {"bert", "mlm_dense", "mlm_norm", "mlm_bias"}


def test_padding_changes_nothing_else(mlm):
    model, params = mlm
    logits = forward(model, params, packed(PADDED, (PADDED != 0).astype(np.int32)))
    # Whatever tokens and token types sit in segment 0 (padding), the real tokens' logits stay the same.
    segments = (PADDED != 0).astype(np.int32)
    noisy = packed(np.where(segments == 0, 17, PADDED), segments, token_types=np.where(segments == 0, 1, 0))
    noisy_logits = forward(model, params, noisy)
    np.testing.assert_allclose(noisy_logits[0, :5], logits[0, :5], atol=1e-5)
    np.testing.assert_allclose(noisy_logits[1], logits[1], atol=1e-5)
    # Plain token ids: the pad id 0 marks padding, as segment 0 does.
    np.testing.assert_allclose(forward(model, params, PADDED)[0, :5], logits[0, :5], atol=1e-5)
    # While a real token does change its neighbours' logits: attention is not cut off altogether.
    changed = PADDED.copy()
    changed[0, 4] = 17
    assert np.abs(forward(model, params, changed)[0, :4] - logits[0, :4]).max() > 1e-3


def test_packed_segments_do_not_see_each_other(mlm):
    model, params = mlm
    first, second = [7, 3, 9], [5, 8, 2, 11]
    row = packed(np.array([first + second + [0]], np.int32).repeat(2, 0),
                 np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1] * 7 + [0]], np.int32))
    logits = forward(model, params, row)
    # Each segment equals its own row run alone (padded), with positions from 0.
    alone = forward(model, params, np.array([first + [0] * 5, second + [0] * 4], np.int32))
    np.testing.assert_allclose(logits[0, :3], alone[0, :3], atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:7], alone[1, :4], atol=1e-5)
    # The same tokens as one segment (row 1: seeing each other) give other logits.
    assert np.abs(logits[1, 3:7] - logits[0, 3:7]).max() > 1e-3


def test_bfloat16_remat_and_logical_names(mlm):
    float32_model, params = mlm
    reference = forward(float32_model, params, PADDED)
    bf16 = forward(BertForMaskedLM(**TINY, dtype=jnp.bfloat16), params, PADDED)
    assert bf16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(bf16)))
    assert float(jnp.abs(bf16 - reference).max()) < 0.1 * float(jnp.abs(reference).max())
    # Rematerialised blocks: the same parameter names and the same function.
    np.testing.assert_allclose(forward(BertForMaskedLM(**TINY, remat=True), params, PADDED), reference, atol=1e-5)

    for model in (float32_model, BertForSequenceClassification(**TINY)):
        boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), PADDED)["params"]
        leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
        assert leaves and all(isinstance(v, nn.Partitioned) and len(v.names) == v.value.ndim for v in leaves)
    names = nn.get_partition_spec(jax.eval_shape(float32_model.init, jax.random.PRNGKey(0), PADDED))["params"]
    assert tuple(names["bert"]["token_embedding"]["embedding"]) == ("vocab", "embed")
    assert tuple(names["bert"]["blocks_0"]["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(names["mlm_bias"]) == ("vocab",)


def test_bad_input_is_a_usage_error(mlm):
    model, params = mlm
    with pytest.raises(UsageError, match="block_size=16"):
        model.apply({"params": params}, np.ones((1, 17), np.int32))
    with pytest.raises(UsageError, match="token ids"):
        model.apply({"params": params}, np.ones((1, 4, 2), np.int32))
    with pytest.raises(UsageError, match="segment_ids"):
        model.apply({"params": params}, {"tokens": PADDED, "segment_ids": PADDED[:, :4]})


def test_bert_base_parameter_count():
    """Encoder + pooler of bert-base: 109,482,240 parameters, as transformers.BertModel."""
    classifier = BertForSequenceClassification(vocab_size=30522, **PRESETS["bert-base"], num_outputs=2)
    shapes = jax.eval_shape(classifier.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    ours = count(nn.meta.unbox(shapes)) - count(nn.meta.unbox(shapes["classifier"]))
    assert ours == 109_482_240


# Hugging Face equivalence.

def hf_config(transformers):
    return transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=40, type_vocab_size=3,
                                   num_labels=3, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch", reason="the Hugging Face comparison needs PyTorch (pip install "
                                               "torch==2.13.0)")
    transformers = pytest.importorskip("transformers", reason="the Hugging Face comparison needs transformers")
    return torch, transformers


def saved_hf_model(torch, cls, config, folder):
    """A randomly initialised Hugging Face model, every weight perturbed (so biases and norms are not 0 and 1),
    in eval mode, saved as safetensors in `folder`."""
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_outputs(torch, model, tokens, token_types):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(tokens != 0, dtype=torch.long),
                    token_type_ids=torch.tensor(token_types, dtype=torch.long))
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


@pytest.mark.parametrize("class_name, bmjax_class", [("BertForMaskedLM", BertForMaskedLM),
                                                     ("BertForSequenceClassification", BertForSequenceClassification),
                                                     ("BertModel", BertEncoder)])
def test_matches_hugging_face(hf, tmp_path, class_name, bmjax_class):
    from bmjax.hf.bert import import_bert

    torch, transformers = hf
    hf_model = saved_hf_model(torch, getattr(transformers, class_name), hf_config(transformers), tmp_path)
    tokens = np.array([[31, 7, 52, 9, 0, 0, 0], [4, 98, 17, 23, 64, 3, 80]], np.int32)
    token_types = np.array([[0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 2, 2]], np.int32)
    expected = hf_outputs(torch, hf_model, tokens, token_types)

    model, params = import_bert(tmp_path)
    assert type(model) is bmjax_class and model.dropout == 0.1
    got = np.asarray(forward(model, params, {"tokens": tokens, "token_types": token_types}))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)  # padded positions too: HF computes them alike

    # The same weights as an in-memory state dict, or as a safetensors file plus its config.json.
    _, from_state_dict = import_bert(hf_model.state_dict(), config=hf_model.config)
    _, from_file = import_bert(tmp_path / "model.safetensors", config=tmp_path / "config.json")
    for other in (from_state_dict, from_file):
        assert all(jax.tree.leaves(jax.tree.map(np.array_equal, other, params)))


def test_hugging_face_parameter_count(hf):
    torch, transformers = hf
    with torch.device("meta"):  # shapes only, nothing allocated
        hf_model = transformers.BertModel(transformers.BertConfig())  # bert-base, vocabulary 30522
    assert sum(p.numel() for p in hf_model.parameters()) == 109_482_240
    encoder = BertEncoder(vocab_size=30522, **PRESETS["bert-base"])  # block_size 512, mlp_dim 4 * 768
    shapes = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    pooler = 768 * 768 + 768
    assert count(nn.meta.unbox(shapes)) + pooler == 109_482_240


def test_import_choices_and_errors(hf, tmp_path, monkeypatch):
    from bmjax.hf import load_state_dict
    from bmjax.hf.bert import import_bert

    torch, transformers = hf
    config = hf_config(transformers)
    saved_hf_model(torch, transformers.BertForMaskedLM, config, tmp_path)
    # Read without torch: safetensors through NumPy.
    monkeypatch.setitem(sys.modules, "torch", None)
    mlm_model, mlm_params = import_bert(tmp_path)
    assert isinstance(mlm_model, BertForMaskedLM)
    # A classifier on the MLM checkpoint's encoder: the encoder is copied, pooler and classifier start fresh.
    classifier, classifier_params = import_bert(tmp_path, head="classifier", num_outputs=5, dtype=jnp.bfloat16)
    assert classifier.num_outputs == 5 and classifier.dtype == jnp.bfloat16
    assert classifier_params["classifier"]["kernel"].shape == (32, 5)
    assert classifier_params["pooler"]["kernel"].shape == (32, 32)
    assert np.std(classifier_params["classifier"]["kernel"]) > 0.01  # initialised, not zeros
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, classifier_params["bert"], mlm_params["bert"])))

    state = load_state_dict(tmp_path)
    missing = dict(state)
    del missing["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(UsageError, match="'bert.encoder.layer.1.output.dense.weight'"):
        import_bert(missing, config=config.to_dict())
    odd = {**state, "bert.embeddings.token_type_embeddings.weight": np.zeros((2, 32), np.float32)}
    with pytest.raises(UsageError, match=r"token_type_embeddings.weight.*\(2, 32\).*\(3, 32\)"):
        import_bert(odd, config=config.to_dict())
    with pytest.raises(UsageError, match="needs its config"):
        import_bert(tmp_path / "model.safetensors")
    with pytest.raises(UsageError, match="unknown BERT head"):
        import_bert(tmp_path, head="pooler")
    with pytest.raises(UsageError, match="model_type='gpt2'"):
        import_bert(state, config={**config.to_dict(), "model_type": "gpt2"})

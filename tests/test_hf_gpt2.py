"""Hugging Face GPT-2 import: a random `transformers` GPT-2 and its bmjax copy agree on logits and greedy text."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GPT-2 importer is checked against PyTorch: pip install torch")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")
pytest.importorskip("safetensors", reason="needs safetensors (pip install safetensors)")

from bmjax.errors import UsageError  # noqa: E402
from bmjax.generate import generate  # noqa: E402
from bmjax.hf import load_config, load_state_dict  # noqa: E402
from bmjax.hf.__main__ import FLAGS_FILE, convert  # noqa: E402
from bmjax.hf.gpt2 import import_gpt2  # noqa: E402
from bmjax.models.gpt import GPT  # noqa: E402

VOCAB, POSITIONS = 97, 32


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(transformers GPT2LMHeadModel in eval mode, its save_pretrained folder, a torch state-dict file)."""
    torch.manual_seed(0)
    # A wide initialisation spreads the logits, so that greedy decoding has no near-ties to break.
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=VOCAB, n_positions=POSITIONS,
                                     initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(folder / "model")  # config.json + model.safetensors
    torch.save(model.state_dict(), folder / "weights.bin")
    return model, folder / "model", folder / "weights.bin"


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


TOKENS = np.random.RandomState(0).randint(0, VOCAB, (2, 24))


def test_logits_match_from_safetensors_folder(reference):
    hf_model, folder, _ = reference
    assert (folder / "model.safetensors").exists()
    model, params = import_gpt2(folder)
    assert (model.num_layers, model.num_heads, model.embed_dim, model.block_size) == (2, 4, 64, POSITIONS)
    ours = np.asarray(model.apply({"params": params}, TOKENS))
    theirs = torch_logits(hf_model, TOKENS)
    assert theirs.std() > 0.5  # logits with some spread, so a wrong mapping cannot hide
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_logits_match_from_torch_state_dict(reference):
    hf_model, _, bin_file = reference
    theirs = torch_logits(hf_model, TOKENS)
    for source in (bin_file, hf_model.state_dict()):  # the .bin file, and the in-memory state dict
        model, params = import_gpt2(source, config=hf_model.config)
        np.testing.assert_allclose(np.asarray(model.apply({"params": params}, TOKENS)), theirs, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(reference):
    hf_model, folder, _ = reference
    model, params = import_gpt2(folder)
    prompt = TOKENS[:, :5]
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                   do_sample=False, max_new_tokens=20, pad_token_id=0).numpy()
    ours = np.asarray(generate(model, params, prompt, 20, jax.random.PRNGKey(0), greedy=True))
    assert theirs.shape == (2, 25)
    np.testing.assert_array_equal(ours, theirs)


def test_sharded_and_bfloat16_safetensors_load(reference, tmp_path):
    hf_model, folder, _ = reference
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    whole, sharded = load_state_dict(folder), load_state_dict(tmp_path / "sharded")
    assert sharded.keys() == whole.keys()
    for name in whole:
        np.testing.assert_array_equal(sharded[name], whole[name])

    # NumPy has no bfloat16: these files are read directly, into ml_dtypes.bfloat16 arrays.
    from safetensors.torch import save_file
    weight = hf_model.state_dict()["transformer.wte.weight"]
    save_file({"wte": weight.to(torch.bfloat16)}, tmp_path / "bf16.safetensors")
    loaded = load_state_dict(tmp_path / "bf16.safetensors")["wte"]
    assert loaded.dtype.name == "bfloat16"
    np.testing.assert_array_equal(loaded.astype(np.float32), weight.to(torch.bfloat16).float().numpy())


def test_convert_writes_a_run_folder_that_load_params_reads(reference, tmp_path):
    from bmjax.train.checkpoint import load_params

    _, folder, _ = reference
    written = convert(folder, tmp_path / "run")
    assert written["model_type"] == "gpt2" and written["vocab_size"] == VOCAB
    flags = (tmp_path / "run" / FLAGS_FILE).read_text()
    for flag in ("--num_layers=2", "--num_heads=4", "--embed_dim=64", f"--block_size={POSITIONS}", "--use_bias=true"):
        assert flag in flags.splitlines()

    # What --restore_from does: fresh parameters of the same architecture, overwritten from the checkpoint.
    model, imported = import_gpt2(folder)
    fresh = GPT(vocab_size=VOCAB, block_size=POSITIONS, num_layers=2, num_heads=4, embed_dim=64).init(
        jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"]
    fresh = jax.tree.map(np.asarray, nn.meta.unbox(fresh))
    params, model_state, step = load_params(str(tmp_path / "run"), fresh, {})
    assert step == 0 and model_state == {}
    flat_restored = jax.tree_util.tree_leaves_with_path(params)
    flat_imported = dict(jax.tree_util.tree_leaves_with_path(imported))
    assert len(flat_restored) == len(flat_imported)
    for path, value in flat_restored:
        np.testing.assert_array_equal(value, flat_imported[path])

    with pytest.raises(UsageError, match="already holds checkpoints"):
        convert(folder, tmp_path / "run")

    # Named, the fine-tuning experiment gets only the flags it defines; the rest is a warning where it matters.
    written = convert(folder, tmp_path / "for_gpt", experiment="experiments.gpt_shakespeare_char")
    assert "--use_bias=true" in written["flags"] and not any(f.startswith("--mlp_ratio") for f in written["flags"])
    assert all("tie_embeddings" not in w for w in written["warnings"]), "GPT-2 ties them, as bmjax's default does"
    with pytest.raises(UsageError, match="cannot be imported"):
        convert(folder, tmp_path / "other", experiment="experiments.no_such_experiment")
    assert not (tmp_path / "other" / "checkpoints").exists(), "nothing written for a bad --experiment"


def test_bad_inputs_raise_usage_errors(reference, tmp_path):
    hf_model, folder, _ = reference
    with pytest.raises(UsageError, match="does not exist"):
        import_gpt2(tmp_path / "missing")
    with pytest.raises(UsageError, match="not a folder"):
        convert(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(UsageError, match="config.json"):
        load_config(tmp_path)  # an existing folder without config.json
    with pytest.raises(UsageError, match="holds no weights"):
        load_state_dict(tmp_path)
    with pytest.raises(UsageError, match="needs its config"):
        import_gpt2(hf_model.state_dict())

    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="model_type is 'llama'"):
        convert(other, tmp_path / "out")
    with pytest.raises(UsageError, match="not 'gpt2'"):
        import_gpt2(other)

    state = dict(hf_model.state_dict())
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(UsageError, match=r"lack 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
        import_gpt2(state, config=hf_model.config)
    wider = dict(load_config(folder), n_embd=128)
    with pytest.raises(UsageError, match=r"'transformer\.wte\.weight' is \(97, 64\).*implies \(97, 128\)"):
        import_gpt2(folder / "model.safetensors", config=wider)
    assert not os.path.exists(tmp_path / "out" / "checkpoints")  # nothing written for bad input

"""Big-model training on 8 simulated devices: a GPT under data, fsdp and tensor meshes and pmap; sharded
checkpoints onto another mesh; gradient accumulation, bfloat16 compute, remat, FLOPs per step."""

import numpy as np
import pytest
from conftest import read_metrics, read_result
from jax.sharding import PartitionSpec as P

from bmjax.config import Config
from bmjax.errors import UsageError
from bmjax.train import strategy as strategy_lib
from bmjax.train.loop import run
from experiments.gpt_shakespeare_char import GptShakespeareChar


def test_logical_names_map_to_mesh_axes():
    mesh = strategy_lib.MeshStrategy("data:2,fsdp:2,tensor:2")
    assert mesh.num_shards == 4, "data and fsdp both split the batch"
    spec = lambda logical, shape: mesh.parameter_sharding(P(*logical), shape).spec
    assert spec(("vocab", "embed"), (64, 32)) == P("tensor", "fsdp")
    assert spec(("embed", "heads", "kv"), (32, 4, 8)) == P("fsdp", "tensor", None)
    assert spec(("vocab", "embed"), (65, 32)) == P(None, "fsdp"), "an axis the mesh does not divide stays whole"
    assert spec((), (3,)) == P(None)
    with pytest.raises(UsageError, match="has 4 devices but there are 8"):
        strategy_lib.MeshStrategy("data:2,tensor:2")
    with pytest.raises(UsageError, match="axes from data, fsdp, tensor"):
        strategy_lib.MeshStrategy("model:8")


def gpt(workdir, data_dir, **overrides):
    settings = dict(data_dir=data_dir, num_layers=2, num_heads=4, embed_dim=32, block_size=16, batch_size=16,
                    train_steps=5, log_every_steps=1, eval_every_steps=100, dropout=0.0, warmup_steps=2)
    config = GptShakespeareChar(workdir=str(workdir), **{**settings, **overrides})
    run(config)
    return np.array([r["loss"] for r in read_metrics(workdir)])


def test_meshes_and_pmap_train_alike(shakespeare_dir, tmp_path):
    reference = gpt(tmp_path / "data8", shakespeare_dir, parallel="mesh", mesh="data:8")
    assert len(reference) == 5 and reference[-1] < reference[0]
    for name, overrides in {"fsdp8": dict(mesh="fsdp:8"), "2x2x2": dict(mesh="data:2,fsdp:2,tensor:2"),
                            "pmap": dict(parallel="pmap")}.items():
        np.testing.assert_allclose(gpt(tmp_path / name, shakespeare_dir, **overrides), reference, rtol=1e-5,
                                   err_msg=name)


def test_sharded_checkpoint_resumes_on_another_mesh(shakespeare_dir, tmp_path):
    constant = dict(lr_schedule="constant")  # the same learning rate at each step however long the run
    whole = gpt(tmp_path / "whole", shakespeare_dir, mesh="fsdp:8", train_steps=8, **constant)
    gpt(tmp_path / "moved", shakespeare_dir, mesh="data:2,fsdp:2,tensor:2", train_steps=5, **constant)
    moved = gpt(tmp_path / "moved", shakespeare_dir, mesh="fsdp:8", train_steps=8, extend=True, **constant)
    np.testing.assert_allclose(moved, whole, rtol=1e-5)


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    """k micro-batches whose gradients are added up take the step one batch of k times their size takes."""
    settings = dict(dataset="digits", model="mlp", hidden_sizes=(32,), batch_size=64, train_steps=10,
                    log_every_steps=1, learning_rate=3e-3)

    def losses(name, **overrides):
        config = Config(workdir=str(tmp_path / name), **{**settings, **overrides})
        run(config)
        return np.array([r["loss"] for r in read_metrics(config.workdir)])

    whole = losses("whole", parallel="single")
    for name, overrides in {"single4": dict(parallel="single", grad_accum_steps=4),
                            "mesh8": dict(parallel="mesh", grad_accum_steps=8),
                            "pmap2": dict(parallel="pmap", grad_accum_steps=2)}.items():
        np.testing.assert_allclose(losses(name, **overrides), whole, rtol=1e-5, err_msg=name)
    with pytest.raises(UsageError, match="does not split into --grad_accum_steps=16 micro-batches on each of 8"):
        losses("uneven", parallel="mesh", grad_accum_steps=16)


def test_bfloat16_remat_and_flops(shakespeare_dir, tmp_path):
    """bfloat16 compute trains (float32 parameters), remat changes no number, and result.json counts FLOPs."""
    reference = gpt(tmp_path / "f32", shakespeare_dir, parallel="single", train_steps=30, learning_rate=3e-3)
    remat = gpt(tmp_path / "remat", shakespeare_dir, parallel="single", train_steps=30, learning_rate=3e-3,
                remat=True)
    np.testing.assert_allclose(remat, reference, rtol=1e-5)
    bf16 = gpt(tmp_path / "bf16", shakespeare_dir, parallel="single", train_steps=30, learning_rate=3e-3,
               dtype="bfloat16")
    assert bf16[-1] < bf16[0] - 0.5, "bfloat16 compute still learns"
    np.testing.assert_allclose(bf16, reference, rtol=0.05)  # near float32, not equal to it
    assert not np.array_equal(bf16, reference)

    result = read_result(tmp_path / "f32")
    tokens = 16 * 16  # batch x block
    weights = result["parameters"] - 65 * 32 - 16 * 32  # embeddings do no matmul FLOPs but the tied head's
    assert result["flops_per_step"] > 6 * weights * tokens, "forward and backward of every weight"
    assert result["flops_per_step"] < 20 * result["parameters"] * tokens
    assert result["flops_per_second"] > 0


def test_optimizer_slots_take_their_parameters_axis_names():
    """Adam's moments are sharded like their parameters, through masks and partitions (--freeze) alike."""
    import jax
    import jax.numpy as jnp

    from bmjax import optim
    from bmjax.models.gpt import GPT
    from bmjax.train import state as state_lib

    model = GPT(vocab_size=64, block_size=8, num_layers=2, num_heads=2, embed_dim=16)
    tokens = jnp.ones((1, 8), jnp.int32)
    is_spec = lambda x: isinstance(x, P)
    for freeze in (None, "block_0/"):
        config = Config(workdir="/tmp/unused", optimizer="adamw", weight_decay=0.1, clip_grad_norm=1.0, freeze=freeze)
        tx = optim.create(config, 10)
        logical = state_lib.logical_axes(model, tx, tokens)
        opt_state = state_lib.create(model, tx, tokens, jax.random.PRNGKey(0)).opt_state
        assert jax.tree.structure(logical["opt_state"], is_leaf=is_spec) == jax.tree.structure(opt_state)
        specs = jax.tree.leaves(logical["opt_state"], is_leaf=is_spec)
        assert specs.count(P("embed", "heads", "kv")) == (2 if freeze else 4), "each trained query kernel: mu, nu"

"""BERT pretraining then fine-tuning (restored and frozen encoder), and T5 text-to-text, end to end on SST-2."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import SHARED_DATA, read_result, run_module

SST2 = SHARED_DATA / "sst2"
needs_sst2 = pytest.mark.skipif(not SST2.is_dir(), reason=f"genuine SST-2 files not found: {SST2}")
TINY_BERT = ["--num_layers=2", "--num_heads=2", "--embed_dim=32", "--block_size=48", "--vocab_size=1000",
             f"--manual_dir={SST2}", "--batch_size=32", "--log_every_steps=10"]


def newest_params(workdir):
    with ocp.CheckpointManager(workdir / "checkpoints") as manager:
        return manager.restore(manager.latest_step())["params"]


@needs_sst2
def test_bert_pretrains_then_fine_tunes_a_frozen_encoder(tmp_path):
    pretrained = tmp_path / "mlm"
    out = run_module("experiments.bert_pretrain", f"--workdir={pretrained}", *TINY_BERT, "--train_steps=40",
                     "--warmup_steps=5", "--learning_rate=3e-3", "--eval_every_steps=20")
    assert out.returncode == 0, out.stderr
    assert "training a SentencePiece tokenizer of up to 1,000 pieces on 6,923 lines" in out.stdout, "says so"
    result = read_result(pretrained)
    assert result["validation"]["loss"] < np.log(1000) - 0.5, "learned more than a uniform guess"
    assert (pretrained / "tokenizer").exists()

    tuned = tmp_path / "sst2"
    out = run_module("experiments.bert_finetune_sst2", f"--workdir={tuned}", f"--restore_from={pretrained}",
                     *TINY_BERT, "--train_steps=20", "--freeze_encoder")
    assert out.returncode == 0, out.stderr
    result = read_result(tuned)
    assert result["test"]["confusion_matrix"] and "classification_report" in result["test"]
    assert result["trainable_parameters"] == 32 * 32 + 32 + 32 * 2 + 2, "the pooler and the head alone"
    encoder_before, encoder_after = newest_params(pretrained)["bert"], newest_params(tuned)["bert"]
    for before, after in zip(jax.tree.leaves(encoder_before), jax.tree.leaves(encoder_after), strict=True):
        np.testing.assert_array_equal(before, after)
    assert (tuned / "tokenizer").read_bytes() == (pretrained / "tokenizer").read_bytes(), "the vocabulary came along"


@needs_sst2
def test_t5_text_to_text_trains_and_answers(tmp_path):
    workdir = tmp_path / "t5"
    common = [f"--workdir={workdir}", f"--manual_dir={SST2}", "--preset=cpu", "--block_size=40", "--vocab_size=1000",
              "--embed_dim=64", "--head_dim=16", "--mlp_dim=128"]
    out = run_module("experiments.t5_sst2", *common, "--train_steps=80", "--batch_size=16", "--learning_rate=3e-3",
                     "--warmup_steps=10", "--host_devices=2")
    assert out.returncode == 0, out.stderr
    test = read_result(workdir)["test"]
    assert test["exact_match"] > 0.45, "answers a class name, right about as often as chance or better"
    assert test["accuracy"] > test["exact_match"], "the EOS token is right more often than the whole answer"
    # On one device, from the run's own settings: --workdir and the mode's flags alone.
    out = run_module("experiments.t5_sst2", f"--workdir={workdir}", "--mode=predict",
                     "--text=a gorgeous , witty film .")
    assert out.returncode == 0, out.stderr
    answer = out.stdout.strip().splitlines()[-1]
    assert answer.startswith("'a gorgeous , witty film .' -> ") and answer.split(" -> ")[1].split()[0] in (
        "'positive'", "'negative'")

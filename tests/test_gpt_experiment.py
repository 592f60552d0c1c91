"""Language-model data, and the GPT experiment end to end: train, then sample."""

import numpy as np
import pytest
from conftest import read_metrics, read_result, run_module

from bmjax.data.text import CharTokenizer, WindowSource


def test_char_tokenizer_round_trip():
    tokenizer = CharTokenizer.fit("hello world")
    assert tokenizer.vocab_size == 8 and tokenizer.alphabet == " dehlorw"
    ids = tokenizer.encode("low")
    assert ids.dtype == np.int32 and tokenizer.decode(ids) == "low"
    assert CharTokenizer.from_json(tokenizer.to_json()).alphabet == tokenizer.alphabet


def test_windows_on_host_and_device_agree():
    tokens = np.arange(100, dtype=np.int32)
    for stride in (1, 8):
        source = WindowSource(tokens, length=8, stride=stride)
        rows = np.array([0, 3, len(source) - 1])
        host = source[rows]
        device = source.gather(source.device_arrays(), rows)
        np.testing.assert_array_equal(device["x"], host["x"])
        np.testing.assert_array_equal(device["y"], host["y"])
        np.testing.assert_array_equal(host["y"], host["x"] + 1)
        assert host["x"][-1, -1] + 1 <= 99, "the last window's target stays inside the text"
    assert len(WindowSource(tokens, 8, 8)) == 12  # starts 0, 8, ..., 88: the last reads tokens 88..96


def test_gpt_trains_and_samples(shakespeare_dir, tmp_path):
    workdir = tmp_path / "gpt"
    common = [f"--workdir={workdir}", f"--data_dir={shakespeare_dir}", "--preset=cpu", "--block_size=32",
              "--embed_dim=64"]
    out = run_module("experiments.gpt_shakespeare_char", *common, "--train_steps=200", "--eval_every_steps=100",
                     "--host_devices=4", "--mesh=fsdp:4")
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    assert result["validation"]["loss"] < 3.0 < np.log(65), "learned more than the character frequencies"
    assert result["validation"]["perplexity"] == pytest.approx(np.exp(result["validation"]["loss"]))
    flagfile = (workdir / "flags.txt").read_text()
    assert "--num_layers=4" in flagfile and "--batch_size=12" in flagfile, "the cpu preset's defaults"
    assert "--train_steps=200" in flagfile and "--block_size=32" in flagfile, "explicit flags win"
    assert [r["step"] for r in read_metrics(workdir, "validation")] == [100, 200]

    # On one device, from the run's own config and tokenizer: no preset, block size or data flags again.
    out = run_module("experiments.gpt_shakespeare_char", f"--workdir={workdir}", "--mode=sample", "--prompt=ROMEO:",
                     "--max_new_tokens=20", "--num_samples=2")
    assert out.returncode == 0, out.stderr
    samples = out.stdout.split("--- sample ")[1:]
    assert len(samples) == 2
    for sample in samples:
        text = sample.split("---\n", 1)[1].rstrip("\n")
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


def test_text_needs_a_block_size(shakespeare_dir, tmp_path):
    out = run_module("experiments.mnist_mlp", f"--workdir={tmp_path}", "--dataset=tiny_shakespeare",
                     f"--data_dir={shakespeare_dir}")
    assert out.returncode == 2 and "set --block_size" in out.stderr

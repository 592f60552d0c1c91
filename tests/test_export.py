"""Export: StableHLO with a symbolic batch, ONNX through onnxruntime and LiteRT, each against bmjax's outputs; the
layer tables of --summary."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

import bmjax
from bmjax import export
from bmjax.config import Config
from bmjax.models import ModelIO
from bmjax.runs import Restored
from experiments.digits_resnet import DigitsResNet
from experiments.gpt_shakespeare_char import GptShakespeareChar
from experiments.mnist_cnn import MnistCnn
from experiments.vit_mnist import VitMnist
from tests.conftest import read_result, run_module

IMAGE = jax.ShapeDtypeStruct((8, 8, 1), np.uint8)
TOKENS = jax.ShapeDtypeStruct((16,), np.int32)


def untrained(config: Config, inputs, num_outputs: int, vocab_size=None) -> Restored:
    """A model at its initialisation, as `bmjax.restore` returns a run: what the exporters convert."""
    io = ModelIO(num_outputs=num_outputs, vocab_size=vocab_size, inputs=inputs)
    model = config.build_model(io)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), io.example(), train=False))()
    variables = dict(nn.meta.unbox(variables))
    return Restored(config=config, model=model, params=variables.pop("params"), model_state=variables, step=0,
                    seed=0, io=io)


MODELS = {  # the families the exporters must take: dense, convolutional (with BatchNorm), ViT, GPT
    "mlp": lambda: untrained(Config(workdir="-", model="mlp"), IMAGE, 10),
    "cnn": lambda: untrained(MnistCnn(workdir="-", conv_features=(4, 8), conv_padding="SAME"), IMAGE, 10),
    "resnet": lambda: untrained(DigitsResNet(workdir="-"), IMAGE, 10),
    "vit": lambda: untrained(VitMnist(workdir="-", patch_size=4, num_layers=1, num_heads=2, embed_dim=16,
                                      mlp_dim=32), IMAGE, 10),
    "gpt": lambda: untrained(GptShakespeareChar(workdir="-", block_size=16, num_layers=1, num_heads=2,
                                                embed_dim=16), TOKENS, 65, vocab_size=65),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN trained a few steps on the 8x8 digits."""
    workdir = str(tmp_path_factory.mktemp("cnn"))
    bmjax.run(MnistCnn(workdir=workdir, dataset="digits", conv_features=(4, 8), conv_padding="SAME",
                       train_steps=20, batch_size=32, log_every_steps=20, parallel="single"))
    return workdir


def test_stablehlo_export_runs_without_the_model_code(trained, tmp_path):
    out = run_module("bmjax.export", f"--workdir={trained}", "--format=stablehlo", f"--out={tmp_path}")
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / export.META_FILE).read_text())
    assert meta["inputs"]["shape"] == [8, 8, 1] and len(meta["classes"]) == 10
    assert meta["check"]["max_abs_diff"] <= 1e-6

    run = bmjax.restore(trained)
    x = export.example_batch(run.io.inputs, 5, seed=1)
    # What export.load does, by hand: jax and numpy read the program and its parameters.
    program = jax.export.deserialize(bytearray((tmp_path / "model.stablehlo").read_bytes()))
    with np.load(tmp_path / export.PARAMS_FILE) as saved:
        params = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    for rows in (1, 5):  # the batch dimension is symbolic
        np.testing.assert_allclose(program.call(params, x[:rows]), run(x[:rows]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(export.load(str(tmp_path))(x), run(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit", "gpt"])  # jax2onnx takes seconds a layer
def test_onnx_matches_bmjax(name, tmp_path):
    run = MODELS[name]()
    meta = export.export(run, str(tmp_path), "onnx")
    assert meta["check"]["max_abs_diff"] <= 1e-5
    x = export.example_batch(run.io.inputs, 3, vocab_size=run.io.vocab_size, seed=2)  # another batch size
    np.testing.assert_allclose(export.load(str(tmp_path))(x), run(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cnn", "vit", "gpt"])
def test_litert_matches_bmjax(name, tmp_path):
    run = MODELS[name]()
    export.export(run, str(tmp_path), "tflite")
    model = export.load(str(tmp_path))
    for rows in (2, 3):  # the interpreter resizes its input for each batch size
        x = export.example_batch(run.io.inputs, rows, vocab_size=run.io.vocab_size, seed=rows)
        np.testing.assert_allclose(model(x), run(x), atol=1e-5, rtol=0)


def test_bad_export_requests_fail_in_one_line(tmp_path):
    with pytest.raises(bmjax.UsageError, match="holds no exported model"):
        export.load(str(tmp_path))
    with pytest.raises(bmjax.UsageError, match="--format=pdf is not one of"):
        export.export(MODELS["mlp"](), str(tmp_path), "pdf")
    out = run_module("bmjax.export", f"--workdir={tmp_path}/none")
    assert out.returncode != 0 and "holds no bmjax run" in out.stderr.strip().splitlines()[-1]


def test_summary_prints_the_layer_table_and_keeps_it(tmp_path):
    config = MnistCnn(workdir=str(tmp_path), dataset="digits", conv_features=(4, 8), conv_padding="SAME",
                      summary=True)
    result = bmjax.run(config)
    table = result["summary"]["model"]
    assert "Conv_0" in table and "flops" in table and "Total Parameters" in table
    assert not (tmp_path / "checkpoints").exists()  # nothing trained
    trained = bmjax.run(config.replace(summary=False, train_steps=2, log_every_steps=2, parallel="single"))
    assert trained["summary"] == result["summary"] == read_result(tmp_path)["summary"]
    assert trained["steps"] == 2

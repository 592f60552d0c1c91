"""Int8 quantisation with qwix: post-training quantisation of a trained run (outputs near the float model's, int8
weights, a smaller model), quantisation-aware training through the runner (it learns, restores and converts to
the int8 model it trained as), the command line and its errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix

import bmjax
from bmjax import quantize
from bmjax.data import DataSpec, load, preprocess
from bmjax.errors import UsageError
from experiments.mnist_cnn import MnistCnn
from conftest import read_metrics, read_result, run_module

pytestmark = pytest.mark.filterwarnings("ignore:'VariableState' was removed:DeprecationWarning")  # qwix's own

# The seed CNN, small, on scikit-learn's 8x8 digits, on one device.
TINY = dict(dataset="digits", conv_features=(8, 16), conv_padding="SAME", batch_size=32, learning_rate=3e-3,
            train_steps=150, log_every_steps=50, eval_every_steps=150, checkpoint_every_steps=150,
            parallel="single")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs of a float run and a --quantize=int8 (QAT) run of the same model and data."""
    root = tmp_path_factory.mktemp("quantize")
    workdirs = {"float": str(root / "float"), "qat": str(root / "qat")}
    bmjax.run(MnistCnn(workdir=workdirs["float"], **TINY))
    bmjax.run(MnistCnn(workdir=workdirs["qat"], quantize="int8", **TINY))
    return workdirs


def _test_images(restored, n=256):
    """n test images and 128 training images (for calibration) of the run's dataset."""
    dataset = load(DataSpec.of(restored.config))
    return tuple(preprocess.to_float(split[np.arange(count)]["x"]) for split, count in
                 ((dataset.test, n), (dataset.train, 128)))


def _outputs(model, variables, x):
    """The model's evaluation-mode outputs, compiled (an eager pass of qwix's ops compiles each one)."""
    return np.asarray(jax.jit(lambda variables, x: model.apply(variables, x, train=False))(variables, x))


def test_post_training_int8_is_close_to_float_and_stores_int8(runs):
    restored = bmjax.restore(runs["float"])
    test_x, calibration_x = _test_images(restored)
    model = restored.config.build_model(restored.io)
    quantized = quantize.quantize(model, restored.params, restored.model_state, test_x[:1], calibration_x)

    float_logits, int8_logits = _outputs(restored.model, restored.variables, test_x), np.asarray(quantized(test_x))
    assert np.mean(float_logits.argmax(-1) == int8_logits.argmax(-1)) >= 0.97
    assert np.max(np.abs(float_logits - int8_logits)) <= 0.1 * np.max(np.abs(float_logits))
    assert not np.array_equal(float_logits, int8_logits)  # the int8 model really computes something else

    for layer in ("Conv_0", "Conv_1", "Dense_0"):
        kernel = quantized.params[layer]["kernel"].array
        assert isinstance(kernel, qwix.QArray) and kernel.qvalue.dtype == jnp.int8
        assert kernel.qvalue.shape == restored.params[layer]["kernel"].shape
        assert quantized.params[layer]["bias"].dtype == jnp.float32
    assert quantize.int8_fraction(quantized.params) > 0.9
    assert quantize.model_bytes(quantized.params) < 0.4 * quantize.model_bytes(restored.params)


def test_weights_only_leaves_activations_and_convolutions_float(runs):
    restored = bmjax.restore(runs["float"])
    test_x, _ = _test_images(restored, 64)
    quantized = quantize.quantize(restored.config.build_model(restored.io), restored.params, {}, test_x[:1],
                                  activations="float")
    assert quantized.params["Dense_0"]["kernel"].array.qvalue.dtype == jnp.int8
    assert quantized.params["Conv_0"]["kernel"].dtype == jnp.float32  # qwix's PTQ convolution needs int8 inputs
    assert not any("scale" in name for name in quantized.params["Dense_0"])  # no activation scales
    agreement = np.mean(_outputs(restored.model, restored.variables, test_x).argmax(-1) ==
                        np.asarray(quantized(test_x)).argmax(-1))
    assert agreement >= 0.98


def test_quantisation_aware_training_learns_restores_and_converts(runs):
    losses = [record["loss"] for record in read_metrics(runs["qat"])]
    assert losses[-1] < 0.5 * losses[0]
    result = read_result(runs["qat"])
    assert result["test"]["accuracy"] > 0.7

    restored = bmjax.restore(runs["qat"])
    assert restored.config.quantize == "int8"
    test_x, _ = _test_images(restored, 128)
    fake_quantised = _outputs(restored.model, restored.variables, test_x)
    float_model = restored.config.build_model(restored.io)
    as_float = _outputs(float_model, restored.variables, test_x)
    assert not np.allclose(fake_quantised, as_float, atol=1e-6)  # training's forward pass is quantised
    # Converted with the dynamic scales it trained with, the int8 model computes what training's forward pass did.
    quantized = quantize.quantize(float_model, restored.params, restored.model_state, test_x[:1],
                                  activations="dynamic")
    np.testing.assert_allclose(np.asarray(quantized(test_x)), fake_quantised, atol=2e-3)


def test_evaluate_run_reports_both_forms(runs):
    result = quantize.evaluate_run(runs["qat"], timing_repeats=1, write=False)
    assert result["trained"] == "qat_int8" and result["activations"] == "dynamic"
    assert result["split"] == "test" and result["metric"] == "accuracy"
    assert result["as_trained"]["metrics"]["accuracy"] == pytest.approx(read_result(runs["qat"])["test"]["accuracy"])
    assert abs(result["int8"]["metrics"]["accuracy"] - result["as_trained"]["metrics"]["accuracy"]) <= 2 / 360
    assert result["int8"]["bytes"] < 0.4 * result["as_trained"]["bytes"]
    assert result["int8"]["seconds_per_batch"] > 0


def test_command_line_writes_quantization_json(runs):
    done = run_module("bmjax.quantize", f"--workdir={runs['float']}", "--calibration_batches=4")
    assert done.returncode == 0, done.stderr
    assert "int8" in done.stdout and "float32" in done.stdout
    with open(f"{runs['float']}/quantization.json") as f:
        result = json.load(f)
    float_accuracy = read_result(runs["float"])["test"]["accuracy"]
    assert result["as_trained"]["metrics"]["accuracy"] == pytest.approx(float_accuracy)
    assert abs(result["int8"]["metrics"]["accuracy"] - float_accuracy) <= 0.02
    assert result["activations"].startswith("static")


def test_a_folder_without_a_run_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="holds no bmjax run") as raised:
        quantize.evaluate_run(str(tmp_path))
    assert "\n" not in str(raised.value)


def test_a_model_without_matmuls_is_a_one_line_error():
    class Lookup(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Embed(10, 4)(x)

    x = jnp.zeros((2, 3), jnp.int32)
    params = Lookup().init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(UsageError, match="no matmul, einsum or convolution") as raised:
        quantize.quantize(Lookup(), params, {}, x, x)
    assert "\n" not in str(raised.value)


def test_unknown_activation_scales_are_refused():
    with pytest.raises(UsageError, match="activations='int4'"):
        quantize.quantize(nn.Dense(2), {}, {}, jnp.zeros((1, 2)), activations="int4")


def test_a_transformer_keeps_its_tied_embedding_and_attention_products_float():
    from bmjax.models.gpt import GPT

    model = GPT(vocab_size=17, block_size=8, num_layers=1, num_heads=2, embed_dim=16)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (16, 8), 0, 17)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens))["params"]
    quantized = quantize.quantize(model, params, {}, tokens[:1], tokens)  # static scales
    assert quantized.params["token_embedding"]["embedding"].dtype == jnp.float32  # looked up and read as the head
    attention = quantized.params["block_0"]["attention"]
    assert attention["query"]["kernel"].array.qvalue.dtype == jnp.int8
    assert not any(name.startswith("einsum") for name in attention)  # no static scale for the attention weights
    float_logits = _outputs(model, {"params": params}, tokens)
    assert np.max(np.abs(np.asarray(quantized(tokens)) - float_logits)) <= 0.05 * np.max(np.abs(float_logits))

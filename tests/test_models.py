"""Models: shapes, dropout only in training, the registry, and flags -> config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from bmjax import cli, models
from bmjax.config import Config
from bmjax.errors import UsageError


def init_apply(model, x, **kwargs):
    variables = model.init(jax.random.PRNGKey(0), x)
    return variables, model.apply(variables, x, **kwargs)


def test_mlp_shapes_and_widths():
    model = models.create("mlp", num_outputs=10, hidden_sizes=(128,))
    variables, out = init_apply(model, jnp.ones((4, 28, 28, 1)))
    assert out.shape == (4, 10)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"Dense_0": {"kernel": (784, 128), "bias": (128,)},
                      "Dense_1": {"kernel": (128, 10), "bias": (10,)}}


def test_dropout_acts_only_in_training():
    model = models.create("mlp", num_outputs=3, hidden_sizes=(64,), dropout=0.5)
    x = jnp.ones((8, 5))
    variables, eval_out = init_apply(model, x)
    np.testing.assert_array_equal(eval_out, model.apply(variables, x))
    train = lambda seed: model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(seed)})
    assert not np.allclose(train(0), train(1))


def test_seed_cnn_layers():
    model = models.create("cnn", num_outputs=10, conv_features=(32, 64))
    variables, out = init_apply(model, jnp.ones((2, 28, 28, 1)))
    assert out.shape == (2, 10)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["Conv_0"]["kernel"] == (3, 3, 1, 32)
    assert shapes["Conv_1"]["kernel"] == (3, 3, 32, 64)
    assert shapes["Dense_0"]["kernel"] == (5 * 5 * 64, 10)  # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5


def test_registry_names_and_hyperparameters():
    with pytest.raises(UsageError, match="unknown model 'resnet9000'; choose one of: bert_classifier, bert_mlm, cnn, gpt, mlp, t5, vit"):
        models.create("resnet9000", num_outputs=2)
    config = Config(hidden_sizes=(7, 5), activation="tanh", dropout=0.1, conv_features=(4,))
    mlp = models.hyperparameters("mlp", config)
    assert mlp["hidden_sizes"] == (7, 5) and mlp["activation"] == "tanh" and "conv_features" not in mlp
    assert models.hyperparameters("cnn", config)["conv_features"] == (4,)
    # The compute dtype arrives as a dtype; a tokenizer's vocabulary reaches models that read tokens.
    assert models.hyperparameters("mlp", config.replace(dtype="bfloat16"))["dtype"] == jnp.bfloat16
    assert models.hyperparameters("bert_classifier", config, vocab_size=321)["vocab_size"] == 321
    assert "vocab_size" not in models.hyperparameters("gpt", config, vocab_size=321), "gpt predicts its vocabulary"


def test_every_config_field_is_a_flag():
    values = flags.FlagValues()
    cli.define_flags(Config, values)
    values(["prog", "--workdir=/tmp/x", "--hidden_sizes=16,8", "--validation_split=0.25", "--nesterov",
            "--optimizer=sgd"])
    config = cli.config_from_flags(Config, values)
    assert config == Config(workdir="/tmp/x", hidden_sizes=(16, 8), validation_split=0.25, nesterov=True,
                            optimizer="sgd")
    assert "Widths of the hidden dense layers." in values["hidden_sizes"].help
    with pytest.raises(flags.IllegalFlagValueError):
        values["optimizer"].parse("lion")

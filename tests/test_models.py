"""Models: shapes, dropout only in training, the registry, and flags -> config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from bmjax import cli, models
from bmjax.config import Config
from bmjax.errors import UsageError
from bmjax.models import MLP, SeedCNN


def init_apply(model, x, **kwargs):
    variables = model.init(jax.random.PRNGKey(0), x)
    return variables, model.apply(variables, x, **kwargs)


def test_mlp_shapes_and_widths():
    model = MLP(num_outputs=10, hidden_sizes=(128,))
    variables, out = init_apply(model, jnp.ones((4, 28, 28, 1)))
    assert out.shape == (4, 10)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"Dense_0": {"kernel": (784, 128), "bias": (128,)},
                      "Dense_1": {"kernel": (128, 10), "bias": (10,)}}


def test_dropout_acts_only_in_training():
    model = MLP(num_outputs=3, hidden_sizes=(64,), dropout=0.5)
    x = jnp.ones((8, 5))
    variables, eval_out = init_apply(model, x)
    np.testing.assert_array_equal(eval_out, model.apply(variables, x))
    train = lambda seed: model.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(seed)})
    assert not np.allclose(train(0), train(1))


def test_seed_cnn_layers():
    model = SeedCNN(num_outputs=10, conv_features=(32, 64))
    variables, out = init_apply(model, jnp.ones((2, 28, 28, 1)))
    assert out.shape == (2, 10)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["Conv_0"]["kernel"] == (3, 3, 1, 32)
    assert shapes["Conv_1"]["kernel"] == (3, 3, 32, 64)
    assert shapes["Dense_0"]["kernel"] == (5 * 5 * 64, 10)  # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5


def test_registry_builds_from_explicit_config_fields():
    with pytest.raises(UsageError, match="unknown model 'resnet9000'; choose one of: alexnet, bert_classifier, "
                                         "bert_mlm, cnn, efficientnet_b0, .*, resnet18, resnet20, .*, resnet152, .*, "
                                         "vgg11, .*, vit, .*or register one"):
        models.build("resnet9000", Config(), models.ModelIO(num_outputs=2))
    config = Config(hidden_sizes=(7, 5), activation="tanh", dropout=0.1, conv_features=(4,))
    mlp = models.build("mlp", config, models.ModelIO(num_outputs=3))
    assert (mlp.num_outputs, mlp.hidden_sizes, mlp.activation, mlp.dropout) == (3, (7, 5), "tanh", 0.1)
    assert models.build("cnn", config, models.ModelIO(num_outputs=3)).conv_features == (4,)
    # The compute dtype arrives as a dtype.
    assert models.build("mlp", config.replace(dtype="bfloat16"), models.ModelIO(num_outputs=3)).dtype == jnp.bfloat16
    # A builder needing a setting this config lacks says which.
    with pytest.raises(UsageError, match="model 'gpt' needs the setting --num_layers, which Config does not have"):
        models.build("gpt", Config(), models.ModelIO(num_outputs=65))


def test_register_declares_a_model_and_refuses_a_second_under_the_same_name():
    @models.register("test_linear")
    def linear(config, io):
        return MLP(num_outputs=io.num_outputs, hidden_sizes=())

    try:
        assert "test_linear" in models.names()
        model = Config(model="test_linear").build_model(models.ModelIO(num_outputs=4))
        assert model.hidden_sizes == () and model.num_outputs == 4
        with pytest.raises(ValueError, match="registered twice"):
            models.register("test_linear")(lambda config, io: None)
    finally:
        del models.REGISTRY["test_linear"]


def test_model_io_round_trips_through_json():
    io = models.ModelIO(num_outputs=3, vocab_size=7, inputs={"tokens": jax.ShapeDtypeStruct((5,), jnp.int32)})
    again = models.ModelIO.from_json(io.to_json())
    assert again == io and again.example(2)["tokens"].shape == (2, 5)


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

"""AlexNet and VGG: torchvision's parameter counts, the small-image variants, a training step (dropout,
BatchNorm's statistics, gradients), remat, and the builders' choice of variant."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmjax.errors import UsageError
from bmjax.models import alexnet, vgg
from bmjax.models.convnet import CONV_AXES, count_parameters
from bmjax.models.registry import ModelIO, build

# torchvision.models.<name>(num_classes=1000): sum(p.numel() for p in model.parameters()).
TORCHVISION = {"alexnet": 61_100_840, "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848,
               "vgg13_bn": 133_053_736, "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240,
               "vgg19_bn": 143_678_248}
# The small-image variants at 10 classes on 32x32x3 inputs.
SMALL = {"alexnet": 5_868_362, "vgg11": 9_488_266, "vgg11_bn": 9_493_770, "vgg13": 9_672_778,
         "vgg13_bn": 9_678_666, "vgg16": 14_982_474, "vgg16_bn": 14_990_922, "vgg19": 20_292_170,
         "vgg19_bn": 20_303_178}

KEY = functools.partial(jax.random.key, impl="rbg")  # threefry's random bits compile several times slower on CPU


def make_config(**overrides):
    settings = dict(dropout=0.5, bn_momentum=0.9, stem="auto", remat=False, compute_dtype=jnp.float32)
    return types.SimpleNamespace(**{**settings, **overrides})


def image_io(shape, num_outputs=1000, axis_name=None):
    return ModelIO(num_outputs=num_outputs, inputs=jax.ShapeDtypeStruct(shape, jnp.float32), axis_name=axis_name)


def abstract_init(model, shape, batch=2):
    """The model's variables (boxed with their axis names) as shapes only: nothing is computed."""
    return jax.eval_shape(lambda: model.init(KEY(0), jnp.zeros((batch,) + tuple(shape))))


def abstract_logits(model, shape, batch=2):
    variables = abstract_init(model, shape, batch)
    images = jax.ShapeDtypeStruct((batch,) + tuple(shape), jnp.float32)
    return jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)


def checkpointed_calls(model, variables, shape=(2, 32, 32, 3)) -> int:
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    return sum(e.primitive.name in ("checkpoint", "remat", "remat2") for e in jaxpr.jaxpr.eqns)


def random_images(shape, seed=1):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model",))
def initial_variables(model, images):
    return nn.meta.unbox(model.init(KEY(0), images))


@functools.partial(jax.jit, static_argnames=("model",))
def evaluate(model, variables, images):
    return model.apply(variables, images)


@functools.partial(jax.jit, static_argnames=("model",))
def train_step(model, variables, images, labels, rng):
    """Cross-entropy's value, the training-mode logits, the gradients and the updated batch statistics."""

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, images, train=True, rngs={"dropout": rng},
                                      mutable=["batch_stats"])
        loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, logits, grads, updates


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_parameter_counts_match_torchvision(name):
    model = build(name, make_config(), image_io((224, 224, 3)))
    assert not model.small_images
    variables = abstract_init(model, (224, 224, 3), batch=1)
    assert count_parameters(variables["params"]) == TORCHVISION[name]
    assert ("batch_stats" in variables) == name.endswith("_bn")
    first = variables["params"]["fc1"]["kernel"].value
    assert first.shape == ((256 * 6 * 6, 4096) if name == "alexnet" else (512 * 7 * 7, 4096))


def test_axis_names_let_a_mesh_split_the_classifier():
    names = nn.get_partition_spec(abstract_init(vgg.VGG(1000, 16, batch_norm=True), (224, 224, 3), batch=1))
    params = names["params"]
    assert tuple(params["fc1"]["kernel"]) == ("embed", "mlp") and tuple(params["fc1"]["bias"]) == ("mlp",)
    assert tuple(params["fc2"]["kernel"]) == ("mlp", "embed")
    assert tuple(params["head"]["kernel"]) == ("embed", "classes") and tuple(params["head"]["bias"]) == ("classes",)
    assert tuple(params["stage3"]["conv2"]["kernel"]) == CONV_AXES
    assert tuple(params["stage3"]["conv2"]["bias"]) == tuple(params["stage3"]["bn2"]["scale"]) == ("conv_out",)
    small = nn.get_partition_spec(abstract_init(vgg.VGG(10, 11, small_images=True), (32, 32, 3)))["params"]
    assert tuple(small["fc1"]["kernel"]) == ("embed", "mlp") and tuple(small["head"]["kernel"]) == ("mlp", "classes")


@pytest.mark.parametrize("name", list(SMALL))
def test_small_image_variants(name):
    model = build(name, make_config(stem="small"), image_io((32, 32, 3), num_outputs=10))
    assert model.small_images
    variables = abstract_init(model, (32, 32, 3))
    assert count_parameters(variables["params"]) == SMALL[name]
    for shape in [(32, 32, 3), (28, 28, 1), (28, 28)]:
        logits = abstract_logits(model, shape)
        assert logits.shape == (2, 10) and logits.dtype == jnp.float32, shape
    # The final maps: 3x3 (32x32 inputs) and 2x2 (28x28) for AlexNet; 1x1 for VGG at both, its pools in ceil mode.
    for shape, cells in [((32, 32, 3), 9 if name == "alexnet" else 1), ((28, 28, 1), 4 if name == "alexnet" else 1)]:
        kernel = abstract_init(model, shape)["params"]["fc1"]["kernel"].value
        assert kernel.shape == ((256 if name == "alexnet" else 512) * cells, 1024 if name == "alexnet" else 512)


def test_images_too_small_are_a_usage_error():
    with pytest.raises(UsageError, match="max pool"):
        abstract_logits(alexnet.AlexNet(10, small_images=True), (8, 8))
    with pytest.raises(UsageError, match="max pool"):
        abstract_logits(vgg.VGG(10, 11), (16, 16, 3))  # ImageNet's layout halves 16 five times
    with pytest.raises(UsageError, match="images"):
        abstract_logits(vgg.VGG(10, 11, small_images=True), (32,))
    assert abstract_logits(vgg.VGG(10, 11), (32, 32, 3)).shape == (2, 10)  # 1x1, then adaptive pooling to 7x7


@pytest.mark.parametrize("model", [alexnet.AlexNet(10, small_images=True),
                                   vgg.VGG(10, 11, batch_norm=True, small_images=True)], ids=["alexnet", "vgg11_bn"])
def test_training_step(model):
    images, labels = random_images((2, 32, 32, 3)), jnp.array([3, 7])
    variables = initial_variables(model, images)
    loss, logits, grads, updates = train_step(model, variables, images, labels, KEY(1))
    assert np.isfinite(loss) and logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    for path in [("head", "kernel"), ("fc1", "kernel"), ("stage1", "conv1", "kernel")]:
        assert np.abs(functools.reduce(lambda t, k: t[k], path, grads)).max() > 0, path

    # Dropout acts in training only: other keys drop other units; evaluation ignores the rate.
    _, other_logits, _, other_updates = train_step(model, variables, images, labels, KEY(2))
    assert not np.allclose(logits, other_logits)
    without_dropout = evaluate(model.clone(dropout=0.0), variables, images)
    np.testing.assert_allclose(evaluate(model, variables, images), without_dropout, rtol=1e-6, atol=1e-6)

    if "batch_stats" not in variables:
        assert updates == {}
        return
    # BatchNorm's running averages move towards the batch's statistics (those of the same batch, whatever the key).
    stats, fresh = updates["batch_stats"], variables["batch_stats"]
    assert jax.tree.structure(stats) == jax.tree.structure(fresh)
    mean, var = stats["stage1"]["bn1"]["mean"], stats["stage1"]["bn1"]["var"]
    assert np.abs(mean).max() > 0 and not np.allclose(var, 1.0)
    jax.tree.map(np.testing.assert_allclose, stats, other_updates["batch_stats"])


@pytest.mark.parametrize("model", [alexnet.AlexNet(10, small_images=True),
                                   vgg.VGG(10, 11, batch_norm=True, small_images=True)], ids=["alexnet", "vgg11_bn"])
def test_remat_keeps_parameters_and_outputs(model):
    rematted = model.clone(remat=True)
    plain_tree, remat_tree = abstract_init(model, (32, 32, 3)), abstract_init(rematted, (32, 32, 3))
    assert jax.tree.structure(plain_tree) == jax.tree.structure(remat_tree)
    assert jax.tree.map(lambda x: x.shape, plain_tree) == jax.tree.map(lambda x: x.shape, remat_tree)
    assert "stage1" in plain_tree["params"] and "conv1" in plain_tree["params"]["stage1"]
    # Each stage is one checkpointed call (its activations recomputed in the backward pass), with remat only.
    stages = 3 if isinstance(model, alexnet.AlexNet) else 5
    assert checkpointed_calls(rematted, plain_tree) == stages and checkpointed_calls(model, plain_tree) == 0

    images = random_images((2, 32, 32, 3))
    variables = initial_variables(model, images)
    np.testing.assert_allclose(evaluate(rematted, variables, images), evaluate(model, variables, images),
                               rtol=1e-5, atol=1e-6)


def test_small_alexnet_s_hidden_layers_keep_the_signal_s_scale():
    """At initialisation the small AlexNet's 1024-wide hidden layers pass their inputs on at about their scale (at
    torchvision's N(0, 0.01) each would shrink them threefold, and training sat at chance for 200 steps)."""
    model = alexnet.AlexNet(10, small_images=True)
    images = random_images((16, 28, 28, 1))
    _, state = model.apply(initial_variables(model, images), images, capture_intermediates=True)
    rms = lambda name: float(jnp.sqrt(jnp.mean(state["intermediates"][name]["__call__"][0] ** 2)))
    assert 0.3 < rms("fc2") / rms("stage3") < 3  # the classifier's input: the last stage's pooled maps


def test_builders_pick_the_variant_from_the_inputs():
    for name in ["alexnet", "vgg11_bn"]:
        assert build(name, make_config(), image_io((28, 28), 10)).small_images
        assert build(name, make_config(), image_io((32, 32, 3), 10)).small_images
        assert not build(name, make_config(), image_io((224, 224, 3), 10)).small_images
        assert not build(name, make_config(), image_io((64, 96, 3), 10)).small_images
        assert build(name, make_config(), image_io((63, 224, 3), 10)).small_images  # the shorter side decides
        assert build(name, make_config(stem="small"), image_io((224, 224, 3), 10)).small_images
        assert not build(name, make_config(stem="imagenet"), image_io((28, 28), 10)).small_images
        with pytest.raises(UsageError, match="--stem=auto"):  # no example input: the size is unknown
            build(name, make_config(), ModelIO(num_outputs=10))
        with pytest.raises(UsageError, match="--stem=tiny is not one of"):
            build(name, make_config(stem="tiny"), image_io((28, 28), 10))
        with pytest.raises(UsageError, match="images"):
            build(name, make_config(), ModelIO(num_outputs=10, inputs=jax.ShapeDtypeStruct((784,), jnp.float32)))


def test_builders_read_their_settings():
    config = make_config(dropout=0.25, bn_momentum=0.8, remat=True, compute_dtype=jnp.bfloat16)
    model = build("vgg16_bn", config, image_io((32, 32, 3), 10, axis_name="batch"))
    assert (model.depth, model.batch_norm, model.num_outputs) == (16, True, 10)
    assert (model.dropout, model.bn_momentum, model.axis_name, model.remat, model.dtype) == \
        (0.25, 0.8, "batch", True, jnp.bfloat16)
    logits = abstract_logits(model, (32, 32, 3))
    assert logits.dtype == jnp.float32  # bfloat16 inside, float32 logits

    plain = types.SimpleNamespace(dropout=0.1, stem="auto", remat=False, compute_dtype=jnp.float32)  # no bn_momentum
    model = build("vgg19", plain, image_io((224, 224, 3), 10))
    assert (model.depth, model.batch_norm, model.dropout, model.axis_name) == (19, False, 0.1, None)
    model = build("alexnet", make_config(dropout=0.3), image_io((224, 224, 3), 7))
    assert (model.num_outputs, model.dropout, model.small_images) == (7, 0.3, False)
    with pytest.raises(UsageError, match="--stem"):
        build("alexnet", types.SimpleNamespace(dropout=0.5, remat=False, compute_dtype=jnp.float32), image_io((28, 28)))

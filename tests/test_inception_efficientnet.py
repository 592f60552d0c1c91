"""GoogLeNet and EfficientNet-B0..B3: torchvision's parameter counts, the small-image variants, a train step,
stochastic depth, remat and the builders' --stem."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bmjax.errors import UsageError
from bmjax.models import efficientnet, inception
from bmjax.models.convnet import count_parameters
from bmjax.models.registry import ModelIO, build

# Random keys are "rbg" ones: threefry's random bits compile several times slower on CPU.
key = functools.partial(jax.random.key, impl="rbg")

# torchvision 0.2x: sum(p.numel() for p in models.<name>(num_classes=1000).parameters()); googlenet without
# its aux heads (aux_logits=False), googlenet_aux with them.
TORCHVISION_COUNTS = {"googlenet": 6_624_904, "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184,
                      "efficientnet_b2": 9_109_994, "efficientnet_b3": 12_233_232}
GOOGLENET_AUX_COUNT = 13_004_888


def config(**overrides):
    settings = dict(aux_heads=False, stochastic_depth=0.2, stem="auto", bn_momentum=0.9, remat=False,
                    compute_dtype=jnp.float32, dropout=0.5)  # dropout: a generic setting these models ignore
    return types.SimpleNamespace(**{**settings, **overrides})


def io(shape, num_outputs=1000):
    return ModelIO(num_outputs=num_outputs, inputs=jax.ShapeDtypeStruct(shape, jnp.float32))


def abstract_variables(model, shape):
    """The variables `model.init` makes for a batch of one of `shape`, without computing them."""
    return jax.eval_shape(lambda: model.init(key(0), jnp.zeros((1,) + shape)))


def parameters(model, shape=(224, 224, 3)) -> int:
    return count_parameters(abstract_variables(model, shape)["params"])


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_counts_match_torchvision(name):
    model = build(name, config(stem="imagenet"), io((224, 224, 3)))
    assert not model.small_images
    assert parameters(model) == TORCHVISION_COUNTS[name]


def test_googlenet_aux_heads_parameter_count():
    model = build("googlenet", config(aux_heads=True), io((224, 224, 3)))
    assert model.aux_heads and not model.small_images
    assert parameters(model) == GOOGLENET_AUX_COUNT
    # Two heads of conv 512|528 -> 128 (+ BatchNorm), dense 2048 -> 1024, dense 1024 -> 1000:
    head = lambda channels: channels * 128 + 2 * 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
    assert GOOGLENET_AUX_COUNT - TORCHVISION_COUNTS["googlenet"] == head(512) + head(528)


def test_efficientnet_scaling_matches_torchvision():
    assert [efficientnet._make_divisible(c * 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320)] == \
        [32, 16, 24, 48, 88, 120, 208, 352]
    assert [s[-1] for s in efficientnet.stages(1.2, 1.4)] == [2, 3, 3, 5, 5, 6, 2]
    assert [efficientnet.efficientnet(v, 10).dropout for v in ("b0", "b1", "b2", "b3")] == [0.2, 0.2, 0.3, 0.3]
    with pytest.raises(UsageError, match="b4"):
        efficientnet.efficientnet("b4", 10)


# The small-image variants at 10 classes, 32x32x3: (model, parameters)
SMALL = {
    "googlenet": (lambda: inception.GoogLeNet(10, small_images=True), 5_490_986),
    "googlenet_aux": (lambda: inception.GoogLeNet(10, small_images=True, aux_heads=True), 9_841_470),
    "efficientnet_b0": (lambda: efficientnet.efficientnet("b0", 10, small_images=True), 4_020_358),
    "efficientnet_b3": (lambda: efficientnet.efficientnet("b3", 10, small_images=True), 10_711_602),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_variants_shapes(name):
    make, count = SMALL[name]
    model = make()
    variables = abstract_variables(model, (32, 32, 3))
    assert count_parameters(variables["params"]) == count
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
    assert (logits.shape, logits.dtype) == ((2, 10), jnp.float32)
    # Train mode: torchvision's aux heads come back beside the logits.
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": key(1)},
                                                  mutable=["batch_stats"])[0], variables, images)
    if name == "googlenet_aux":
        out, (aux1, aux2) = out
        assert aux1.shape == aux2.shape == (2, 10)
    assert (out.shape, out.dtype) == ((2, 10), jnp.float32)


def test_imagenet_stems_downsample_32_times():
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    for model in (inception.GoogLeNet(7), efficientnet.efficientnet("b1", 7)):
        features = {}

        def capture(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.module.name in ("inception5b", "head"):
                features[context.module.name] = out.shape
            return out

        with nn.intercept_methods(capture):
            abstract_variables(model, (224, 224, 3))
        assert list(features.values())[0][1:3] == (7, 7), features
    # bfloat16 compute still gives float32 logits.
    model = efficientnet.efficientnet("b0", 7, dtype=jnp.bfloat16)
    logits = jax.eval_shape(model.apply, abstract_variables(model, (224, 224, 3)), images)
    assert logits.dtype == jnp.float32


def train_step(model):
    """Loss, logits, gradients and new batch statistics of one train-mode step on (images, labels)."""

    @jax.jit
    def step(variables, images, labels, rng):
        def loss_fn(params):
            out, state = model.apply({**variables, "params": params}, images, train=True, rngs={"dropout": rng},
                                     mutable=["batch_stats"])
            logits, aux = out if isinstance(out, tuple) else (out, ())
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            loss += sum(0.3 * optax.softmax_cross_entropy_with_integer_labels(a, labels).mean() for a in aux)
            return loss, (out, state["batch_stats"])

        (loss, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return loss, out, grads, stats

    return step


def initialised(model, shape=(32, 32, 3), seed=0):
    """Variables shaped as `model.init` makes them, filled in numpy: kernels He normal (fan in), BatchNorm's
    scale and running variance 1, the rest 0. (Compiling `model.init` takes longer than the whole train step.)"""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[-1].key == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2 / np.prod(leaf.shape[:-1]), dtype=np.float32)
        return (np.ones if path[-1].key in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract_variables(model, shape)))


def images_and_labels():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 32, 32, 3)).astype(np.float32), np.array([1, 7])


def check_step(variables, loss, grads, stats):
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, variables["batch_stats"]))
    assert all(changed)  # every BatchNorm's running mean and variance moved


def test_small_googlenet_with_aux_heads_trains():
    model = inception.GoogLeNet(10, small_images=True, aux_heads=True)
    images, labels = images_and_labels()
    variables = initialised(model)
    loss, out, grads, stats = train_step(model)(variables, images, labels, key(1))
    logits, (aux1, aux2) = out
    assert logits.shape == aux1.shape == aux2.shape == (2, 10)
    check_step(variables, loss, grads, stats)
    assert float(jnp.abs(grads["aux1"]["fc2"]["kernel"]).sum()) > 0  # the aux heads take part in the loss

    remat = inception.GoogLeNet(10, small_images=True, aux_heads=True, remat=True)
    check_remat(model, remat, variables, images)
    evaluated = jax.eval_shape(model.apply, variables, images)  # evaluation returns the logits alone
    assert isinstance(evaluated, jax.ShapeDtypeStruct) and evaluated.shape == (2, 10)


def test_small_efficientnet_b0_trains_with_stochastic_depth():
    # Without dropout, the only randomness in train mode is stochastic depth.
    model = efficientnet.efficientnet("b0", 10, small_images=True, stochastic_depth=0.5, dropout=0.0)
    images, labels = images_and_labels()
    variables = initialised(model)
    step = train_step(model)
    loss, logits, grads, stats = step(variables, images, labels, key(1))
    assert logits.shape == (2, 10)
    check_step(variables, loss, grads, stats)
    again = step(variables, images, labels, key(1))[1]
    other = step(variables, images, labels, key(2))[1]
    np.testing.assert_array_equal(logits, again)
    assert not np.allclose(logits, other)

    remat = efficientnet.efficientnet("b0", 10, small_images=True, stochastic_depth=0.5, dropout=0.0, remat=True)
    check_remat(model, remat, variables, images)
    evaluated = jax.jit(model.apply)(variables, images)  # every block kept, at the running averages
    assert np.isfinite(evaluated).all() and not np.allclose(evaluated, logits)


def check_remat(model, remat, variables, images):
    """`remat` has the same variables as `model` (names and shapes) and traces a train step to the same
    gradients and batch statistics (shapes). (ResNet's and VGG's tests compare remat's numbers; these two
    networks' compilations are the suite's slowest, so only their shapes are compared here.)"""
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), nn.meta.unbox(tree))
    assert shapes(abstract_variables(remat, (32, 32, 3))) == shapes(abstract_variables(model, (32, 32, 3)))
    labels = np.zeros(images.shape[0], np.int32)
    traced = [jax.eval_shape(train_step(m), variables, images, labels, key(1))[2:] for m in (model, remat)]
    assert shapes(traced[0]) == shapes(traced[1])


def test_drop_path_drops_whole_examples():
    block = lambda rate: efficientnet.MBConv(1, 3, 1, 8, rate, efficientnet.ConvFactory(),
                                             efficientnet.NormFactory(train=True))
    x = np.random.default_rng(0).standard_normal((256, 4, 4, 8)).astype(np.float32)
    variables = initialised(block(0.5), (4, 4, 8))

    @jax.jit
    def outputs(rng):
        apply = lambda rate: block(rate).apply(variables, x, rngs={"dropout": rng}, mutable=["batch_stats"])[0]
        return apply(0.0), apply(0.5)

    kept_all, out = map(np.asarray, outputs(key(1)))
    branch = kept_all - x
    dropped = np.all(out == x, axis=(1, 2, 3))
    assert 0.35 < dropped.mean() < 0.65
    np.testing.assert_allclose(out[~dropped], x[~dropped] + 2 * branch[~dropped], rtol=1e-5, atol=1e-5)


def test_builders_read_the_config():
    small = build("googlenet", config(), io((28, 28), num_outputs=10))
    assert small.small_images and small.num_outputs == 10 and not small.aux_heads and small.dropout == 0.2
    assert not build("googlenet", config(), io((224, 224, 3))).small_images
    assert build("googlenet", config(stem="small"), io((224, 224, 3))).small_images
    assert not build("googlenet", config(stem="imagenet"), io((32, 32, 3))).small_images
    assert build("googlenet", config(aux_heads=True, remat=True), io((32, 32))).aux_heads

    b3 = build("efficientnet_b3", config(stochastic_depth=0.3, bn_momentum=0.99, compute_dtype=jnp.bfloat16),
               ModelIO(num_outputs=5, inputs=jax.ShapeDtypeStruct((28, 28), jnp.float32), axis_name="batch"))
    assert (b3.width_mult, b3.depth_mult, b3.dropout, b3.stochastic_depth) == (1.2, 1.4, 0.3, 0.3)
    assert (b3.small_images, b3.bn_momentum, b3.axis_name, b3.dtype) == (True, 0.99, "batch", jnp.bfloat16)
    b0 = build("efficientnet_b0", config(), io((224, 224, 3)))
    assert not b0.small_images and (b0.width_mult, b0.depth_mult, b0.dropout) == (1.0, 1.0, 0.2)

    with pytest.raises(UsageError, match="stem"):
        build("efficientnet_b1", config(stem="tiny"), io((32, 32, 3)))
    settings = vars(config())
    del settings["stochastic_depth"]
    with pytest.raises(UsageError, match="stochastic_depth"):
        build("efficientnet_b2", types.SimpleNamespace(**settings), io((32, 32, 3)))

"""The ResNets: torchvision's and the CIFAR paper's parameter counts, layer names, the stems, a train step with
BatchNorm, pre-activation, remat and the registered builders."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bmjax.errors import UsageError
from bmjax.models import registry
from bmjax.models.convnet import CONV_AXES, DENSE_AXES, count_parameters
from bmjax.models.convnet import resolve_stem
from bmjax.models.resnet import PRESETS, ResNet, Stage

# torchvision.models.resnetN(num_classes=1000): sum(p.numel() for p in model.parameters())
TORCHVISION_COUNTS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}
# He et al. 2016, table 6, option A shortcuts, 10 classes: 0.27M, 0.46M, 0.66M, 0.85M
CIFAR_COUNTS = {"resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018}
PAPER_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85}

# Random keys are "rbg" ones: threefry's random bits compile several times slower on CPU.
KEY = jax.random.key(0, impl="rbg")


def abstract_variables(model, shape):
    """The variables' shapes (and logical axis boxes), without computing anything."""
    return jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct(shape, jnp.float32))


def random_images(shape, seed=1):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model",))
def init(model, images):
    return nn.meta.unbox(model.init(KEY, images))


@functools.partial(jax.jit, static_argnames=("model", "train"))
def forward(model, variables, images, train=False):
    if train:
        return model.apply(variables, images, train=True, mutable=["batch_stats"])
    return model.apply(variables, images)


@functools.partial(jax.jit, static_argnames=("model",))
def train_step(model, variables, images, labels):
    """Loss, gradients and the updated batch statistics of one train-mode step."""

    def loss_fn(params):
        logits, updates = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, grads, batch_stats


@functools.partial(jax.jit, static_argnames=("model",))
def stem_outputs(model, variables, images):
    return model.apply(variables, images, train=True, mutable=["batch_stats", "intermediates"],
                       capture_intermediates=lambda module, _: module.name == "stem_conv")


def all_finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(TORCHVISION_COUNTS))
def test_imagenet_parameter_counts_are_torchvision_s(name):
    variables = abstract_variables(ResNet(num_outputs=1000, **PRESETS[name]), (1, 224, 224, 3))
    assert count_parameters(variables["params"]) == TORCHVISION_COUNTS[name]


@pytest.mark.parametrize("name", list(CIFAR_COUNTS))
def test_cifar_parameter_counts_are_the_paper_s(name):
    variables = abstract_variables(ResNet(num_outputs=10, **PRESETS[name]), (1, 32, 32, 3))
    count = count_parameters(variables["params"])
    assert count == CIFAR_COUNTS[name]
    assert round(count / 1e6, 2) == PAPER_MILLIONS[name]
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    assert not any("shortcut" in jax.tree_util.keystr(path) for path, _ in flat), "option A has no parameters"


def test_layer_names_and_shapes_follow_torchvision():
    variables = abstract_variables(ResNet(num_outputs=1000, **PRESETS["resnet50"]), (1, 224, 224, 3))
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == {"stem_conv", "stem_norm", "stage_0", "stage_1", "stage_2", "stage_3", "head"}
    assert [len(params[f"stage_{i}"]) for i in range(4)] == [3, 4, 6, 3]
    assert params["stem_conv"]["kernel"].value.shape == (7, 7, 3, 64) and "bias" not in params["stem_conv"]
    first = params["stage_1"]["block_0"]  # layer2.0 of torchvision: 256 -> 128 -> 128 -> 512, stride 2
    assert set(first) == {"conv_0", "norm_0", "conv_1", "norm_1", "conv_2", "norm_2", "shortcut_conv",
                          "shortcut_norm"}
    assert [first[f"conv_{k}"]["kernel"].value.shape for k in range(3)] == [(1, 1, 256, 128), (3, 3, 128, 128),
                                                                             (1, 1, 128, 512)]
    assert first["shortcut_conv"]["kernel"].value.shape == (1, 1, 256, 512)
    assert "shortcut_conv" not in params["stage_1"]["block_1"]
    assert params["head"]["kernel"].value.shape == (2048, 1000) and params["head"]["bias"].value.shape == (1000,)
    assert set(stats["stage_1"]["block_0"]["shortcut_norm"]) == {"mean", "var"}
    # Logical axis names, for sharding rules.
    assert params["stage_2"]["block_3"]["conv_1"]["kernel"].names == CONV_AXES
    assert params["head"]["kernel"].names == DENSE_AXES


def test_preactivation_counts_and_layers():
    counts = {}
    for name, shape, classes in (("resnet18", (1, 224, 224, 3), 1000), ("resnet50", (1, 224, 224, 3), 1000),
                                 ("resnet20", (1, 32, 32, 3), 10)):
        variables = abstract_variables(ResNet(num_outputs=classes, preactivation=True, **PRESETS[name]), shape)
        counts[name] = count_parameters(variables["params"])
        params = variables["params"]
        width = params["head"]["kernel"].value.shape[0]
        assert params["final_norm"]["scale"].value.shape == (width,)
        assert "norm_0" not in params["stage_0"]["block_0"], "the stem's BN-ReLU pre-activates the first block"
        assert "norm_0" in params["stage_0"]["block_1"]
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        assert not any("shortcut_norm" in jax.tree_util.keystr(path) for path, _ in flat)
    # Against the post-activation nets: no shortcut norms, norm_0 over a block's input channels, a final norm.
    # ResNet-18: -2*(128+256+512) - 2*(64+128+256) - 2*64 + 2*512 = -1,792; ResNet-50: -7,680; ResNet-20: 0.
    assert counts == {"resnet18": 11_687_720, "resnet50": 25_549_352, "resnet20": 269_722}


def stage_shapes(model, images):
    """The shape of each stage's output, traced without computing."""
    capture = functools.partial(model.apply, capture_intermediates=lambda m, _: isinstance(m, Stage),
                                mutable=["intermediates"])
    logits, state = jax.eval_shape(capture, abstract_variables(model, images.shape), images)
    stages = state["intermediates"]
    return logits, [stages[f"stage_{i}"]["__call__"][0].shape for i in range(len(stages))]


def test_imagenet_stem_at_64x64():
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    logits, stages = stage_shapes(ResNet(num_outputs=1000, **PRESETS["resnet18"]), images)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    # 64 -> 32 (7x7/2 conv) -> 16 (3x3/2 max pool), then 16, 8, 4, 2
    assert stages == [(2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256), (2, 2, 2, 512)]
    # The small stem keeps the resolution: 64 -> 64, 32, 16, 8.
    _, stages = stage_shapes(ResNet(num_outputs=1000, **{**PRESETS["resnet18"], "stem": "small"}), images)
    assert [shape[1] for shape in stages] == [64, 32, 16, 8]
    # Odd sizes round as PyTorch's do: 57 -> 29 -> 15, then 15, 8, 4, 2.
    _, stages = stage_shapes(ResNet(num_outputs=1000, **PRESETS["resnet50"]), jax.ShapeDtypeStruct((1, 57, 57, 3),
                                                                                                    jnp.float32))
    assert [shape[1:] for shape in stages] == [(15, 15, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]

    # The ImageNet stem computed, on a one-stage net: finite logits, deterministic in eval mode.
    tiny = ResNet(num_outputs=5, stage_sizes=(1,), widths=(8,), stem_width=8)
    pixels = random_images((2, 64, 64, 3))
    variables = init(tiny, pixels)
    logits = forward(tiny, variables, pixels)
    assert logits.shape == (2, 5) and all_finite(logits) and np.ptp(np.asarray(logits)) > 0


@pytest.mark.parametrize("name, overrides, last_norm", [
    ("resnet20", {}, "norm_1"),
    ("resnet18", {"stem": "small", "preactivation": True}, None),
])
def test_train_step_updates_batch_stats_and_eval_uses_them(name, overrides, last_norm):
    model = ResNet(num_outputs=10, **{**PRESETS[name], **overrides})
    images, labels = random_images((2, 32, 32, 3)), np.array([3, 7])
    variables = init(model, images)
    if last_norm:  # zero_init_residual: each block starts as the identity
        for stage in ("stage_0", "stage_1", "stage_2"):
            np.testing.assert_array_equal(variables["params"][stage]["block_0"][last_norm]["scale"], 0)
        np.testing.assert_array_equal(variables["params"]["stage_0"]["block_0"]["norm_0"]["scale"], 1)
    else:  # pre-activation blocks end in a convolution, nothing to zero
        assert all(np.all(x == 1) for path, x in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
                   if jax.tree_util.keystr(path).endswith("['scale']"))

    loss, grads, batch_stats = train_step(model, variables, images, labels)
    assert np.isfinite(loss) and loss > 0 and all_finite(grads)
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert float(np.abs(grads["stem_conv"]["kernel"]).max()) > 0
    assert float(np.abs(grads["head"]["kernel"]).max()) > 0
    assert jax.tree.structure(batch_stats) == jax.tree.structure(variables["batch_stats"])
    changed = jax.tree.map(lambda new, old: not np.allclose(new, old), batch_stats, variables["batch_stats"])
    assert all(jax.tree.leaves(changed)), "every BatchNorm's running averages moved"
    # Momentum 0.9 from zeros: the stem's running mean is a tenth of its convolution's mean over the batch.
    _, state = stem_outputs(model, variables, images)
    stem_conv = state["intermediates"]["stem_conv"]["__call__"][0]
    np.testing.assert_allclose(batch_stats["stem_norm"]["mean"], 0.1 * stem_conv.mean(axis=(0, 1, 2)), rtol=1e-4,
                               atol=1e-7)

    trained = {**variables, "batch_stats": batch_stats}
    logits = forward(model, trained, images)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32 and all_finite(logits)
    np.testing.assert_array_equal(forward(model, trained, images), logits)  # deterministic
    # Running averages, not the batch's statistics: an image's logits do not depend on the rest of the batch.
    others = np.stack([images[0], random_images((32, 32, 3), seed=5)])
    np.testing.assert_allclose(forward(model, trained, others)[0], logits[0], rtol=1e-4, atol=1e-5)
    train_logits, _ = stem_outputs(model, trained, images)  # train mode: the batch's statistics
    assert not np.allclose(train_logits, logits, atol=1e-3)
    assert not np.allclose(forward(model, variables, images), logits, atol=1e-3), "the updated statistics matter"


def test_remat_keeps_names_and_outputs():
    settings = dict(num_outputs=3, stage_sizes=(1, 1), widths=(4, 8), bottleneck=True, stem="small", stem_width=8)
    plain, remat = ResNet(**settings), ResNet(**settings, remat=True)
    images, labels = random_images((2, 8, 8)), np.array([0, 2])  # [batch, H, W]: one channel
    variables = init(plain, images)
    shapes = lambda tree: jax.tree.map(jnp.shape, nn.meta.unbox(tree))
    assert shapes(abstract_variables(remat, images.shape)) == shapes(variables)  # same names, same shapes
    rng = np.random.default_rng(2)  # scales away from 0 and 1, so that every path carries a signal
    variables = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32), variables)
    np.testing.assert_allclose(forward(remat, variables, images), forward(plain, variables, images), rtol=1e-5,
                               atol=1e-6)
    loss, grads, stats = train_step(plain, variables, images, labels)
    remat_loss, remat_grads, remat_stats = train_step(remat, variables, images, labels)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), remat_grads, grads)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), remat_stats, stats)
    assert float(np.abs(grads["stage_0"]["block_0"]["conv_0"]["kernel"]).max()) > 0


def config(**changes):
    settings = dict(bn_momentum=0.8, preactivation=False, stem="auto", remat=False, compute_dtype=jnp.float32)
    return types.SimpleNamespace(**{**settings, **changes})


def io(shape, num_outputs=10, axis_name=None):
    return registry.ModelIO(num_outputs=num_outputs, inputs=jax.ShapeDtypeStruct(shape, jnp.float32),
                            axis_name=axis_name)


def test_builders_choose_the_stem_by_image_size():
    import bmjax.models.resnet  # noqa: F401  (registers the builders)
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20", "resnet32", "resnet44",
            "resnet56"} <= set(registry.names())

    digits = registry.build("resnet18", config(), io((28, 28)))
    assert isinstance(digits, ResNet) and digits.stem == "small" and digits.num_outputs == 10
    assert digits.bn_momentum == 0.8 and digits.stage_sizes == (2, 2, 2, 2) and not digits.bottleneck
    images = registry.build("resnet50", config(preactivation=True, remat=True, compute_dtype=jnp.bfloat16),
                            io((224, 224, 3), 1000, axis_name="batch"))
    assert images.stem == "imagenet" and images.bottleneck and images.preactivation and images.remat
    assert images.dtype == jnp.bfloat16 and images.axis_name == "batch" and images.num_outputs == 1000
    assert registry.build("resnet18", config(), io((63, 100, 3))).stem == "small"
    assert registry.build("resnet18", config(), io((64, 100, 3))).stem == "imagenet"
    assert registry.build("resnet18", config(stem="imagenet"), io((28, 28))).stem == "imagenet"
    assert registry.build("resnet18", config(stem="small"), io((224, 224, 3))).stem == "small"
    assert resolve_stem(config(), io((32, 32, 3)), "resnet18") == "small"

    cifar = registry.build("resnet20", config(stem="imagenet"), io((224, 224, 3)))  # the CIFAR nets ignore stem
    assert cifar.stem == "small" and cifar.shortcut == "pad" and cifar.widths == (16, 32, 64)
    assert registry.build("resnet56", config(), io((32, 32, 3))).stage_sizes == (9, 9, 9)

    # What the builder made runs on the example input ([batch, H, W] here) and counts as the preset does.
    variables = jax.eval_shape(digits.init, KEY, io((28, 28)).example(2))
    assert count_parameters(variables["params"]) == 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 1 * 64 - 990 * 513
    example = io((224, 224, 3)).example(1)
    variables = jax.eval_shape(images.init, KEY, example)
    logits = jax.eval_shape(images.apply, variables, example)
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32  # bfloat16 compute, float32 logits
    assert variables["params"]["head"]["kernel"].value.dtype == jnp.float32


def test_usage_errors():
    with pytest.raises(UsageError, match="stem"):
        registry.build("resnet18", config(stem="tiny"), io((28, 28)))
    with pytest.raises(UsageError, match="--stem=auto"):
        registry.build("resnet18", config(), registry.ModelIO(num_outputs=10))
    with pytest.raises(UsageError, match="bn_momentum"):
        registry.build("resnet18", types.SimpleNamespace(preactivation=False, stem="auto", remat=False,
                                                         compute_dtype=jnp.float32), io((28, 28)))
    with pytest.raises(UsageError, match="images"):
        abstract_variables(ResNet(num_outputs=10, **PRESETS["resnet20"]), (2, 32))
    with pytest.raises(UsageError, match="shortcut"):
        abstract_variables(ResNet(num_outputs=10, shortcut="B"), (2, 32, 32, 3))

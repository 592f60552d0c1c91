"""The Vision Transformer: shapes, dtypes, patches, parameter counts, axis names, and vit_mnist end to end."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, read_result, run_module

from bmjax.errors import UsageError
from bmjax.models.vit import PRESETS, ViT, patchify

# Random keys are "rbg" ones: threefry's random bits compile several times slower on CPU.
TINY = dict(num_outputs=5, patch_size=4, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, dropout=0.2)


@functools.partial(jax.jit, static_argnames=("model",))
def initial_params(model, images):
    return nn.meta.unbox(model.init(jax.random.key(0, impl="rbg"), images))["params"]


def perturbed(params, spread=0.1, seed=1):
    """`params` plus noise, so that the zero-initialised head (and class token) give varied logits."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + spread * rng.standard_normal(p.shape, np.float32), params)


@functools.partial(jax.jit, static_argnames=("model", "train"))
def forward(model, params, images, train=False, rng=None):
    return model.apply({"params": params}, images, train=train, rngs={"dropout": rng} if train else None)


def random_images(shape, seed=1):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_logits_shape_and_dtype():
    model = ViT(**TINY)
    images = random_images((3, 8, 12))  # [batch, H, W]: 2 x 3 patches
    fresh = initial_params(model, images)
    assert fresh["position_embedding"].shape == (1 + 6, 16) and fresh["class_token"].shape == (16,)
    # The head starts at zero, as in the paper: every class equally likely at first.
    np.testing.assert_array_equal(forward(model, fresh, images), np.zeros((3, 5)))

    params = perturbed(fresh)
    logits = forward(model, params, images)
    assert logits.shape == (3, 5) and logits.dtype == jnp.float32 and np.ptp(np.asarray(logits)) > 0.1
    train_logits = forward(model, params, images, train=True, rng=jax.random.key(0, impl="rbg"))
    assert not np.allclose(train_logits, logits), "dropout acts in training only"
    np.testing.assert_allclose(forward(model, params, images[..., None]), logits, rtol=1e-6)  # [..., 1] alike

    colour = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    colour_params = jax.eval_shape(initial_params, model, colour)
    assert colour_params["patch_embedding"]["kernel"].shape == (4, 4, 3, 16)
    assert jax.eval_shape(forward, model, colour_params, colour).shape == (2, 5)


def test_patch_embedding_equals_a_strided_convolution():
    images = random_images((2, 8, 12, 3))
    kernel = np.random.default_rng(2).standard_normal((4, 4, 3, 16), np.float32)
    conv = jax.lax.conv_general_dilated(images, kernel, window_strides=(4, 4), padding="VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [2, 2, 3, 16]
    dense = jnp.einsum("brcpqk,pqke->brce", patchify(images, 4), kernel)
    np.testing.assert_allclose(dense, conv, rtol=1e-5, atol=1e-5)


def test_images_that_do_not_divide_into_patches_are_refused():
    model = ViT(**TINY)
    with pytest.raises(ValueError, match=r"10x12 images do not divide into 4x4 patches.*--patch_size=2"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 10, 12)))
    with pytest.raises(UsageError, match="takes images"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64)))
    with pytest.raises(UsageError, match="embed_dim=16 is not a multiple of num_heads=3"):
        jax.eval_shape(ViT(**{**TINY, "num_heads": 3}).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8)))


@pytest.mark.parametrize("preset, expected", [("ViT-B/16", 86_567_656), ("ViT-S/16", 22_050_664),
                                              ("ViT-Ti/16", 5_717_416)])
def test_preset_parameter_counts_at_224_with_1000_classes(preset, expected):
    model = ViT(num_outputs=1000, **PRESETS[preset])
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    assert count(nn.meta.unbox(shapes)) == expected


def test_every_parameter_has_logical_axis_names():
    model = ViT(num_outputs=10, **PRESETS["mnist"])
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
    specs = nn.get_partition_spec(boxed)
    assert specs["position_embedding"] == jax.sharding.PartitionSpec("positions", "embed")
    assert specs["block_0"]["mlp"]["up"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    assert specs["head"]["kernel"] == jax.sharding.PartitionSpec("embed", "classes")


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    images = random_images((3, 8, 12))
    params = perturbed(initial_params(ViT(**TINY), images))
    half = ViT(**TINY, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(half.init, jax.random.PRNGKey(0), images)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(shapes)))

    @jax.jit
    def logits_and_block_output(params, images):
        logits, state = half.apply({"params": params}, images, capture_intermediates=True, mutable=["intermediates"])
        return logits, state["intermediates"]["block_0"]["__call__"][0]

    logits, block_output = logits_and_block_output(params, images)
    assert logits.dtype == jnp.float32 and block_output.dtype == jnp.bfloat16, "the blocks compute in bfloat16"
    np.testing.assert_allclose(logits, forward(ViT(**TINY), params, images), atol=0.05, rtol=0.05)


def test_remat_changes_neither_logits_nor_gradients():
    images, labels = random_images((3, 8, 12)), jnp.array([1, 3, 4])
    params = perturbed(initial_params(ViT(**TINY), images))

    def loss(model, params):
        logits = model.apply({"params": params}, images)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

    plain, rematted = ViT(**TINY), ViT(**TINY, remat=True)
    value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, plain)))(params)
    remat_value, remat_grads = jax.jit(jax.value_and_grad(functools.partial(loss, rematted)))(params)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat_grads, grads)


def test_vit_mnist_runs_end_to_end_on_digits(tmp_path):
    """The experiment on scikit-learn's 8x8 digits in 4x4 patches: offline, in seconds. 1,293 training images in
    batches of 32 make 40 steps an epoch; logging every 40 steps compiles the training loop once."""
    workdir = tmp_path / "vit"
    out = run_module("experiments.vit_mnist", f"--workdir={workdir}", "--dataset=digits", "--patch_size=4",
                     "--num_layers=2", "--batch_size=32", "--epochs=8", "--log_every_steps=40", "--warmup_steps=40")
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    assert result["model"] == "vit" and result["experiment"] == "experiments.vit_mnist"
    assert result["steps"] == 320 and result["test"]["accuracy"] > 0.9, result["test"]["accuracy"]
    train = read_metrics(workdir)
    assert train[-1]["loss"] < 0.25 * train[0]["loss"]
    assert read_metrics(workdir, "validation"), "a validation split is evaluated"
    flags = (workdir / "flags.txt").read_text()
    assert "--optimizer=adamw" in flags and "--lr_schedule=warmup_cosine" in flags and "--num_heads=4" in flags
    assert (workdir / "curves.png").stat().st_size > 0


def test_a_patch_size_that_does_not_divide_the_images_is_one_line(tmp_path):
    out = run_module("experiments.vit_mnist", f"--workdir={tmp_path}", "--dataset=digits", "--patch_size=3")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: 8x8 images do not divide into 3x3 patches; choose a patch size that divides both "
        "(e.g. --patch_size=2)")


@pytest.mark.parametrize("changes, message", [
    (dict(embed_dim=30), "--embed_dim=30 must be a multiple of --num_heads=4"),
    (dict(patch_size=0), "--patch_size must be positive, got 0"),
    (dict(mlp_dim=-1), "--mlp_dim must be positive, got -1"),
])
def test_experiment_refuses_sizes_that_cannot_work(tmp_path, changes, message):
    from experiments.vit_mnist import VitMnist

    with pytest.raises(UsageError, match=message):
        VitMnist(workdir=str(tmp_path), **changes).validate()

"""GANs: the adversarial losses and penalties against hand computations, the Frechet distance against its closed
form, DCGAN's and the StyleGAN-style networks, and the DCGAN, WGAN-GP and StyleGAN experiments end to end on the
digits: evaluation, pictures, sampling, the critic's schedule, bad input. (DCGAN under every strategy, resumed and
with many seeds: test_programs.py.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, read_result, run_module
from PIL import Image

from bmjax import losses, metrics
from bmjax.errors import UsageError
from bmjax.models.dcgan import Discriminator, Generator, minibatch_stddev, upsamplings
from bmjax.models.stylegan import ModulatedConv, StyleGenerator
from bmjax.train.checkpoint import read_saved
from experiments.dcgan import Dcgan, main
from experiments.stylegan import StyleGan
from experiments.wgan_gp import WganGp

rng = np.random.default_rng(0)
TINY = dict(dataset="digits", batch_size=32, generator_features=8, discriminator_features=8, latent_dim=16,
            log_every_steps=10, parallel="single")


def test_adversarial_losses_match_their_formulas():
    real, fake = jnp.array([2.0, -1.0, 0.5]), jnp.array([-3.0, 0.2, 1.5])
    log_sigmoid = lambda x: -np.log1p(np.exp(-x))
    np.testing.assert_allclose(losses.discriminator_loss("non_saturating", real, fake),
                               -log_sigmoid(real) - np.log1p(-1 / (1 + np.exp(-fake))), rtol=1e-5)
    np.testing.assert_allclose(losses.discriminator_loss("hinge", real, fake), [0.0, 3.2, 3.0], rtol=1e-6)
    np.testing.assert_allclose(losses.discriminator_loss("wasserstein", real, fake), fake - real)
    np.testing.assert_allclose(losses.generator_loss("non_saturating", fake), -log_sigmoid(fake), rtol=1e-5)
    np.testing.assert_allclose(losses.generator_loss("hinge", fake), -fake)
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        losses.generator_loss("minimax", fake)


def test_gradient_penalty_and_r1_from_the_critic_s_input_gradient():
    w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    linear = lambda x: x.reshape(x.shape[0], -1) @ w.reshape(-1)  # its input gradient is w everywhere
    real, fake = (jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32) for _ in range(2))
    t = jnp.array([0.0, 0.3, 0.7, 1.0])
    norm = np.linalg.norm(w)
    np.testing.assert_allclose(losses.gradient_penalty(linear, real, fake, t), [(norm - 1) ** 2] * 4, rtol=1e-5)
    np.testing.assert_allclose(losses.r1_penalty(linear, real), [norm ** 2] * 4, rtol=1e-5)
    # A quadratic critic 0.5 ||x||^2: its input gradient is x, at the point t real + (1 - t) fake.
    quadratic = lambda x: 0.5 * jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), -1)
    between = t[:, None, None] * real + (1 - t[:, None, None]) * fake
    expected = (np.linalg.norm(np.asarray(between).reshape(4, -1), axis=-1) - 1) ** 2
    np.testing.assert_allclose(losses.gradient_penalty(quadratic, real, fake, t), expected, rtol=1e-5)


def test_frechet_distance_is_the_closed_form_for_commuting_covariances():
    mean_a, mean_b = rng.normal(size=4), rng.normal(size=4)
    var_a, var_b = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert metrics.frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)
    cov = np.cov(rng.normal(size=(6, 50)))
    assert abs(metrics.frechet_distance(mean_a[:1].repeat(6), cov, mean_a[:1].repeat(6), cov)) < 1e-8


@pytest.mark.parametrize("side,first_map", [(28, 7), (32, 4), (64, 4)])
def test_dcgan_networks_shapes(side, first_map):
    assert side // 2 ** upsamplings(side) == first_map
    generator, discriminator = Generator(image_shape=(side, side, 3), features=8), Discriminator(features=8)
    z = jax.ShapeDtypeStruct((2, 16), jnp.float32)
    images = jax.eval_shape(lambda z: generator.init_with_output(jax.random.PRNGKey(0), z)[0], z)
    assert images.shape == (2, side, side, 3)
    logits = jax.eval_shape(lambda x: discriminator.init_with_output(jax.random.PRNGKey(0), x)[0], images)
    assert logits.shape == (2,)
    with pytest.raises(UsageError, match="halves at least once"):
        upsamplings(27)


def test_the_label_conditions_both_networks():
    generator = Generator(image_shape=(8, 8, 1), features=8, num_classes=10)
    z, labels = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32), jnp.array([1, 1])
    variables = jax.jit(generator.init)(jax.random.PRNGKey(0), z, labels)
    generate = jax.jit(generator.apply)
    images = generate(variables, z, labels)
    assert images.shape == (2, 8, 8, 1) and float(jnp.abs(images).max()) <= 1.0
    other = generate(variables, z, jnp.array([1, 2]))
    assert np.allclose(other[0], images[0]) and not np.allclose(other[1], images[1])
    discriminator = Discriminator(features=8, num_classes=10, norm="layer")
    variables = jax.jit(discriminator.init)(jax.random.PRNGKey(1), images, labels)
    logits, relabelled = (jax.jit(discriminator.apply)(variables, images, y) for y in (labels, jnp.array([1, 2])))
    assert logits[0] == relabelled[0] and logits[1] != relabelled[1]


def test_minibatch_stddev_adds_each_group_s_spread_and_stays_within_a_device_s_share():
    x = jnp.asarray(rng.normal(size=(8, 3, 3, 2)), jnp.float32)
    out = minibatch_stddev(x, 4)
    np.testing.assert_array_equal(out[..., :2], x)
    for group in (slice(0, 4), slice(4, 8)):
        spread = np.mean(np.sqrt(np.var(np.asarray(x[group]), axis=0) + 1e-8))
        np.testing.assert_allclose(out[group, :, :, 2], spread, rtol=1e-5)
    halves = jnp.concatenate([minibatch_stddev(x[:4], 4), minibatch_stddev(x[4:], 4)])
    np.testing.assert_allclose(halves, out, rtol=1e-6)
    assert minibatch_stddev(x[:6], 4).shape == (6, 3, 3, 3), "a batch of 6 falls back to groups of 2"
    collapsed = jnp.broadcast_to(x[:1], x.shape)
    assert float(minibatch_stddev(collapsed, 4)[..., 2].max()) < 1e-3, "identical images have no spread"
    images = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
    changed = images.at[0].set(0.0)
    for group_size, couples in ((4, True), (0, False)):  # example 0 moves example 1's logit only through the spread
        discriminator = Discriminator(features=8, norm="none", minibatch_std=group_size)
        variables = discriminator.init(jax.random.PRNGKey(0), images)
        moved = discriminator.apply(variables, changed)[1] != discriminator.apply(variables, images)[1]
        assert bool(moved) == couples


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory):
    """A conditional DCGAN on the digits, its classifier trained first by the experiment itself."""
    workdir = tmp_path_factory.mktemp("dcgan")
    config = Dcgan(workdir=str(workdir), train_steps=120, eval_every_steps=60, conditional=True,
                   classifier_epochs=4, **TINY)
    return workdir, main(config)


def test_dcgan_reports_the_frechet_distance_class_shares_and_conditioned_accuracy(dcgan_run):
    workdir, result = dcgan_run
    classifier = read_result(workdir / "classifier")
    assert classifier["test"]["accuracy"] > 0.8
    test = result["test"]
    assert 0 <= test["fd_classifier_floor"] < test["fd_classifier"], "real held-out images are nearer the training set"
    assert sum(test["class_shares"].values()) == pytest.approx(1.0)
    assert test["class_share_min"] <= 0.1 <= test["class_share_max"]
    assert 0 <= test["conditioned_accuracy"] <= 1 and "classifier" in test["fd_features"]
    assert result["generator_parameters"] > result["discriminator_parameters"] > 0
    validation = read_metrics(workdir, "validation")
    assert [r["step"] for r in validation] == [60, 120] and all("fd_classifier" in r for r in validation)
    train = read_metrics(workdir)
    assert all(np.isfinite([r["d_loss"], r["g_loss"]]).all() for r in train)
    assert train[0]["generator_learning_rate"] == 2e-4


def test_dcgan_draws_sample_grids_at_each_evaluation_and_an_interpolation_at_the_end(dcgan_run):
    workdir, _ = dcgan_run
    pictures = sorted(p.name for p in (workdir / "pictures").iterdir())
    assert pictures == ["interpolation_0000120.png", "samples_0000060.png", "samples_0000120.png"]
    samples = np.asarray(Image.open(workdir / "pictures" / "samples_0000120.png"))
    assert samples.shape == (8 * 10 - 2, 10 * 10 - 2), "8 rows of the 10 classes, 8x8 images 2 pixels apart"
    assert samples.std() > 0
    events = list((workdir / "tensorboard").iterdir())
    assert events and any(b"samples" in e.read_bytes() for e in events)


def test_sample_mode_writes_a_grid_of_the_class_asked_for(dcgan_run, tmp_path):
    workdir, _ = dcgan_run
    out = tmp_path / "sevens.png"
    written = main(Dcgan(workdir=str(workdir), mode="sample", label=7, num_samples=9, out=str(out)))
    assert written == str(out) and np.asarray(Image.open(out)).shape == (3 * 10 - 2, 3 * 10 - 2)
    bad = run_module("experiments.dcgan", f"--workdir={workdir}", "--mode=sample", "--label=12")
    assert bad.returncode == 2 and "--label=12 is not a class of this generator (0-9)" in bad.stderr


def test_wgan_gp_takes_five_critic_steps_per_generator_step(dcgan_run, tmp_path):
    config = WganGp(workdir=str(tmp_path), train_steps=20, eval_every_steps=20,
                    classifier=str(dcgan_run[0] / "classifier"), **TINY)
    result = main(config)
    saved, _ = read_saved(str(tmp_path), ("generator", "discriminator"))
    assert int(saved["discriminator"]["step"]) == 20 and int(saved["generator"]["step"]) == 4
    assert np.isfinite(result["test"]["fd_classifier"]) and "conditioned_accuracy" not in result["test"]
    assert json.loads((tmp_path / "run.json").read_text())["config"]["gradient_penalty"] == 10.0


def test_bad_input_gets_one_line_errors(tmp_path):
    not_a_run = run_module("experiments.dcgan", f"--workdir={tmp_path / 'g'}", "--dataset=digits",
                           f"--classifier={tmp_path}")
    assert not_a_run.returncode == 2 and "holds no bmjax run" in not_a_run.stderr.strip().splitlines()[-1]
    with pytest.raises(UsageError, match="--discriminator_norm=layer"):
        Dcgan(workdir=str(tmp_path), gradient_penalty=10.0).validate()
    with pytest.raises(UsageError, match="--minibatch_std is a group size of at least 2"):
        Dcgan(workdir=str(tmp_path), minibatch_std=1).validate()
    with pytest.raises(UsageError, match="--critic_steps must be positive"):
        WganGp(workdir=str(tmp_path), critic_steps=0).validate()
    with pytest.raises(UsageError, match="not images; choose an image dataset"):
        main(Dcgan(workdir=str(tmp_path / "d"), dataset="diabetes", classifier=str(tmp_path)))


def test_modulated_convolution_is_each_example_convolved_with_its_own_demodulated_kernel():
    x = jnp.asarray(rng.normal(size=(3, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    conv = ModulatedConv(5)
    variables = conv.init(jax.random.PRNGKey(0), x, w)
    params = variables["params"]
    style = w @ (params["style"]["kernel"] / np.sqrt(8)) + params["style"]["bias"]  # equalised: He's constant
    kernel = params["kernel"] / np.sqrt(3 * 3 * 4)
    expected = []
    for i in range(3):
        modulated = kernel * style[i][None, None, :, None]
        modulated = modulated / jnp.sqrt(jnp.sum(jnp.square(modulated), (0, 1, 2)) + 1e-8)
        expected.append(jax.lax.conv_general_dilated(x[i:i + 1], modulated, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0])
    np.testing.assert_allclose(conv.apply(variables, x, w), np.stack(expected), rtol=2e-4, atol=2e-5)


def test_style_generator_mixes_styles_and_draws_noise_from_each_example_s_key():
    generator = StyleGenerator(image_shape=(8, 8, 1), features=8, w_dim=16, style_mixing=1.0)
    z = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    variables = jax.jit(generator.init)(jax.random.PRNGKey(0), z)
    params = jax.tree_util.tree_map_with_path(  # noise at full strength (it starts at 0)
        lambda path, p: jnp.ones_like(p) if "noise_strength" in jax.tree_util.keystr(path) else p, variables)
    run = jax.jit(lambda v, keys, mixing, train: generator.clone(style_mixing=mixing).apply(
        v, z, noise_keys=keys, train=train), static_argnums=(2, 3))
    evaluated = run(params, keys, 1.0, False)
    assert evaluated.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(run(params, keys, 0.0, False), evaluated)  # mixing is for training only
    assert not np.allclose(run(params, keys, 1.0, True), run(params, keys, 0.0, True)), "a second latent's styles"
    other_keys = keys.at[1].set(jax.random.PRNGKey(7))
    moved = run(params, other_keys, 1.0, False)
    np.testing.assert_array_equal(moved[0], evaluated[0])
    assert not np.allclose(moved[1], evaluated[1]), "example 1's noise comes from its own key"


def test_stylegan_trains_with_r1_and_samples_from_the_generator_s_average(dcgan_run, tmp_path):
    config = StyleGan(workdir=str(tmp_path), train_steps=8, eval_every_steps=8, validation_split=None,
                      classifier=str(dcgan_run[0] / "classifier"), **{**TINY, "log_every_steps": 4})
    result = main(config)
    assert all(np.isfinite(r["d_loss"]) for r in read_metrics(tmp_path))
    assert np.isfinite(result["test"]["fd_classifier"]) and result["generator_parameters"] > 0
    saved, _ = read_saved(str(tmp_path), ("generator",))
    assert "ema_params" in saved["generator"]
    out = main(StyleGan(workdir=str(tmp_path), mode="sample", num_samples=4))
    assert np.asarray(Image.open(out)).shape == (2 * 10 - 2, 2 * 10 - 2)

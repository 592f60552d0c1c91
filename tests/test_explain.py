"""Explanations: the methods' defining properties on functions known in closed form, then on a trained digits CNN,
a hand-built CNN, a tiny ViT and a tiny BERT, and the command line end to end."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmjax
from bmjax import explain
from bmjax.config import Config
from bmjax.errors import UsageError
from bmjax.explain.runs import explain_example
from bmjax.models.bert import BertForSequenceClassification
from bmjax.models.cnn import SeedCNN
from bmjax.models.mlp import MLP
from bmjax.models.vit import ViT
from conftest import run_module


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """The seed MLP trained briefly on the 8x8 digits (two epochs of 44 steps: one compiled segment length)."""
    workdir = str(tmp_path_factory.mktemp("explain") / "mlp")
    bmjax.run(Config(workdir=workdir, dataset="digits", hidden_sizes=(32,), train_steps=88, batch_size=32,
                     learning_rate=3e-3, log_every_steps=44, parallel="single"))
    run = bmjax.restore(workdir)
    from bmjax import data

    test = data.load(data.DataSpec.of(run.config)).test
    return workdir, run, np.asarray(test[np.arange(4)]["x"])


def random_variables(model, example, seed: int = 0):
    """Random parameters of `model` drawn on the host (nothing to compile): N(0, 0.3) weights and biases, norms'
    scales N(1, 0.1), so that every part of the network counts."""
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), example))
    rng = np.random.default_rng(seed)
    draw = lambda path, s: ((1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0)
                            + (0.1 if jax.tree_util.keystr(path).endswith("['scale']") else 0.3)
                            * rng.standard_normal(s.shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def logit(run, x, target):
    return run.model.apply(run.variables, x[None], train=False)[0, target]


# The methods on functions whose answers are known.

def test_integrated_gradients_of_a_quadratic_is_exact():
    x = jnp.array([1.0, -2.0, 3.0])
    attributions = explain.integrated_gradients(lambda v: jnp.sum(v ** 2), x, None, steps=4)
    np.testing.assert_allclose(attributions, x ** 2, rtol=1e-6)  # the trapezoid rule is exact on a linear gradient
    baseline = jnp.ones(3)
    attributions = explain.integrated_gradients(lambda v: jnp.sum(v ** 2), x, baseline, steps=4)
    assert explain.completeness(lambda v: jnp.sum(v ** 2), x, baseline, attributions)["relative_gap"] < 1e-6


def test_smoothgrad_averages_gradients_over_noise_of_the_stated_size():
    x = jnp.array([0.0, 0.5, 1.0, 2.0])
    # d/dx x^3 = 3x^2, whose mean under x + N(0, s^2) is 3x^2 + 3s^2; s = 0.1 * (max - min) = 0.2.
    samples, s = 4096, 0.2
    got = explain.smoothgrad(lambda v: jnp.sum(v ** 3), x, samples=samples, noise=0.1, rng=jax.random.PRNGKey(1))
    # Within four standard errors of the mean, sd(3(x + e)^2) being about 6|x|s (and 3 sqrt(2) s^2 at x = 0).
    error = (6 * np.abs(x) * s + 3 * np.sqrt(2) * s ** 2) / np.sqrt(samples)
    assert np.all(np.abs(got - (3 * x ** 2 + 3 * s ** 2)) < 4 * error), (got, error)
    assert np.any(np.abs(got - 3 * x ** 2) > 8 * error)  # the noise's own term 3s^2 shows
    np.testing.assert_allclose(explain.smoothgrad(lambda v: jnp.sum(v ** 3), x, samples=3, noise=0.0),
                               explain.saliency(lambda v: jnp.sum(v ** 3), x))


def test_attention_rollout_of_known_attention():
    n = 5
    uniform = jnp.full((2, n, n), 1.0 / n)  # two heads attending evenly
    np.testing.assert_allclose(explain.attention_rollout([uniform]), 0.5 * np.eye(n) + 0.5 / n, atol=1e-6)
    # (I/2 + U/2)^2 = I/4 + 3U/4, as U @ U = U.
    np.testing.assert_allclose(explain.attention_rollout([uniform, uniform]), 0.25 * np.eye(n) + 0.75 / n,
                               atol=1e-6)
    np.testing.assert_allclose(explain.attention_rollout([jnp.eye(n)[None]] * 3), np.eye(n), atol=1e-6)


# A trained digits MLP, CNNs.

def test_integrated_gradients_completeness_on_a_trained_mlp(mlp_run):
    _, run, xs = mlp_run
    for x in xs[:2]:
        e = explain.explain(run.model, run.variables, x, "integrated_gradients", steps=64)
        gap = e.details["completeness"]
        assert e.attributions.shape == x.shape
        assert abs(gap["score_difference"]) > 1.0  # the class logit moves far from the black image's
        assert gap["relative_gap"] < 0.01, gap
        np.testing.assert_allclose(gap["attribution_sum"], float(e.attributions.sum()), rtol=1e-5)
        assert e.probabilities[e.predicted] == e.probabilities.max()


def test_saliency_is_the_gradient_of_the_class_logit(mlp_run):
    _, run, xs = mlp_run
    e = explain.explain(run.model, run.variables, xs[0], "saliency", target=3)
    assert e.target == 3
    np.testing.assert_allclose(e.attributions, jax.jit(jax.grad(lambda v: logit(run, v, 3)))(jnp.asarray(xs[0])),
                               rtol=1e-5, atol=1e-7)


def test_gradcam_maps_the_convolution_grid():
    image = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (8, 8, 1)))
    model = SeedCNN(num_outputs=10, conv_features=(8, 16), conv_padding="SAME")  # 8x8 -> Conv_0 8x8 -> Conv_1 4x4
    variables = random_variables(model, jnp.zeros((1, 8, 8, 1)))
    e = explain.explain(model, variables, image, "gradcam")
    assert e.attributions.shape == (4, 4) and e.details["layer"] == "Conv_1"
    assert (e.attributions >= 0).all() and e.attributions.max() > 0
    first = explain.explain(model, variables, image, "gradcam", layer="Conv_0")
    assert first.attributions.shape == (8, 8) and (first.attributions >= 0).all()
    with pytest.raises(UsageError, match="--layer=Dense_0 is not a module .* Conv_0, Conv_1"):
        explain.explain(model, variables, image, "gradcam", layer="Dense_0")


def identity_cnn():
    """A SeedCNN whose convolutions pass their single channel through and whose class 0 adds up the pooled map."""
    model = SeedCNN(num_outputs=2, conv_features=(1, 1), kernel_size=3, conv_padding="SAME")
    centre = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
    params = {"Conv_0": {"kernel": centre, "bias": jnp.zeros(1)}, "Conv_1": {"kernel": centre, "bias": jnp.zeros(1)},
              "Dense_0": {"kernel": jnp.zeros((4, 2)).at[:, 0].set(1.0), "bias": jnp.zeros(2)}}
    return model, {"params": params}


def test_gradcam_finds_the_signal_in_a_model_read_by_hand():
    model, variables = identity_cnn()
    image = np.zeros((8, 8, 1), np.float32)
    image[4:6, 6:8] = 1.0  # a bright square, which lands in cell (2, 3) of the pooled 4x4 grid
    e = explain.explain(model, variables, image, "gradcam", target=0)
    assert e.attributions.shape == (4, 4)
    assert np.unravel_index(np.argmax(e.attributions), (4, 4)) == (2, 3)
    assert e.attributions[2, 3] > 0 and np.count_nonzero(e.attributions) == 1


def test_methods_that_do_not_fit_say_so():
    mlp = MLP(num_outputs=3, hidden_sizes=(4,))
    variables = random_variables(mlp, jnp.zeros((1, 5)))
    x = np.ones(5, np.float32)
    with pytest.raises(UsageError, match="gradcam needs a convolutional network"):
        explain.explain(mlp, variables, x, "gradcam")
    with pytest.raises(UsageError, match="attention_rollout needs a transformer"):
        explain.explain(mlp, variables, x, "attention_rollout")
    with pytest.raises(UsageError, match="--target=3 is not a class"):
        explain.explain(mlp, variables, x, "saliency", target=3)
    with pytest.raises(UsageError, match="unknown explanation method 'lime'"):
        explain.explain(mlp, variables, x, "lime")


# Transformers.

def test_attention_rollout_on_a_tiny_vit():
    model = ViT(num_outputs=3, patch_size=2, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=16)
    variables = random_variables(model, jnp.zeros((1, 8, 8, 1)))
    image = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 1)))

    @jax.jit
    def recorded(images):
        with explain.recorded_attention() as weights:
            return model.apply(variables, images), weights

    logits, weights = recorded(image[None])
    assert len(weights) == 2 and weights[0].shape == (1, 2, 17, 17)  # 16 patches and the class token
    np.testing.assert_allclose(weights[1].sum(-1), 1.0, atol=1e-5)

    rollout = explain.attention_rollout([w[0] for w in weights])
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-5)
    e = explain.explain(model, variables, image, "attention_rollout")
    np.testing.assert_allclose(e.probabilities, jax.nn.softmax(logits[0]), atol=1e-6)  # recording changes nothing
    assert e.attributions.shape == (4, 4) and e.details["grid"] == [4, 4]
    np.testing.assert_allclose(e.attributions.reshape(-1), rollout[0, 1:], rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert():
    model = BertForSequenceClassification(vocab_size=20, block_size=8, num_layers=2, num_heads=2, embed_dim=8,
                                          mlp_dim=16, dropout=0.0, num_outputs=2)
    variables = random_variables(model, jnp.zeros((1, 8), jnp.int32))
    return model, variables, np.array([4, 9, 12, 15, 17, 5, 0, 0], np.int32)  # [CLS] ... [SEP] and padding


def test_token_gradients_act_on_the_embeddings(tiny_bert):
    model, variables, tokens = tiny_bert
    e = explain.explain(model, variables, tokens, "integrated_gradients", steps=64)
    assert e.attributions.shape == tokens.shape and e.tokens.tolist() == tokens.tolist()
    gap = e.details["completeness"]
    assert abs(gap["score_difference"]) > 0.01 and gap["relative_gap"] < 0.01, gap


def test_attention_rollout_on_a_tiny_bert(tiny_bert):
    model, variables, tokens = tiny_bert
    e = explain.explain(model, variables, tokens, "attention_rollout")
    assert e.attributions.shape == tokens.shape
    np.testing.assert_allclose(e.attributions.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(e.attributions[tokens == 0], 0.0, atol=1e-6)  # no path reaches masked padding
    with pytest.raises(UsageError, match="gradcam explains convolutional networks"):
        explain.explain(model, variables, tokens, "gradcam")


# Files and the command line.

def test_bad_input_is_one_line(mlp_run, tmp_path):
    workdir, _, _ = mlp_run
    cases = [(dict(workdir=str(tmp_path), method="saliency", index=0), "holds no bmjax run"),
             (dict(workdir=workdir, method="saliency", index=360), "--index=360 is outside the test split's 360"),
             (dict(workdir=workdir, method="saliency", index=0, split="validation"), "has no validation split"),
             (dict(workdir=workdir, method="attention_rollout", index=0), "MLP computes no attention"),
             (dict(workdir=workdir, method="integrated_gradients", index=0, steps=0), "--steps must be at least 1")]
    for options, message in cases:
        with pytest.raises(UsageError, match=message) as caught:
            explain_example(out=str(tmp_path), **options)
        assert "\n" not in str(caught.value)


def test_command_line_writes_the_picture_and_the_numbers(mlp_run, tmp_path):
    workdir, run, xs = mlp_run
    done = run_module("bmjax.explain", f"--workdir={workdir}", "--method=integrated_gradients", "--index=2",
                      f"--out={tmp_path}", timeout=120)
    assert done.returncode == 0, done.stderr
    png, numbers = tmp_path / "test_2_integrated_gradients.png", tmp_path / "test_2_integrated_gradients.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    record = json.loads(numbers.read_text())
    probabilities = jax.nn.softmax(run.model.apply(run.variables, xs[2:3], train=False)[0])
    assert record["predicted"] == int(np.argmax(probabilities)) == record["target"]
    np.testing.assert_allclose(record["probability"], float(probabilities.max()), rtol=1e-4)
    assert np.shape(record["attributions"]) == (8, 8, 1) == tuple(record["attributions_shape"])
    assert record["completeness"]["relative_gap"] < 0.01 and record["steps"] == 64
    assert "wrote" in done.stdout and "completeness gap" in done.stdout

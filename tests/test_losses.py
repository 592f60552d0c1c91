"""Losses against scikit-learn and hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import log_loss, mean_squared_error

from bmjax import losses
from bmjax.data.preprocess import one_hot

rng = np.random.default_rng(0)


def test_softmax_cross_entropy_matches_log_loss_for_ids_and_one_hot():
    logits = rng.normal(size=(64, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 64)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = log_loss(labels, probabilities, labels=range(5))
    by_id = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    by_one_hot = jax.jit(losses.softmax_cross_entropy)(logits, one_hot(labels, 5))
    assert by_id.shape == (64,)
    np.testing.assert_allclose(by_id.mean(), expected, rtol=1e-5)
    np.testing.assert_allclose(by_one_hot, by_id, rtol=1e-6)


def test_softmax_cross_entropy_with_soft_labels_matches_numpy():
    logits = rng.normal(size=(16, 4)).astype(np.float32)
    soft = rng.dirichlet(np.ones(4), 16).astype(np.float32)
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(soft * log_probabilities).sum(-1)
    np.testing.assert_allclose(jax.jit(losses.softmax_cross_entropy)(logits, soft), expected, rtol=1e-5)


def test_sigmoid_binary_cross_entropy_matches_log_loss():
    logits = rng.normal(size=(50, 1)).astype(np.float32) * 3
    labels = rng.integers(0, 2, 50)
    expected = log_loss(labels, 1 / (1 + np.exp(-logits[:, 0])))
    loss = losses.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert loss.shape == (50,)
    np.testing.assert_allclose(loss.mean(), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(logits[:, 0], labels), loss, rtol=1e-6)
    float_labels = jax.jit(losses.sigmoid_binary_cross_entropy)(logits, labels.astype(np.float32))
    np.testing.assert_allclose(float_labels, loss, rtol=1e-6)


def test_squared_error_matches_mean_squared_error():
    predictions = rng.normal(size=(40, 3)).astype(np.float32)
    targets = rng.normal(size=(40, 3)).astype(np.float32)
    np.testing.assert_allclose(losses.squared_error(predictions, targets).mean(),
                               mean_squared_error(targets, predictions), rtol=1e-5)
    single = losses.squared_error(predictions[:, :1], targets[:, 0])
    np.testing.assert_allclose(single, (predictions[:, 0] - targets[:, 0]) ** 2, rtol=1e-6)


def test_penalties_cover_weight_matrices_only():
    params = {"dense": {"kernel": jnp.array([[1.0, -2.0], [3.0, -4.0]]), "bias": jnp.array([100.0, -100.0])},
              "conv": {"kernel": jnp.full((2, 2, 1, 1), -0.5)}, "norm": {"scale": jnp.full((3,), 7.0)}}
    assert float(losses.l1_penalty(params)) == 10.0 + 4 * 0.5
    assert float(losses.l2_penalty(params)) == 30.0 + 4 * 0.25
    assert float(jax.jit(losses.l2_penalty)(params)) == 30.0 + 4 * 0.25

"""Optimizers and schedules built from a config behave like their optax definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bmjax
from bmjax import optim
from bmjax.config import Config

PARAMS = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
GRADS = {"dense": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.full((2,), -0.25)}}


def updates(config, steps=3):
    tx = optim.create(config, total_steps=100)
    state, params = tx.init(PARAMS), PARAMS
    for _ in range(steps):
        u, state = tx.update(GRADS, state, params)
        params = optax.apply_updates(params, u)
    return params


@pytest.mark.parametrize("config, reference", [
    (Config(optimizer="sgd", momentum=0.0, learning_rate=0.1), optax.sgd(0.1)),
    (Config(optimizer="sgd", momentum=0.9, learning_rate=0.1), optax.sgd(0.1, momentum=0.9)),
    (Config(optimizer="sgd", momentum=0.9, nesterov=True, learning_rate=0.1),
     optax.sgd(0.1, momentum=0.9, nesterov=True)),
    (Config(optimizer="adam", learning_rate=0.01), optax.adam(0.01)),
])
def test_optimizers_match_optax(config, reference):
    state, params = reference.init(PARAMS), PARAMS
    for _ in range(3):
        u, state = reference.update(GRADS, state, params)
        params = optax.apply_updates(params, u)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates(config), params)


def test_adamw_decays_kernels_not_biases():
    no_decay = updates(Config(optimizer="adamw", weight_decay=0.0, learning_rate=0.01))
    decay = updates(Config(optimizer="adamw", weight_decay=0.5, learning_rate=0.01))
    assert np.all(decay["dense"]["kernel"] < no_decay["dense"]["kernel"])
    np.testing.assert_allclose(decay["dense"]["bias"], no_decay["dense"]["bias"])


def test_clipping_limits_the_global_norm():
    clipped = updates(Config(optimizer="sgd", momentum=0.0, learning_rate=1.0, clip_grad_norm=0.1), steps=1)
    moved = jax.tree.map(lambda a, b: a - b, PARAMS, clipped)
    norm = optax.tree.norm(moved)
    np.testing.assert_allclose(norm, 0.1, rtol=1e-5)


def test_schedules():
    lr = lambda **kw: optim.schedule(Config(learning_rate=1.0, **kw), total_steps=100)
    assert float(lr(lr_schedule="constant")(57)) == 1.0
    np.testing.assert_allclose(lr(lr_schedule="cosine")(50), 0.5, atol=1e-6)
    np.testing.assert_allclose(lr(lr_schedule="cosine")(100), 0.0, atol=1e-6)
    warm = lr(lr_schedule="warmup_cosine", warmup_steps=10)
    np.testing.assert_allclose([warm(0), warm(5), warm(10)], [0.0, 0.5, 1.0], atol=1e-6)
    assert float(warm(100)) < 1e-6
    step = lr(lr_schedule="step", lr_decay_steps=30, lr_decay_factor=0.5)
    np.testing.assert_allclose([step(0), step(29), step(30), step(65)], [1.0, 1.0, 0.5, 0.25], rtol=1e-6)


def test_frozen_parameters_stay_put():
    params = {"encoder": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}, "head": {"kernel": jnp.ones((2, 2))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    config = Config(optimizer="adamw", weight_decay=0.1, clip_grad_norm=1.0, freeze="^encoder/")
    tx = optim.create(config, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not np.any(updates["encoder"]["kernel"]) and not np.any(updates["encoder"]["bias"]), "no decay either"
    assert np.all(updates["head"]["kernel"] < 0)
    assert optim.trainable_count(config, params) == 4
    assert optim.trainable_count(Config(), params) == 12
    with pytest.raises(bmjax.UsageError, match="--freeze='\\[' is not a regular expression"):
        Config(workdir="/tmp/x", freeze="[").validate()

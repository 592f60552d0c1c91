"""Optimizers and learning-rate schedules from a config, through optax."""

import re

import jax
import optax

from bmjax.config import Config


def schedule(config: Config, total_steps: int) -> optax.Schedule:
    """The learning rate at each step."""
    lr = config.learning_rate
    if config.lr_schedule == "constant":
        return optax.constant_schedule(lr)
    if config.lr_schedule == "linear":
        return optax.linear_schedule(lr, config.min_learning_rate, transition_steps=total_steps)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=config.min_learning_rate / lr)
    if config.lr_schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=config.warmup_steps,
                                                  decay_steps=max(total_steps, config.warmup_steps + 1),
                                                  end_value=config.min_learning_rate)
    if config.lr_schedule == "step":
        return optax.exponential_decay(lr, transition_steps=config.lr_decay_steps,
                                       decay_rate=config.lr_decay_factor, staircase=True)
    raise ValueError(f"unknown schedule {config.lr_schedule!r}")


def weight_matrices(params):
    """Mask of the leaves that weight decay and L1/L2 act on: kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def frozen(config: Config, params):
    """Mask of the parameters --freeze names (a regular expression searched in each 'a/b/kernel' path)."""
    path = lambda keys: "/".join(str(getattr(k, "key", k)) for k in keys)
    return jax.tree_util.tree_map_with_path(
        lambda keys, _: bool(config.freeze) and re.search(config.freeze, path(keys)) is not None, params)


def trainable_count(config: Config, params) -> int:
    return sum(p.size for p, is_frozen in zip(jax.tree.leaves(params), jax.tree.leaves(frozen(config, params)))
               if not is_frozen)


def create(config: Config, total_steps: int) -> optax.GradientTransformation:
    """Clipping, the optimizer, and weight decay, chained as the config says; --freeze'd parameters stay put."""
    lr = schedule(config, total_steps)
    decay, eps = config.weight_decay, config.optimizer_eps
    if config.optimizer == "adamw":
        optimizer = optax.adamw(lr, b2=config.b2, eps=eps, weight_decay=decay, mask=weight_matrices)
    else:
        if config.optimizer == "adam":
            optimizer = optax.adam(lr, b2=config.b2, eps=eps)
        elif config.optimizer == "rmsprop":
            optimizer = optax.rmsprop(lr, decay=config.b2, eps=eps, eps_in_sqrt=False)
        elif config.optimizer == "sgd":
            optimizer = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
        else:
            raise ValueError(f"unknown optimizer {config.optimizer!r}")
        if decay:
            optimizer = optax.chain(optax.add_decayed_weights(decay, weight_matrices), optimizer)
    if config.clip_grad_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), optimizer)
    if config.freeze:
        labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen(config, params))
        optimizer = optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
    return optimizer

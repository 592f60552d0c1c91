"""Optimizers and learning-rate schedules from a config, through optax."""

import re
from typing import Callable

import jax
import numpy as np
import optax

from bmjax.config import Config
from bmjax.errors import UsageError
from bmjax.train.early_stopping import LOWER_IS_BETTER

# Optimizer settings members of one vmapped program may differ in (--members): held in the optimizer state by
# optax.inject_hyperparams, so that each member's value is an array of the state rather than a constant.
TRACED = ("learning_rate", "weight_decay")


def schedule(config: Config, total_steps: int, lr=None) -> optax.Schedule:
    """The learning rate at each step (peaking at `lr`, a traced value for --members, or --learning_rate)."""
    lr = config.learning_rate if lr is None else lr
    if config.lr_schedule == "constant":
        return optax.constant_schedule(lr)
    if config.lr_schedule == "linear":
        return optax.linear_schedule(lr, config.min_learning_rate, transition_steps=total_steps)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=config.min_learning_rate / lr)
    if config.lr_schedule == "warmup_cosine" and isinstance(lr, jax.Array):  # optax's compares a traced lr to 0
        decay_steps = max(total_steps, config.warmup_steps + 1)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, config.warmup_steps),
             optax.cosine_decay_schedule(lr, decay_steps - config.warmup_steps, alpha=config.min_learning_rate / lr)],
            [config.warmup_steps])
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


def _core(config: Config, total_steps: int, lr, decay, with_decay: bool) -> optax.GradientTransformation:
    """--optimizer with its schedule peaking at `lr`, and weight decay `decay` when `with_decay`."""
    lr_schedule, eps = schedule(config, total_steps, lr), config.optimizer_eps
    if config.optimizer == "adamw":
        return optax.adamw(lr_schedule, b2=config.b2, eps=eps, weight_decay=decay, mask=weight_matrices)
    if config.optimizer == "adam":
        optimizer = optax.adam(lr_schedule, b2=config.b2, eps=eps)
    elif config.optimizer == "rmsprop":
        optimizer = optax.rmsprop(lr_schedule, decay=config.b2, eps=eps, eps_in_sqrt=False)
    elif config.optimizer == "sgd":
        optimizer = optax.sgd(lr_schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    if with_decay:
        optimizer = optax.chain(optax.add_decayed_weights(decay, weight_matrices), optimizer)
    return optimizer


def plateau_transform(config: Config) -> optax.GradientTransformationExtraArgs:
    """optax's reduce_on_plateau as the config sets it (its value to minimise: the metric, negated when higher is
    better), fed one validation result at a time."""
    try:
        return optax.contrib.reduce_on_plateau(
            factor=config.reduce_on_plateau_factor, patience=config.reduce_on_plateau_patience,
            rtol=config.reduce_on_plateau_rtol, cooldown=config.reduce_on_plateau_cooldown,
            min_scale=config.reduce_on_plateau_min_scale)
    except ValueError as e:  # optax's own checks of the factor and tolerance
        raise UsageError(f"--reduce_on_plateau_*: {e}") from None


def plateau_scale(config: Config) -> optax.GradientTransformation:
    """Multiplies the updates by the scale reduce_on_plateau keeps in its state; the train step never changes that
    state: `Plateau.observe` does, after each evaluation."""
    if config.reduce_on_plateau_patience <= 0 or config.reduce_on_plateau_cooldown < 0:
        raise UsageError(f"--reduce_on_plateau_patience must be positive and --reduce_on_plateau_cooldown not "
                         f"negative, got {config.reduce_on_plateau_patience} and {config.reduce_on_plateau_cooldown}")
    transform = plateau_transform(config)
    return optax.GradientTransformation(
        transform.init, lambda updates, state, params=None: (jax.tree.map(lambda g: state.scale * g, updates), state))


class Plateau:
    """Feeds each validation result to the reduce_on_plateau states in a run's state (one per member when there
    are several), on the host: the states are a few scalars, and live in the optimizer state, so checkpoints
    hold them and a resumed run goes on bitwise."""

    def __init__(self, config: Config, fetch: Callable):
        self.metric, self.fetch = config.reduce_on_plateau_metric, fetch
        self.sign = 1.0 if self.metric in LOWER_IS_BETTER else -1.0
        transform = plateau_transform(config)
        self._update = jax.jit(lambda state, value: transform.update(None, state, value=value)[1])
        self._update_many = jax.jit(jax.vmap(lambda state, value: transform.update(None, state, value=value)[1]))

    @staticmethod
    def states(state) -> list:
        found = []
        jax.tree.map(found.append, state, is_leaf=_is_plateau)
        return [s for s in found if _is_plateau(s)]

    def observe(self, state, summary: dict):
        """`state` with its plateau states updated by the validation `summary`'s metric."""
        members = summary.get("seeds")
        values = [m.get(self.metric) for m in members] if members else [summary.get(self.metric)]
        if any(v is None for v in values):
            names = ", ".join(k for k, v in (members or [summary])[0].items() if isinstance(v, (int, float))
                              and not k.endswith("_std") and k != "seed")
            raise UsageError(f"--reduce_on_plateau_metric={self.metric} is not among the validation metrics "
                             f"({names}); choose one of them")
        value = self.sign * np.asarray(values if members else values[0], np.float32)

        def update(node):
            if not _is_plateau(node):
                return node
            new = (self._update_many if members else self._update)(self.fetch(node), value)
            return jax.tree.map(lambda old, x: jax.device_put(np.broadcast_to(np.asarray(x), old.shape), old.sharding),
                                node, new)

        return jax.tree.map(update, state, is_leaf=_is_plateau)

    def scales(self, state) -> list:
        """The scale of each plateau state (a list per member when there are several)."""
        return [np.asarray(self.fetch(s.scale)).tolist() for s in self.states(state)]


def _is_plateau(node) -> bool:
    return isinstance(node, optax.contrib.ReduceLROnPlateauState)


def create(config: Config, total_steps: int) -> optax.GradientTransformation:
    """Clipping, the optimizer, and weight decay, chained as the config says; --freeze'd parameters stay put;
    with --members, the learning rate and weight decay live in the state (one value per member); with
    --reduce_on_plateau_patience, the updates are scaled by the factor the validation metric has set."""
    if config.members:
        # Weight decay is in the chain whatever its value: g + 0 * p is g exactly, as a run without decay has it.
        core = lambda learning_rate, weight_decay: _core(config, total_steps, learning_rate, weight_decay, True)
        optimizer = optax.inject_hyperparams(core)(learning_rate=config.learning_rate,
                                                   weight_decay=config.weight_decay)
    else:
        optimizer = _core(config, total_steps, config.learning_rate, config.weight_decay, bool(config.weight_decay))
    if config.clip_grad_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), optimizer)
    if config.freeze:
        labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen(config, params))
        optimizer = optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
    if config.reduce_on_plateau_patience:
        optimizer = optax.chain(optimizer, plateau_scale(config))
    if config.prune != "none":
        from bmjax import prune

        optimizer = prune.chain(config, optimizer, total_steps)
    return optimizer

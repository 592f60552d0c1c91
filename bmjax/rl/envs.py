"""Environments an agent steps inside its compiled train step: gymnax's, many at once, each with its own key.

`Environments.step` moves every environment one step with the actions a policy picks, and returns the transition
with both ends of a finished episode apart: `next_obs` is the observation the step reached (what a truncated
episode bootstraps from), `obs` of the next transition is the reset one. Every random draw (the policy's, the
environment's) comes from the environment's own key, so the numbers do not depend on how the environments are
split over devices.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

from bmjax.errors import UsageError

RECENT_EPISODES = 100  # return_last100: the mean over about this many of the latest training episodes


def make(name: str):
    """(gymnax environment, its parameters) for a registered gymnax name with discrete actions."""
    import gymnax  # here, not at the top: importing it starts JAX, which --host_devices must precede
    from gymnax.environments import spaces

    if name not in gymnax.registered_envs:
        raise UsageError(f"--env={name} is not a gymnax environment; choose one of {', '.join(discrete_names())}")
    env, params = gymnax.make(name)
    if not isinstance(env.action_space(params), spaces.Discrete):
        raise UsageError(f"--env={name} has continuous actions, and these agents choose among discrete ones; "
                         f"choose one of {', '.join(discrete_names())}")
    return env, params


def discrete_names() -> list[str]:
    """The gymnax environments whose actions are discrete (the classic controls, MinAtar, bsuite, ...)."""
    import gymnax

    continuous = {"Pendulum-v1", "MountainCarContinuous-v0", "Reacher-misc", "Swimmer-misc", "PointRobot-misc"}
    return [name for name in gymnax.registered_envs if name not in continuous]


class Rollout(struct.PyTreeNode):
    """Every environment's state and running numbers; each array's first axis is the environment."""

    env_state: Any  # gymnax's
    obs: jax.Array  # [envs, *observation]: what the policy sees next
    keys: jax.Array  # [envs, 2]
    episode_return: jax.Array  # [envs]: of the episode under way
    episode_length: jax.Array  # [envs]
    recent_returns: jax.Array  # [envs, R]: the last R finished episodes' returns, newest first; NaN until played


class Environments:
    """`num_envs` copies of a gymnax environment, stepped together."""

    def __init__(self, name: str, num_envs: int):
        self.name, self.num_envs = name, num_envs
        self.env, self.params = make(name)
        self.num_actions = self.env.num_actions
        self.observation_shape = tuple(self.env.observation_space(self.params).shape)
        self.max_episode_steps = int(self.params.max_steps_in_episode)
        self.recent = -(-RECENT_EPISODES // num_envs)  # per environment: about 100 in all

    def reset(self, key) -> Rollout:
        """Fresh environments, environment i's key drawn from `key` and i."""
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.num_envs))
        keys, reset_keys = split(keys)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(reset_keys, self.params)
        return Rollout(env_state=env_state, obs=obs, keys=keys, episode_return=jnp.zeros(self.num_envs),
                       episode_length=jnp.zeros(self.num_envs),
                       recent_returns=jnp.full((self.num_envs, self.recent), jnp.nan))

    def step(self, rollout: Rollout, act: Callable) -> tuple[Rollout, dict]:
        """One step of every environment; `act(obs, keys) -> (actions, extras)` picks the actions, each with its
        environment's key. The transition holds obs, action, reward, terminated, truncated, done, next_obs (the
        observation reached, before any reset), the episode's return and length where one finished, and
        `extras` (a policy's log-probabilities and values, say)."""
        keys, act_keys, step_keys = split(rollout.keys, 3)
        action, extras = act(rollout.obs, act_keys)
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None))(step_keys, rollout.env_state, action, self.params)
        return advance(rollout.replace(env_state=env_state, keys=keys), rollout.obs, action, extras, obs,
                       info["final_observation"], reward, terminated, truncated)

    def run(self, rollout: Rollout, act: Callable, steps: int) -> tuple[Rollout, dict]:
        """`steps` steps of every environment: the transitions stacked [steps, envs, ...]."""
        return lax.scan(lambda r, _: self.step(r, act), rollout, None, steps)

    def play(self, greedy: Callable, key, episodes: int) -> jax.Array:
        """The return of one whole episode on each of `episodes` fresh environments (keyed by `key`), actions
        chosen by `greedy(obs) -> actions`: [episodes]."""
        keys = jax.random.split(key, episodes)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(keys, self.params)

        def body(carry, _):
            env_state, obs, keys, total, playing = carry
            keys, step_keys = split(keys)
            obs, env_state, reward, terminated, truncated, _ = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
                step_keys, env_state, greedy(obs), self.params)
            total = total + jnp.where(playing, reward, 0.0)
            return (env_state, obs, keys, total, playing & ~(terminated | truncated)), None

        carry = (env_state, obs, keys, jnp.zeros(episodes), jnp.ones(episodes, bool))
        (_, _, _, total, _), _ = lax.scan(body, carry, None, self.max_episode_steps)
        return total


def advance(rollout: Rollout, seen, action, extras: dict, obs, reached, reward, terminated, truncated):
    """The rollout after a step from observations `seen` with `action` to `obs` (the next episode's first where
    one ended; `reached` is where the step went), and the step's transition (see `Environments.step`)."""
    reward = reward.astype(jnp.float32)
    done = jnp.logical_or(terminated, truncated)
    episode_return, episode_length = rollout.episode_return + reward, rollout.episode_length + 1
    shifted = jnp.concatenate([episode_return[:, None], rollout.recent_returns[:, :-1]], axis=1)
    transition = dict(obs=seen, action=action, reward=reward, terminated=terminated, truncated=truncated, done=done,
                      next_obs=reached, finished_return=jnp.where(done, episode_return, 0.0),
                      finished_length=jnp.where(done, episode_length, 0.0), **extras)
    rollout = rollout.replace(obs=obs, episode_return=jnp.where(done, 0.0, episode_return),
                              episode_length=jnp.where(done, 0.0, episode_length),
                              recent_returns=jnp.where(done[:, None], shifted, rollout.recent_returns))
    return rollout, transition


def split(keys, num: int = 2):
    """Each row's key split in `num`: a tuple of `num` arrays of keys [rows, 2]."""
    return tuple(jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, num))(keys), 1, 0))


def episode_sums(transitions: dict) -> dict:
    """Sums over a rollout's transitions of the episodes that finished in it: episodes, their returns, lengths."""
    return {"episodes": jnp.sum(transitions["done"]).astype(jnp.float32),
            "episode_return": jnp.sum(transitions["finished_return"]),
            "episode_length": jnp.sum(transitions["finished_length"])}

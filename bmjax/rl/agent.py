"""What every agent program shares: its state, how that state is split over devices, evaluation and reports.

A train step is one *update*: every environment takes `rollout_steps` steps with the current policy, then the
agent learns from them (PPO, A2C) or from its replay buffer (DQN). The agent, its optimizer, the environments and
any replay buffer are one state; the environments (and their buffer) are its "batch" axis, split over devices
under `pmap` and `mesh`, where the gradients are averaged over all of them.

Training logs the episodes that finished since the last log (`episode_return`, `episode_length`); evaluation
logs the greedy policy's return on `eval_episodes` fresh environments (`episode_return`, the same environments at
every evaluation) and the mean return of the last 100 training episodes (`return_last100`), with
`env_steps` beside every number.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import PartitionSpec as P

from bmjax.rl.envs import Environments, Rollout, episode_sums
from bmjax.train.program import Program
from bmjax.train.state import TrainState, create, parameter_count

EVAL_SEED = 1234  # the key of the evaluation's environments: the same at every evaluation


class AgentState(struct.PyTreeNode):
    step: jax.Array
    agent: TrainState
    rollout: Rollout  # per environment
    replay: Any = None  # per environment: DQN's buffer
    target_params: Any = None  # DQN's target network


class Agent(Program):
    """An agent's program; subclasses define `train_step` and `greedy_actions`."""

    def __init__(self, envs: Environments, network, tx, rollout_steps: int, eval_episodes: int,
                 schedules: Optional[dict[str, Callable]] = None, axis_name: Optional[str] = None):
        self.envs, self.network, self.tx, self.rollout_steps = envs, network, tx, rollout_steps
        self.eval_episodes, self.axis_name = eval_episodes, axis_name
        self.step_schedules = schedules or {}  # {name: train step -> value}, logged with the training numbers

    @property
    def env_steps_per_update(self) -> int:
        return self.envs.num_envs * self.rollout_steps

    def networks(self) -> dict:
        return {"network": (self.network, (self.envs.reset(jax.random.PRNGKey(0)).obs[:1],))}

    def init(self, rng):
        agent_rng, env_rng = jax.random.split(rng)
        rollout = self.envs.reset(env_rng)
        agent = create(self.network, self.tx, rollout.obs[:1], agent_rng)
        # Strongly typed (gymnax's states hold weak-typed numbers): the steps' outputs then match their inputs,
        # and the first call's compilation is the only one.
        rollout = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), rollout)
        return AgentState(step=jnp.zeros((), jnp.int32), agent=agent, rollout=rollout)

    def state_axes(self, state):
        per_env = lambda tree: jax.tree.map(lambda x: P("batch", *([None] * (np.ndim(x) - 1))), tree)
        replicated = lambda tree: jax.tree.map(lambda _: P(), tree)
        return state.replace(step=P(), agent=replicated(state.agent), rollout=per_env(state.rollout),
                             replay=per_env(state.replay), target_params=replicated(state.target_params))

    def total(self, x):
        """Sums over every device's environments (under pmap; under jit the arrays are whole already)."""
        return lax.psum(x, self.axis_name) if self.axis_name else x

    def apply(self, params, obs):
        return self.network.apply({"params": params}, obs)

    def greedy_actions(self, params, obs):
        raise NotImplementedError

    def eval_step(self, state, batch):
        returns = self.envs.play(lambda obs: self.greedy_actions(state.agent.params, obs),
                                 jax.random.PRNGKey(EVAL_SEED), self.eval_episodes)
        recent = state.rollout.recent_returns
        played = ~jnp.isnan(recent)
        return {"return": jnp.sum(returns), "return_squares": jnp.sum(returns ** 2),
                "episodes": jnp.float32(self.eval_episodes),
                **self.total({"recent": jnp.sum(jnp.where(played, recent, 0.0)),
                              "recent_count": jnp.sum(played).astype(jnp.float32)}),
                "env_steps": state.step.astype(jnp.float32) * self.env_steps_per_update}

    def summarize(self, sums, detailed=False):
        sums = {name: float(np.sum(value)) for name, value in sums.items()}
        if "return" in sums:  # an evaluation
            mean = sums["return"] / sums["episodes"]
            spread = float(np.sqrt(max(sums["return_squares"] / sums["episodes"] - mean ** 2, 0.0)))
            return {"episode_return": mean, "episode_return_spread": spread,
                    "return_last100": sums["recent"] / sums["recent_count"] if sums["recent_count"] else float("nan"),
                    "env_steps": sums["env_steps"]}
        episodes, count = sums.pop("episodes"), sums.pop("count")
        per_episode = {name: sums.pop(name) / episodes if episodes else float("nan")
                       for name in ("episode_return", "episode_length")}
        return {**{name: value / count if count else float("nan") for name, value in sums.items()}, **per_episode,
                "episodes": episodes}

    def schedules(self, step: int) -> dict:
        return {"env_steps": float(step * self.env_steps_per_update),
                **{name: float(schedule(step)) for name, schedule in self.step_schedules.items()}}

    def describe(self, state):
        return {"parameters": parameter_count(state.agent.params), "env": self.envs.name,
                "num_envs": self.envs.num_envs, "env_steps": int(state.step) * self.env_steps_per_update}

    def rollout_sums(self, transitions: dict, losses: dict) -> dict:
        """The step's metric sums over all devices: its episodes, and the agent's `losses`, sums over the examples
        it learnt from (`count` of them), reported as means."""
        return self.total({**episode_sums(transitions), **losses})

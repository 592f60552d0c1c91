"""A test program that makes its own data: an actor-critic agent on gymnax's CartPole, its rollouts inside the
compiled step.

The state holds the agent (one network with policy logits and a value), every environment's state and
observation, each environment's own random key and its running episode return. Environments are a "batch"
axis of the state, so `pmap` and `mesh` split them over the devices; every random draw is per environment, so
the numbers do not depend on that split.

    python tests/programs/policy_gradient.py --workdir=/tmp/pg --train_steps=100
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax
from jax.sharding import PartitionSpec as P

from bmjax import cli
from bmjax.config import Config, field
from bmjax.train.program import Plan, Program
from bmjax.train.state import TrainState, create, parameter_count


class ActorCritic(nn.Module):
    num_actions: int

    @nn.compact
    def __call__(self, obs, *, train: bool = False):
        hidden = nn.tanh(nn.Dense(64)(nn.tanh(nn.Dense(64)(obs))))
        return nn.Dense(self.num_actions)(hidden), nn.Dense(1)(hidden)[..., 0]


class AgentState(struct.PyTreeNode):
    step: jax.Array
    agent: TrainState
    env_state: object  # gymnax's, one per environment
    obs: jax.Array  # [envs, observation]
    keys: jax.Array  # [envs, 2]: each environment's random key
    episode_return: jax.Array  # [envs]: the return of each environment's current episode


class PolicyGradient(Program):
    def __init__(self, env_name: str, num_envs: int, rollout_steps: int, learning_rate: float, discount: float,
                 entropy_bonus: float, eval_envs: int, axis_name):
        import gymnax  # here, not at the top: importing it starts JAX, which --host_devices must precede

        self.env, self.env_params = gymnax.make(env_name)
        self.num_envs, self.rollout_steps, self.discount = num_envs, rollout_steps, discount
        self.entropy_bonus, self.eval_envs, self.axis_name = entropy_bonus, eval_envs, axis_name
        self.model = ActorCritic(self.env.num_actions)
        self.tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(learning_rate))

    def init(self, rng):
        agent_rng, env_rng = jax.random.split(rng)
        keys = jax.random.split(env_rng, self.num_envs)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(keys, self.env_params)
        agent = create(self.model, self.tx, obs[:1], agent_rng)
        return AgentState(step=jnp.zeros((), jnp.int32), agent=agent, env_state=env_state, obs=obs,
                          keys=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
                          episode_return=jnp.zeros(self.num_envs))

    def state_axes(self, state):
        per_env = lambda tree: jax.tree.map(lambda _: P("batch"), tree)
        return state.replace(step=P(), agent=jax.tree.map(lambda _: P(), state.agent),
                             env_state=per_env(state.env_state), obs=P("batch"), keys=P("batch"),
                             episode_return=P("batch"))

    def _total(self, x):
        return lax.psum(x, self.axis_name) if self.axis_name else x

    def _env_step(self, env_state, obs, keys, logits_fn):
        """Every environment one step on: (transition, new env states, observations, keys)."""
        logits, value = logits_fn(obs)
        keys, action_keys, step_keys = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(keys), 1, 0)
        action = jax.vmap(jax.random.categorical)(action_keys, logits)
        next_obs, env_state, reward, terminated, truncated, _ = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None))(step_keys, env_state, action, self.env_params)
        transition = dict(obs=obs, action=action, reward=reward, terminated=terminated,
                          done=jnp.logical_or(terminated, truncated), value=value)
        return transition, env_state, next_obs, keys

    def train_step(self, state, batch):
        agent = state.agent
        policy = lambda obs: agent.apply_fn({"params": agent.params}, obs)

        def rollout(carry, _):
            env_state, obs, keys, episode_return = carry
            t, env_state, obs, keys = self._env_step(env_state, obs, keys, policy)
            episode_return = episode_return + t["reward"]
            t["finished_return"] = jnp.where(t["done"], episode_return, 0.0)
            return (env_state, obs, keys, jnp.where(t["done"], 0.0, episode_return)), t

        carry = (state.env_state, state.obs, state.keys, state.episode_return)
        (env_state, obs, keys, episode_return), t = lax.scan(rollout, carry, None, self.rollout_steps)

        # n-step returns, bootstrapped from the value of the last observation, cut where an episode ended.
        def backwards(following, t):
            ret = t["reward"] + self.discount * jnp.where(t["terminated"], 0.0,
                                                           jnp.where(t["done"], t["value"], following))
            return ret, ret

        _, returns = lax.scan(backwards, policy(obs)[1], t, reverse=True)
        returns = lax.stop_gradient(returns)
        count = self._total(jnp.float32(returns.size))

        def loss_sum(params):
            logits, value = agent.apply_fn({"params": params}, t["obs"])
            log_probs = jax.nn.log_softmax(logits)
            chosen = jnp.take_along_axis(log_probs, t["action"][..., None], -1)[..., 0]
            advantage = lax.stop_gradient(returns - value)
            entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, -1)
            return jnp.sum(-chosen * advantage + 0.5 * (returns - value) ** 2 - self.entropy_bonus * entropy)

        loss, grads = jax.value_and_grad(loss_sum)(agent.params)
        agent = agent.apply_gradients(jax.tree.map(lambda g: g / count, self._total(grads)), agent.model_state)
        sums = self._total({"loss": loss, "count": jnp.float32(returns.size),
                            "episodes": jnp.sum(t["done"]).astype(jnp.float32),
                            "episode_return": jnp.sum(t["finished_return"])})
        return state.replace(step=state.step + 1, agent=agent, env_state=env_state, obs=obs, keys=keys,
                             episode_return=episode_return), sums

    def eval_step(self, state, batch):
        """The greedy policy's first-episode return on `eval_envs` fresh environments (fixed seeds)."""
        agent = state.agent
        greedy = lambda obs: agent.apply_fn({"params": agent.params}, obs)
        keys = jax.random.split(jax.random.PRNGKey(1234), self.eval_envs)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(keys, self.env_params)

        def play(carry, _):
            env_state, obs, keys, total, alive = carry
            logits, _ = greedy(obs)
            keys, step_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
            obs, env_state, reward, terminated, truncated, _ = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
                step_keys, env_state, jnp.argmax(logits, -1), self.env_params)
            total = total + reward * alive
            return (env_state, obs, keys, total, alive * (1 - jnp.logical_or(terminated, truncated))), None

        carry = (env_state, obs, keys, jnp.zeros(self.eval_envs), jnp.ones(self.eval_envs))
        (_, _, _, total, _), _ = lax.scan(play, carry, None, self.env_params.max_steps_in_episode)
        return {"return": jnp.sum(total), "episodes": jnp.float32(self.eval_envs)}

    def summarize(self, sums, detailed=False):
        if "return" in sums:  # an evaluation
            return {"episode_return": float(sums["return"] / sums["episodes"])}
        episodes = float(sums["episodes"])
        return {"loss": float(sums["loss"] / sums["count"]), "episodes": episodes,
                "episode_return": float(sums["episode_return"] / episodes) if episodes else float("nan")}

    def describe(self, state):
        return {"parameters": parameter_count(state.agent.params)}


@dataclasses.dataclass(frozen=True)
class PolicyGradientConfig(Config):
    env: str = field("CartPole-v1", "A gymnax environment.")
    num_envs: int = field(16, "Environments stepped in parallel (split over the devices).")
    rollout_steps: int = field(16, "Steps of every environment per update.")
    discount: float = field(0.99, "Discount of future rewards.")
    entropy_bonus: float = field(0.01, "Weight of the policy's entropy in the loss.")
    eval_envs: int = field(8, "Environments the greedy policy is evaluated on.")
    train_steps: int = 100
    learning_rate: float = 2.5e-3
    log_every_steps: int = 10

    def build_program(self, context):
        program = PolicyGradient(self.env, self.num_envs, self.rollout_steps, self.learning_rate, self.discount,
                                 self.entropy_bonus, self.eval_envs, context.axis_name)
        return Plan(program)


if __name__ == "__main__":
    cli.main(PolicyGradientConfig)

"""Deep Q-learning (Mnih et al. 2015) with a target network, double Q-learning (van Hasselt et al. 2016) and
n-step returns as options, its replay buffer in the agent's state (`bmjax.rl.replay`).

Each train step: every environment takes `rollout_steps` epsilon-greedy steps, which go into the buffer; then,
once `learning_starts` steps per environment are written, one gradient step on `batch_size` sequences of
`n_step` transitions (an equal share from each environment's buffer), toward

    G = r_t + ... + discount^(k-1) r_{t+k-1} + discount^k Q_target(s_{t+k}, argmax_a Q(s_{t+k}, a))

(k = n_step, or fewer where the episode ended; no bootstrap where it terminated; max over Q_target without
`double`). The target network takes the online weights every `target_every` train steps.
"""

import jax
import jax.numpy as jnp
import optax
from jax import lax

from bmjax.rl import replay, returns as returns_lib
from bmjax.rl.agent import Agent
from bmjax.rl.envs import split

STORED = ("obs", "action", "reward", "terminated", "done", "next_obs")


class DQN(Agent):
    def __init__(self, *args, epsilon, discount: float, capacity: int, batch_size: int, learning_starts: int,
                 target_every: int, double: bool, n_step: int, huber: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilon, self.discount, self.capacity, self.double = epsilon, discount, capacity, double
        self.per_env_batch = batch_size // self.envs.num_envs
        self.learning_starts, self.target_every, self.n_step, self.huber = learning_starts, target_every, n_step, huber

    def init(self, rng):
        state = super().init(rng)
        rollout = state.rollout
        example = dict(obs=rollout.obs[0], action=jnp.int32(0), reward=jnp.float32(0), terminated=False, done=False,
                       next_obs=rollout.obs[0])
        return state.replace(replay=replay.empty(example, self.envs.num_envs, self.capacity),
                             target_params=jax.tree.map(jnp.copy, state.agent.params))

    def greedy_actions(self, params, obs):
        return jnp.argmax(self.apply(params, obs), -1)

    def train_step(self, state, batch):
        params, epsilon = state.agent.params, self.epsilon(state.step)

        def act(obs, keys):
            explore_keys, action_keys = split(keys)
            random = jax.vmap(lambda k: jax.random.randint(k, (), 0, self.envs.num_actions))(action_keys)
            explore = jax.vmap(lambda k: jax.random.uniform(k) < epsilon)(explore_keys)
            return jnp.where(explore, random, self.greedy_actions(params, obs)), {}

        rollout, t = self.envs.run(state.rollout, act, self.rollout_steps)
        written = state.step * self.rollout_steps
        buffer = replay.add(state.replay, {k: t[k] for k in STORED}, written)
        written = written + self.rollout_steps
        rollout_keys, sample_keys = split(rollout.keys)
        learning = written >= self.learning_starts
        agent, sums = lax.cond(learning, self.learn, self.skip, state.agent, state.target_params,
                               replay.sample(buffer, sample_keys, written, self.per_env_batch, self.n_step))
        step = state.step + 1
        target = optax.periodic_update(agent.params, state.target_params, step, self.target_every)
        state = state.replace(step=step, agent=agent, rollout=rollout.replace(keys=rollout_keys), replay=buffer,
                              target_params=target)
        return state, self.rollout_sums(t, sums)

    def targets(self, params, target_params, sequences):
        """The n-step target of each sampled sequence [envs, count, n_step, ...]."""
        next_q = self.apply(target_params, sequences["next_obs"])
        if self.double:
            chosen = jnp.argmax(self.apply(params, sequences["next_obs"]), -1)
            bootstrap = jnp.take_along_axis(next_q, chosen[..., None], -1)[..., 0]
        else:
            bootstrap = jnp.max(next_q, -1)
        time_first = lambda x: jnp.moveaxis(x, 2, 0)
        g = returns_lib.n_step_returns(time_first(sequences["reward"]), time_first(bootstrap),
                                       time_first(sequences["terminated"]), time_first(sequences["done"]),
                                       self.discount)
        return lax.stop_gradient(g[0])

    def loss_sum(self, params, target_params, sequences):
        first = jax.tree.map(lambda x: x[:, :, 0], sequences)
        q = jnp.take_along_axis(self.apply(params, first["obs"]), first["action"][..., None], -1)[..., 0]
        error = q - self.targets(params, target_params, sequences)
        loss = optax.huber_loss(error) if self.huber else 0.5 * error ** 2
        return jnp.sum(loss), {"q_loss": jnp.sum(loss), "q_value": jnp.sum(q)}

    def learn(self, agent, target_params, sequences):
        count = jnp.float32(self.per_env_batch * sequences["reward"].shape[0])
        grads, sums = jax.grad(self.loss_sum, has_aux=True)(agent.params, target_params, sequences)
        agent = agent.apply_gradients(jax.tree.map(lambda g: g / self.total(count), self.total(grads)),
                                      agent.model_state)
        return agent, {**sums, "count": count}

    def skip(self, agent, target_params, sequences):
        """Before `learning_starts`: no update."""
        return agent, {"q_loss": jnp.float32(0), "q_value": jnp.float32(0),
                                                    "count": jnp.float32(0)}

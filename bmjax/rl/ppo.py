"""Proximal policy optimisation (Schulman et al. 2017) and advantage actor-critic (A2C, the synchronous A3C of
Mnih et al. 2016), on the agent state of `bmjax.rl.agent`.

Both collect `rollout_steps` steps of every environment with the stochastic policy. A2C then takes one gradient
step on the n-step returns of the whole rollout; PPO takes `epochs` passes over it in `minibatches`, with GAE
advantages (normalised per minibatch, optionally), the clipped surrogate objective and (optionally) clipped
values. Each minibatch holds a share of every environment's steps, shuffled within the environment by its own
key, so that splitting the environments over devices changes nothing.
"""

import jax
import jax.numpy as jnp
from jax import lax

from bmjax.rl import returns as returns_lib
from bmjax.rl.agent import Agent
from bmjax.rl.envs import split


class ActorCriticAgent(Agent):
    """The rollout and the loss an actor-critic agent shares."""

    def __init__(self, *args, discount: float, entropy_bonus: float, value_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.discount, self.entropy_bonus, self.value_coef = discount, entropy_bonus, value_coef

    def greedy_actions(self, params, obs):
        return jnp.argmax(self.apply(params, obs)[0], -1)

    def collect(self, state):
        """The rollout's transitions [T, envs, ...] with the policy's log-probabilities and values, and the values
        of the observations each step reached."""
        params = state.agent.params

        def act(obs, keys):
            logits, value = self.apply(params, obs)
            action = jax.vmap(jax.random.categorical)(keys, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            return action, {"log_prob": log_prob, "value": value}

        rollout, t = self.envs.run(state.rollout, act, self.rollout_steps)
        t["next_value"] = self.apply(params, t["next_obs"])[1]
        return rollout, t

    def loss_sums(self, params, batch, advantages, targets):
        """Sums over `batch` of the policy's, the value's and the entropy's losses (and diagnostics); the first is
        their weighted total."""
        logits, value = self.apply(params, batch["obs"])
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, batch["action"][..., None], -1)[..., 0]
        entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, -1)
        policy_loss, extra = self.policy_loss(log_prob, batch, advantages)
        value_loss = self.value_loss(value, batch, targets)
        total = jnp.sum(policy_loss + self.value_coef * value_loss - self.entropy_bonus * entropy)
        return total, {"policy_loss": jnp.sum(policy_loss), "value_loss": jnp.sum(value_loss),
                       "entropy": jnp.sum(entropy), **extra}

    def policy_loss(self, log_prob, batch, advantages):
        return -log_prob * advantages, {}

    def value_loss(self, value, batch, targets):
        return 0.5 * (value - targets) ** 2

    def learn(self, agent, batch, advantages, targets):
        """One gradient step on `batch` (every device's part): the new agent and the step's loss sums."""
        count = self.total(jnp.float32(advantages.size))
        grads, sums = jax.grad(self.loss_sums, has_aux=True)(agent.params, batch, advantages, targets)
        agent = agent.apply_gradients(jax.tree.map(lambda g: g / count, self.total(grads)), agent.model_state)
        return agent, {**sums, "count": jnp.float32(advantages.size)}


class A2C(ActorCriticAgent):
    def train_step(self, state, batch):
        rollout, t = self.collect(state)
        targets = returns_lib.n_step_returns(t["reward"], t["next_value"], t["terminated"], t["done"], self.discount)
        agent, sums = self.learn(state.agent, t, targets - t["value"], targets)
        return state.replace(step=state.step + 1, agent=agent, rollout=rollout), self.rollout_sums(t, sums)


class PPO(ActorCriticAgent):
    def __init__(self, *args, gae_lambda: float, clip: float, clip_values: bool, epochs: int, minibatches: int,
                 normalize_advantages: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.gae_lambda, self.clip, self.clip_values = gae_lambda, clip, clip_values
        self.epochs, self.minibatches, self.normalize_advantages = epochs, minibatches, normalize_advantages

    def policy_loss(self, log_prob, batch, advantages):
        if self.normalize_advantages:  # over the whole minibatch, every device's part of it
            count = self.total(jnp.float32(advantages.size))
            mean = self.total(jnp.sum(advantages)) / count
            std = jnp.sqrt(jnp.maximum(self.total(jnp.sum(advantages ** 2)) / count - mean ** 2, 0.0))
            advantages = (advantages - mean) / (std + 1e-8)
        log_ratio = log_prob - batch["log_prob"]
        ratio = jnp.exp(log_ratio)
        clipped = jnp.clip(ratio, 1 - self.clip, 1 + self.clip)
        loss = -jnp.minimum(ratio * advantages, clipped * advantages)
        return loss, {"approx_kl": jnp.sum((ratio - 1) - log_ratio),
                      "clip_fraction": jnp.sum(jnp.abs(ratio - 1) > self.clip).astype(jnp.float32)}

    def value_loss(self, value, batch, targets):
        loss = (value - targets) ** 2
        if self.clip_values:
            clipped = batch["value"] + jnp.clip(value - batch["value"], -self.clip, self.clip)
            loss = jnp.maximum(loss, (clipped - targets) ** 2)
        return 0.5 * loss

    def train_step(self, state, batch):
        rollout, t = self.collect(state)
        advantages = returns_lib.gae(t["reward"], t["value"], t["next_value"], t["terminated"], t["done"],
                                     self.discount, self.gae_lambda)
        data = {"batch": {k: t[k] for k in ("obs", "action", "log_prob", "value")}, "advantages": advantages,
                "targets": advantages + t["value"]}
        rollout_keys, shuffle_keys = split(rollout.keys)
        per_minibatch = self.rollout_steps // self.minibatches

        def epoch(agent, epoch_index):
            # Each environment's steps in its own random order, dealt into the minibatches: [M, T/M, envs, ...].
            order = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch_index),
                                                              self.rollout_steps))(shuffle_keys)
            dealt = jax.tree.map(lambda x: jnp.take_along_axis(
                x, order.T.reshape(order.T.shape + (1,) * (x.ndim - 2)), 0).reshape(
                self.minibatches, per_minibatch, *x.shape[1:]), data)
            return lax.scan(lambda a, mb: self.learn(a, mb["batch"], mb["advantages"], mb["targets"]), agent, dealt)

        agent, sums = lax.scan(epoch, state.agent, jnp.arange(self.epochs))
        sums = jax.tree.map(jnp.sum, sums)
        rollout = rollout.replace(keys=rollout_keys)
        return state.replace(step=state.step + 1, agent=agent, rollout=rollout), self.rollout_sums(t, sums)

"""Returns and advantages over a rollout, time first ([T, ...]), with terminated and truncated episodes apart.

Every step t carries `next_values[t]`, the value of the observation the step reached (before any reset). A
terminated episode's future is worth nothing; a truncated one (a time limit) is worth `next_values[t]`, and no
return flows back across either end of an episode.
"""

import jax.numpy as jnp
from jax import lax


def gae(rewards, values, next_values, terminated, done, discount: float, lambda_: float):
    """Generalised advantage estimates (Schulman et al. 2016): A_t = delta_t + discount * lambda_ * A_{t+1}
    within an episode, delta_t = r_t + discount * V(s_{t+1}) [not terminated] - V(s_t)."""
    deltas = rewards + discount * jnp.where(terminated, 0.0, next_values) - values
    continues = discount * lambda_ * (1.0 - done.astype(deltas.dtype))

    def backwards(following, step):
        delta, keep = step
        advantage = delta + keep * following
        return advantage, advantage

    _, advantages = lax.scan(backwards, jnp.zeros_like(deltas[-1]), (deltas, continues), reverse=True)
    return advantages


def n_step_returns(rewards, next_values, terminated, done, discount: float):
    """G_t = r_t + discount * G_{t+1} within an episode, bootstrapped from `next_values` where the episode ends
    by truncation and at the rollout's last step (A2C's returns; `lambda_=1` of `gae`, plus the values)."""

    def backwards(following, step):
        reward, next_value, ends, stops = step
        ret = reward + discount * jnp.where(ends, 0.0, jnp.where(stops, next_value, following))
        return ret, ret

    _, returns = lax.scan(backwards, next_values[-1], (rewards, next_values, terminated, done), reverse=True)
    return returns

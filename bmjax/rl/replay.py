"""A replay buffer in device memory: each environment's last `capacity` transitions in time order, a ring.

The buffer is a pytree of arrays [envs, capacity, ...] inside the agent's state, so it is saved, restored and
split over devices with the environments. How full it is follows from the number of steps written, which the
agent knows from its step counter. Each environment samples its own sequences with its own key: the samples do
not depend on how the environments are split over devices.
"""

import jax
import jax.numpy as jnp


def empty(example: dict, num_envs: int, capacity: int) -> dict:
    """Room for `capacity` transitions per environment, shaped like `example` (one environment's transition)."""
    return {name: jnp.zeros((num_envs, capacity, *jnp.shape(x)), jnp.asarray(x).dtype) for name, x in example.items()}


def add(buffer: dict, transitions: dict, written: jax.Array) -> dict:
    """`buffer` with `transitions` [T, envs, ...] appended, `written` steps per environment having been before."""
    capacity = next(iter(buffer.values())).shape[1]
    steps = next(iter(transitions.values())).shape[0]
    where = (written + jnp.arange(steps)) % capacity
    return {name: data.at[:, where].set(jnp.swapaxes(transitions[name], 0, 1).astype(data.dtype))
            for name, data in buffer.items()}


def sample(buffer: dict, keys: jax.Array, written: jax.Array, count: int, length: int = 1) -> dict:
    """`count` sequences of `length` consecutive transitions of each environment, drawn uniformly among those
    written (`written` steps per environment so far, at least `length`): arrays [envs, count, length, ...]."""
    capacity = next(iter(buffer.values())).shape[1]
    filled = jnp.minimum(written, capacity)
    oldest = written - filled

    def one_env(data, key):
        starts = oldest + jax.random.randint(key, (count,), 0, filled - length + 1)
        where = (starts[:, None] + jnp.arange(length)) % capacity
        return {name: x[where] for name, x in data.items()}

    return jax.vmap(one_env)(buffer, keys)

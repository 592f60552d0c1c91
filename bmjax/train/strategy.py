"""Strategies: how the one step is compiled and where state and batches live.

- `single`: `jit` on one device.
- `pmap`:   `pmap` over this process's devices; state replicated with a leading
            device axis, the batch split over it, the step told the axis name.
- `mesh`:   `jit` with `NamedSharding`s on a mesh over every device of every
            process: state replicated, the batch sharded along `data`.
- `auto`:   `mesh`.

Arrays from the host are either *sharded* (split along their batch axis; in a
multi-host run each process passes only its own part) or *replicated*.
"""

from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bmjax.errors import UsageError


class Single:
    name = "single"
    axis_name: Optional[str] = None

    def __init__(self):
        self.device = jax.local_devices()[0]
        self.num_shards = 1

    def place_state(self, state):
        return jax.device_put(state, self.device)

    def canonical(self, state):
        """The state as checkpoints hold it."""
        return state

    def shard(self, tree, axis: int = 0):
        return jax.device_put(tree, self.device)

    def replicate(self, tree):
        return jax.device_put(tree, self.device)

    def constrain_batch(self, batch):
        return batch

    def compile(self, fn: Callable, donate_state: bool = True) -> Callable:
        return jax.jit(fn, donate_argnums=(0,) if donate_state else ())

    def fetch(self, tree):
        """Replicated outputs (metric sums) as numpy."""
        return jax.tree.map(np.asarray, jax.device_get(tree))


class Pmap(Single):
    name = "pmap"
    axis_name = "batch"

    def __init__(self):
        devices = jax.local_devices()
        self.num_shards = len(devices) * jax.process_count()
        self.num_local = len(devices)
        self.sharding = NamedSharding(Mesh(np.array(devices), (self.axis_name,)), P(self.axis_name))

    def _put_stacked(self, x):
        return jax.device_put(x, self.sharding)

    def place_state(self, state):
        return jax.tree.map(lambda x: self._put_stacked(np.broadcast_to(np.asarray(x), (self.num_local,) + x.shape)),
                            state)

    def canonical(self, state):
        return self.fetch(state)

    def shard(self, tree, axis: int = 0):
        def split(x):
            x = np.asarray(x)
            x = x.reshape(x.shape[:axis] + (self.num_local, -1) + x.shape[axis + 1:])
            return self._put_stacked(np.moveaxis(x, axis, 0))

        return jax.tree.map(split, tree)

    def replicate(self, tree):
        return self.place_state(tree)

    def compile(self, fn: Callable, donate_state: bool = True) -> Callable:
        return jax.pmap(fn, axis_name=self.axis_name, donate_argnums=(0,) if donate_state else ())

    def fetch(self, tree):
        """Device 0's copy of each array, as numpy without the device axis."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)


class MeshStrategy(Single):
    name = "mesh"

    def __init__(self):
        self.mesh = Mesh(np.array(jax.devices()), ("data",))
        self.num_shards = self.mesh.shape["data"]
        self.replicated = NamedSharding(self.mesh, P())

    def _batch_sharding(self, ndim: int, axis: int) -> NamedSharding:
        return NamedSharding(self.mesh, P(*([None] * axis + ["data"] + [None] * (ndim - axis - 1))))

    def place_state(self, state):
        return self.replicate(state)

    def shard(self, tree, axis: int = 0):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            self._batch_sharding(np.ndim(x), axis), np.asarray(x)), tree)

    def replicate(self, tree):
        def put(x):
            if isinstance(x, jax.Array) and x.sharding == self.replicated:
                return x  # already in place (a restored checkpoint); in a multi-host run not readable here
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])

        return jax.tree.map(put, tree)

    def constrain_batch(self, batch):
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, self._batch_sharding(x.ndim, 0)), batch)

    def fetch(self, tree):
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def create(name: str, batch_size: int):
    """The strategy `name`, checked against the global batch size it must split."""
    strategy = {"single": Single, "pmap": Pmap, "mesh": MeshStrategy, "auto": MeshStrategy}[name]()
    if batch_size % strategy.num_shards:
        raise UsageError(f"--batch_size={batch_size} does not divide over the {strategy.num_shards} devices of "
                         f"--parallel={name}; use a multiple of {strategy.num_shards}")
    return strategy

"""Strategies: how the one step is compiled and where state and batches live.

- `single`: `jit` on one device.
- `pmap`:   `pmap` over this process's devices; state replicated with a leading
            device axis, the batch split over it, the step told the axis name.
- `mesh`:   `jit` with `NamedSharding`s on a mesh over every device of every
            process (`--mesh=data:2,fsdp:2,tensor:2`): the batch sharded along
            `data` and `fsdp`, parameters and optimizer state along the mesh axes
            their logical names map to, the rest replicated.
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

    def place_state(self, state, logical=None):
        """The state on the devices; `logical` (its arrays' logical axis names) matters to mesh alone."""
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

    def place_state(self, state, logical=None):
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
    """`jit` on a mesh of named axes: `data` and `fsdp` split the batch, `fsdp` also splits parameters and
    optimizer state along their `embed` axis, `tensor` splits heads, MLP and vocabulary axes."""

    name = "mesh"
    AXES = ("data", "fsdp", "tensor")
    # Logical axis (as models name them) -> mesh axis. Names missing here, or not divisible, stay whole.
    RULES = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "kv_heads": "tensor", "vocab": "tensor"}

    def __init__(self, spec: Optional[str] = None):
        sizes = parse_mesh(spec or f"data:{jax.device_count()}")
        self.mesh = Mesh(np.array(jax.devices()).reshape(tuple(sizes.values())), tuple(sizes))
        self.batch_axes = tuple(a for a in ("data", "fsdp") if a in sizes)
        self.num_shards = int(np.prod([sizes[a] for a in self.batch_axes]))
        self.replicated = NamedSharding(self.mesh, P())

    def _batch_sharding(self, ndim: int, axis: int) -> NamedSharding:
        return NamedSharding(self.mesh, P(*([None] * axis + [self.batch_axes] + [None] * (ndim - axis - 1))))

    def parameter_sharding(self, logical: P, shape) -> NamedSharding:
        """The mesh sharding of an array whose axes carry the logical names `logical`."""
        spec = []
        for name, size in zip(tuple(logical) + (None,) * len(shape), shape):
            axis = self.RULES.get(name)
            fits = axis in self.mesh.shape and axis not in spec and size % self.mesh.shape[axis] == 0
            spec.append(axis if fits else None)
        return NamedSharding(self.mesh, P(*spec))

    def place_state(self, state, logical=None):
        """Replicated, except parameters and optimizer state, sharded by their logical axes."""
        if logical is None:
            return self.replicate(state)
        is_spec = lambda x: isinstance(x, P)
        place = lambda spec, x: self._put(x, self.parameter_sharding(spec, np.shape(x)))
        return state.replace(params=jax.tree.map(place, logical["params"], state.params, is_leaf=is_spec),
                             opt_state=jax.tree.map(place, logical["opt_state"], state.opt_state, is_leaf=is_spec),
                             step=self.replicate(state.step), rng=self.replicate(state.rng),
                             model_state=self.replicate(state.model_state))

    def shard(self, tree, axis: int = 0):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            self._batch_sharding(np.ndim(x), axis), np.asarray(x)), tree)

    def replicate(self, tree):
        return jax.tree.map(lambda x: self._put(x, self.replicated), tree)

    def _put(self, x, sharding: NamedSharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x  # already in place (a restored checkpoint); in a multi-host run not readable here
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def constrain_batch(self, batch):
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, self._batch_sharding(x.ndim, 0)), batch)

    def fetch(self, tree):
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def parse_mesh(spec: str) -> dict[str, int]:
    """'data:2,fsdp:2,tensor:2' -> {'data': 2, 'fsdp': 2, 'tensor': 2}, checked against the devices."""
    sizes = {}
    for part in spec.split(","):
        name, _, size = part.partition(":")
        if name not in MeshStrategy.AXES or not size.isdigit() or int(size) < 1 or name in sizes:
            raise UsageError(f"--mesh={spec} is not a list of axis:size with axes from {', '.join(MeshStrategy.AXES)}"
                             "; e.g. --mesh=data:2,fsdp:2,tensor:2")
        sizes[name] = int(size)
    if int(np.prod(list(sizes.values()))) != jax.device_count():
        raise UsageError(f"--mesh={spec} has {int(np.prod(list(sizes.values())))} devices but there are "
                         f"{jax.device_count()}; make the sizes multiply to {jax.device_count()}")
    if not {"data", "fsdp"} & set(sizes):
        sizes = {"data": 1, **sizes}
    return sizes


def create(name: str, batch_size: int, mesh: Optional[str] = None):
    """The strategy `name` (with `mesh`'s axes, for mesh), checked against the global batch size it splits."""
    if mesh and name not in ("mesh", "auto"):
        raise UsageError(f"--mesh applies to --parallel=mesh, not --parallel={name}")
    strategy = MeshStrategy(mesh) if name in ("mesh", "auto") else {"single": Single, "pmap": Pmap}[name]()
    if batch_size % strategy.num_shards:
        raise UsageError(f"--batch_size={batch_size} does not divide over the {strategy.num_shards} devices of "
                         f"--parallel={name}; use a multiple of {strategy.num_shards}")
    return strategy

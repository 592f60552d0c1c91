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
multi-host run each process passes only its own part) or *replicated*. A state
array whose logical axis is named "batch" (a program's environments, say) is
split over the devices like a batch.
"""

from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bmjax.data import pipeline
from bmjax.errors import UsageError

BATCH = "batch"  # the logical name of a state axis split over the devices like a batch
_is_spec = lambda x: isinstance(x, P)


def batch_axis(spec: Optional[P]) -> Optional[int]:
    """The position of the "batch" axis in a logical PartitionSpec, or None."""
    return tuple(spec).index(BATCH) if spec is not None and BATCH in tuple(spec) else None


class Single:
    name = "single"
    axis_name: Optional[str] = None

    def __init__(self):
        self.device = jax.local_devices()[0]
        self.num_shards = 1

    def place_state(self, state, logical=None):
        """The state on the devices; `logical` (a PartitionSpec of logical axis names per array) matters to the
        other strategies."""
        return jax.device_put(state, self.device)

    def canonical(self, state, logical=None):
        """The state as checkpoints hold it: whole arrays, without a device axis."""
        return state

    def shard(self, tree, axis: int = 0):
        return jax.device_put(tree, self.device)

    def replicate(self, tree):
        return jax.device_put(tree, self.device)

    def constrain_batch(self, batch, axis: int = 0):
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
        def place(spec, x):
            axis = batch_axis(spec)
            if axis is not None:  # this process's part, split over its devices
                part = pipeline.process_part(np.moveaxis(np.asarray(x), axis, -1), jax.process_index(),
                                             jax.process_count())
                return self.shard(np.moveaxis(part, -1, axis), axis)
            return self._put_stacked(np.broadcast_to(np.asarray(x), (self.num_local,) + np.shape(x)))

        logical = _replicated(state) if logical is None else logical
        return jax.tree.map(place, logical, state, is_leaf=_is_spec)

    def canonical(self, state, logical=None):
        def whole(spec, x):
            axis = batch_axis(spec)
            if axis is None:
                return np.asarray(x.addressable_data(0)).reshape(x.shape[1:])
            local = np.moveaxis(np.asarray(x), 0, axis)  # [.., devices, rows per device, ..]
            local = local.reshape(local.shape[:axis] + (-1,) + local.shape[axis + 2:])
            if jax.process_count() == 1:
                return local
            gathered = multihost_utils.process_allgather(np.moveaxis(local, axis, 0), tiled=True)
            return np.moveaxis(gathered, 0, axis)

        logical = _replicated(state) if logical is None else logical
        return jax.tree.map(whole, logical, state, is_leaf=_is_spec)

    def shard(self, tree, axis: int = 0):
        def split(x):
            x = np.asarray(x)
            at = axis % x.ndim
            x = x.reshape(x.shape[:at] + (self.num_local, -1) + x.shape[at + 1:])
            return self._put_stacked(np.moveaxis(x, at, 0))

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
        axis %= ndim
        return NamedSharding(self.mesh, P(*([None] * axis + [self.batch_axes] + [None] * (ndim - axis - 1))))

    def parameter_sharding(self, logical: P, shape) -> NamedSharding:
        """The mesh sharding of an array whose axes carry the logical names `logical`."""
        spec = []
        for name, size in zip(tuple(logical) + (None,) * len(shape), shape):
            axis = self.batch_axes if name == BATCH else self.RULES.get(name)
            parts = int(np.prod([self.mesh.shape[a] for a in axis])) if isinstance(axis, tuple) else \
                self.mesh.shape.get(axis, 0)
            fits = parts and axis not in spec and size % parts == 0
            spec.append(axis if fits else None)
        return NamedSharding(self.mesh, P(*spec))

    def place_state(self, state, logical=None):
        """Each array sharded by its logical axes (replicated where it names none)."""
        if logical is None:
            return self.replicate(state)
        place = lambda spec, x: self._put(x, self.parameter_sharding(spec, np.shape(x)))
        return jax.tree.map(place, logical, state, is_leaf=_is_spec)

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

    def constrain_batch(self, batch, axis: int = 0):
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, self._batch_sharding(x.ndim, axis)), batch)

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


def create(name: str, mesh: Optional[str] = None):
    """The strategy `name` (with `mesh`'s axes, for mesh)."""
    if mesh and name not in ("mesh", "auto"):
        raise UsageError(f"--mesh applies to --parallel=mesh, not --parallel={name}")
    return MeshStrategy(mesh) if name in ("mesh", "auto") else {"single": Single, "pmap": Pmap}[name]()


def check_batch(strategy, batch_size: int, what: str = "--batch_size") -> None:
    """UsageError unless `batch_size` rows split evenly over the strategy's devices."""
    if batch_size % strategy.num_shards:
        raise UsageError(f"{what}={batch_size} does not divide over the {strategy.num_shards} devices of "
                         f"--parallel={strategy.name}; use a multiple of {strategy.num_shards}")


def _replicated(tree):
    return jax.tree.map(lambda _: P(), tree)

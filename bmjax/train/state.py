"""The train state: everything a step reads and writes, saved by orbax as it is."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import PartitionSpec


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-trained collections, e.g. {"batch_stats": ...}; {} when there are none
    rng: jax.Array  # raw uint32 key; each step folds in its step number
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    ema_params: Any = None  # an exponential moving average of `params`, when ema_decay is set
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, grads, model_state) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema_params = self.ema_params
        if self.ema_decay:  # TensorFlow's ExponentialMovingAverage: a smaller decay over the first steps
            decay = jnp.minimum(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
            ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - decay)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                            ema_params=ema_params)

    @property
    def eval_params(self):
        """The parameters evaluated and restored: the moving average where there is one."""
        return self.params if self.ema_params is None else self.ema_params


def create(model: nn.Module, tx: optax.GradientTransformation, example_x: jax.Array, rng: jax.Array,
           ema_decay: float = 0.0, extra_inputs: tuple = ()) -> TrainState:
    """Initialises parameters from the key `rng` (a run's is PRNGKey(--seed)) on an example input batch (and
    `extra_inputs`, the model's further positional inputs: a label, say); with `ema_decay`, also their moving
    average (starting at the initial parameters)."""
    init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    # Unboxed: models that name their parameters' logical axes return them in nn.Partitioned boxes.
    init = jax.jit(lambda rngs, *x: model.init(rngs, *x, train=False))  # compiled: far faster for deep models
    variables = nn.meta.unbox(init({"params": init_rng, "dropout": dropout_rng}, example_x, *extra_inputs))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=dict(variables), rng=state_rng, apply_fn=model.apply, tx=tx,
                      ema_params=jax.tree.map(jnp.copy, params) if ema_decay else None, ema_decay=ema_decay)


def parameter_count(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def logical_axes(model: nn.Module, tx: optax.GradientTransformation, example_x: jax.Array) -> dict:
    """{"params", "opt_state"}: the logical axis names (a PartitionSpec) of every array, from the names the
    model gives its parameters; PartitionSpec() where it gives none. Computed on shapes alone.

    An optimizer slot (a moment, say) takes the names of the parameter whose path ends its own path and whose
    shape it has, whatever optax wrappers (chains, masks, partitions) stand between them.
    """
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    boxed = jax.eval_shape(lambda: model.init(rngs, example_x, train=False)["params"])
    is_spec = lambda x: isinstance(x, PartitionSpec)
    params = nn.get_partition_spec(boxed)
    shapes = nn.meta.unbox(boxed)
    named = {path: (spec, shape.shape) for (path, spec), shape in zip(
        jax.tree_util.tree_flatten_with_path(params, is_leaf=is_spec)[0], jax.tree.leaves(shapes))}

    def slot_spec(path, leaf):
        for start in range(len(path)):
            spec, shape = named.get(tuple(path[start:]), (None, None))
            if spec is not None and shape == leaf.shape:
                return spec
        return PartitionSpec()

    opt_state = jax.tree_util.tree_map_with_path(slot_spec, jax.eval_shape(tx.init, shapes))
    return {"params": params, "opt_state": opt_state}

"""The one train step and the one eval step, and `lax.scan` loops of them.

The same Python code runs under every strategy: under `pmap` it is told the
axis name and averages gradients and sums metrics across devices itself; under
`jit` (one device or a mesh) the compiler does that from the shardings.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from bmjax import losses
from bmjax.data.preprocess import to_float
from bmjax.train.state import TrainState


def make_train_step(task, *, l1: float = 0.0, l2: float = 0.0, axis_name: Optional[str] = None) -> Callable:
    """`train_step(state, batch) -> (state, metric sums)` for a batch {'x', 'y'}."""

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name:  # a different dropout mask on each device
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
        x, y = to_float(batch["x"]), batch["y"]

        def loss_fn(params):
            outputs, model_state = state.apply_fn(
                {"params": params, **state.model_state}, x, train=True, rngs={"dropout": rng},
                mutable=list(state.model_state))
            per_example = task.loss(outputs, y)
            loss = jnp.mean(per_example)
            if l1:
                loss += l1 * losses.l1_penalty(params)
            if l2:
                loss += l2 * losses.l2_penalty(params)
            return loss, (outputs, per_example, model_state)

        grads, (outputs, per_example, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
        sums = task.metric_sums(outputs, y, per_example, jnp.ones_like(per_example))
        if axis_name:
            grads, model_state = lax.pmean((grads, model_state), axis_name)
            sums = lax.psum(sums, axis_name)
        return state.apply_gradients(grads, model_state), sums

    return train_step


def make_eval_step(task, *, axis_name: Optional[str] = None) -> Callable:
    """`eval_step(state, batch) -> metric sums` for a batch {'x', 'y', 'mask'}; masked-out rows are padding."""

    def eval_step(state: TrainState, batch):
        outputs = state.apply_fn({"params": state.params, **state.model_state}, to_float(batch["x"]), train=False)
        per_example = task.loss(outputs, batch["y"])
        sums = task.metric_sums(outputs, batch["y"], per_example, batch["mask"].astype(per_example.dtype))
        return lax.psum(sums, axis_name) if axis_name else sums

    return eval_step


def scan_train(train_step: Callable, gather: Callable, constrain_batch: Callable = lambda b: b) -> Callable:
    """`(state, data, indices[k, b]) -> (state, sums stacked over k)`: k steps in one compiled call.

    `gather(data, indices[b])` cuts a batch out of the device-resident `data`.
    """

    def train_steps(state, data, indices):
        def body(state, idx):
            return train_step(state, constrain_batch(gather(data, idx)))

        if indices.shape[0] == 1:  # no loop at all: XLA:CPU runs convolutions in loops slowly (jax#12868)
            state, sums = body(state, indices[0])
            return state, jax.tree.map(lambda x: x[None], sums)
        return lax.scan(body, state, indices)

    return train_steps


def scan_eval(eval_step: Callable, gather: Callable, constrain_batch: Callable = lambda b: b) -> Callable:
    """`(state, data, indices[k, b], mask[k, b]) -> sums over all k batches`."""

    def eval_steps(state, data, indices, mask):
        def body(_, idx_mask):
            idx, m = idx_mask
            return None, eval_step(state, constrain_batch({**gather(data, idx), "mask": m}))

        _, sums = lax.scan(body, None, (indices, mask))
        return jax.tree.map(lambda s: s.sum(0), sums)

    return eval_steps

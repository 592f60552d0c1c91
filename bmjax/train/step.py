"""The supervised program's train step and eval step.

The same Python code runs under every strategy: under `pmap` it is told the
axis name and adds gradients and metrics across devices itself; under `jit`
(one device or a mesh) the compiler does that from the shardings. The loss of a
batch is sum(example losses) / sum(example weights) over the whole global
batch, so every strategy and every number of micro-batches takes the same step.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from bmjax import losses
from bmjax.data.preprocess import to_float
from bmjax.models.registry import CARRY
from bmjax.train.state import TrainState

EVAL_SEED = 0  # tasks that corrupt their input (masked LM) corrupt the same way at every evaluation
AUGMENT_STREAM = 2  # the step key's fold for augmentation (1 is the task's)
# A model may return (outputs, auxiliary outputs) in training, as GoogLeNet's auxiliary classifiers: their
# losses add to the loss with this weight (Szegedy et al. 2014).
AUXILIARY_LOSS_WEIGHT = 0.3


def _float32(outputs):
    """Model outputs in float32, so that losses keep their precision under a bfloat16 compute dtype."""
    return jax.tree.map(lambda o: o.astype(jnp.float32) if jnp.issubdtype(o.dtype, jnp.floating) else o, outputs)


def micro_batches(batch, k: int):
    """[k, batch/k, ...]: micro-batch j takes rows j, j + k, j + 2k, ..., so that each keeps the batch's split
    over devices (a contiguous slice would sit on a few devices only)."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(task, *, l1: float = 0.0, l2: float = 0.0, axis_name: Optional[str] = None,
                    grad_accum_steps: int = 1, augment: Optional[Callable] = None) -> Callable:
    """`train_step(state, batch) -> (state, metric sums)` for a batch {'x', 'y'}.

    With `grad_accum_steps=k` the batch runs as k micro-batches in a `lax.scan`, their gradients added up
    before the one update. `augment(batch, key, first_row)` transforms each batch first (`bmjax.data.augment`).
    """

    def gradients(state: TrainState, model_state, batch, rng):
        """Gradients of the summed example losses, their summed weight, the new model state, and metric sums."""
        batch = task.prepare(batch, jax.random.fold_in(rng, 1))

        def loss_sum(params):
            outputs, new_model_state = state.apply_fn(
                {"params": params, **model_state}, batch["x"], train=True, rngs={"dropout": rng},
                mutable=list(model_state))
            outputs, auxiliary = _float32(outputs) if isinstance(outputs, tuple) else (_float32(outputs), ())
            example_losses, weights = task.loss(outputs, batch["y"])
            for extra in auxiliary:
                example_losses = example_losses + AUXILIARY_LOSS_WEIGHT * task.loss(extra, batch["y"])[0]
            return jnp.sum(example_losses), (outputs, example_losses, weights, new_model_state)

        grads, (outputs, example_losses, weights, new_model_state) = jax.grad(loss_sum, has_aux=True)(state.params)
        sums = task.metric_sums(outputs, batch["y"], example_losses, weights, jnp.ones_like(example_losses))
        return grads, jnp.sum(weights), new_model_state, sums

    def train_step(state: TrainState, batch):
        step_rng = rng = jax.random.fold_in(state.rng, state.step)
        if axis_name:  # a different dropout mask on each device
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
        batch = {**batch, "x": to_float(batch["x"])}
        if augment is not None:  # keyed by each image's row in the global batch: alike under every strategy
            first_row = lax.axis_index(axis_name) * batch["x"].shape[0] if axis_name else 0
            batch = augment(batch, jax.random.fold_in(step_rng, AUGMENT_STREAM), first_row)

        if grad_accum_steps == 1:
            grads, weight, model_state, sums = gradients(state, state.model_state, batch, rng)
        else:
            def accumulate(carry, micro):
                grads, weight, model_state, sums = carry
                index, micro_batch = micro
                g, w, model_state, s = gradients(state, model_state, micro_batch, jax.random.fold_in(rng, index))
                return (jax.tree.map(jnp.add, grads, g), weight + w, model_state, jax.tree.map(jnp.add, sums, s)), None

            micro = micro_batches(batch, grad_accum_steps)
            shapes = jax.eval_shape(gradients, state, state.model_state, jax.tree.map(lambda x: x[0], micro), rng)
            zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
            carry = (zeros(shapes[0]), jnp.zeros((), jnp.float32), state.model_state, zeros(shapes[3]))
            (grads, weight, model_state, sums), _ = lax.scan(accumulate, carry,
                                                             (jnp.arange(grad_accum_steps), micro))

        if axis_name:
            grads, weight, sums = lax.psum((grads, weight, sums), axis_name)
            # Batch statistics are averaged over the devices; a state carried per row stays with its rows.
            model_state = {name: value if name == CARRY else lax.pmean(value, axis_name)
                           for name, value in model_state.items()}
        grads = jax.tree.map(lambda g: g / weight, grads)
        if l1 or l2:
            penalty = lambda p: l1 * losses.l1_penalty(p) + l2 * losses.l2_penalty(p)
            grads = jax.tree.map(jnp.add, grads, jax.grad(penalty)(state.params))
        return state.apply_gradients(grads, model_state), sums

    return train_step


def make_eval_step(task, *, axis_name: Optional[str] = None) -> Callable:
    """`eval_step(state, batch) -> metric sums` for a batch {'x', 'y', 'mask'}; masked-out rows are padding."""

    def eval_step(state: TrainState, batch):
        batch = task.prepare({**batch, "x": to_float(batch["x"])}, jax.random.PRNGKey(EVAL_SEED))
        outputs = _float32(state.apply_fn({"params": state.eval_params, **state.model_state}, batch["x"],
                                          train=False))
        example_losses, weights = task.loss(outputs, batch["y"])
        sums = task.metric_sums(outputs, batch["y"], example_losses, weights, batch["mask"].astype(jnp.float32))
        return lax.psum(sums, axis_name) if axis_name else sums

    return eval_step

"""Which examples each step reads: a deterministic order per (seed, epoch), split over processes.

Every process computes the same global order, then takes its own contiguous
part of each global batch, so process shards are disjoint, cover each batch,
and the global batch is the same whatever the number of processes.
"""

import numpy as np


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The permutation of the training split used in `epoch`."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def train_indices(seed: int, epoch: int, num_examples: int, batch_size: int, first_step: int,
                  num_steps: int) -> np.ndarray:
    """Global example indices [num_steps, batch_size] of steps `first_step...` within `epoch`."""
    order = epoch_order(seed, epoch, num_examples)
    start = first_step * batch_size
    return order[start:start + num_steps * batch_size].reshape(num_steps, batch_size)


def stream_indices(num_examples: int, batch_size: int, first_step: int, num_steps: int) -> np.ndarray:
    """Global example indices [num_steps, batch_size] read in order: the split cut into `batch_size` consecutive
    streams of num_examples // batch_size examples, row b of step s reading example s of stream b (the
    examples left over at the end are not read)."""
    stream_length = num_examples // batch_size
    steps = np.arange(first_step, first_step + num_steps, dtype=np.int32)
    return (steps[:, None] + stream_length * np.arange(batch_size, dtype=np.int32)).astype(np.int32)


def eval_indices(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and a 0/1 mask [num_batches, batch_size] covering every example once; padding is masked."""
    num_batches = -(-num_examples // batch_size)
    padded = np.arange(num_batches * batch_size, dtype=np.int32)
    mask = padded < num_examples
    return np.where(mask, padded, 0).reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def process_part(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous part of the last (batch) axis."""
    per_process = global_batch.shape[-1] // process_count
    return global_batch[..., process_index * per_process:(process_index + 1) * per_process]

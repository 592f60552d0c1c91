"""Feeds: where a program's batches come from, and how its steps are called.

- `DeviceFeed`: the dataset lives on the devices; batches are gathered there by index, `chunk` steps per call
  in one compiled `lax.scan`.
- `HostFeed`: batches are read on the host (each process its own part), one compiled step per batch, the next
  batch read while the current one computes.
- `RolloutFeed`: the program makes its own data: `chunk` steps of `train_step(state, None)` per call in one
  compiled `lax.scan`.

`train(state, first_step, num_steps)` returns the new state and each step's metric sums, stacked on the host;
`evaluate(state, split)` a split's sums, from batches that also carry `mask` (0 for padding) and `index` (each
row's index in the split). Scanned feeds compile two calls, one of `chunk` steps and one of a
single step (for a segment's last few), however long the segments between logs, evaluations and checkpoints.
"""

import math
from concurrent import futures
from typing import Optional

import jax
import numpy as np
from jax import lax

from bmjax.data import pipeline
from bmjax.errors import UsageError
from bmjax.train import strategy as strategy_lib

DEVICE_DATA_LIMIT_BYTES = 2 << 30
_COMPILER = futures.ThreadPoolExecutor(1)  # compiles one program while the main thread compiles another


def run_length(config, dataset) -> tuple[Optional[int], int]:
    """(steps per epoch, total steps): --epochs passes over the training split or --train_steps; a program that
    makes its own data has no epochs and needs --train_steps."""
    if dataset is None:
        if not config.train_steps:
            raise UsageError("this program makes its own data and has no epochs; set --train_steps")
        return None, config.train_steps
    steps_per_epoch = len(dataset.train) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"--batch_size={config.batch_size} is larger than the {len(dataset.train)} training "
                         f"examples of {config.dataset}; use a smaller batch")
    return steps_per_epoch, config.train_steps or config.epochs * steps_per_epoch


class DataOrder:
    """The training examples each step reads: a permutation of the split per (seed, epoch), or, `in_order`, the
    same consecutive streams every epoch (`pipeline.stream_indices`); one row of indices per seed when there
    are several ([steps, seeds, batch]), else [steps, batch]."""

    def __init__(self, seeds: tuple[int, ...], num_examples: int, batch_size: int, steps_per_epoch: int,
                 in_order: bool = False):
        self.seeds, self.num_examples, self.batch_size = seeds, num_examples, batch_size
        self.steps_per_epoch, self.in_order = steps_per_epoch, in_order

    def indices(self, first_step: int, num_steps: int) -> np.ndarray:
        epoch = first_step // self.steps_per_epoch
        assert (first_step + num_steps - 1) // self.steps_per_epoch == epoch, "a segment ends at each epoch's end"
        within = first_step - epoch * self.steps_per_epoch
        if self.in_order:
            rows = [pipeline.stream_indices(self.num_examples, self.batch_size, within, num_steps)] * len(self.seeds)
        else:
            rows = [pipeline.train_indices(seed, epoch, self.num_examples, self.batch_size, within, num_steps)
                    for seed in self.seeds]
        return rows[0] if len(rows) == 1 else np.stack(rows, axis=1)


class _Chunks:
    """`step(state, data, x)` over rows of `xs`: `size` steps per compiled call in a `lax.scan`, and the steps of a
    segment's tail (fewer than `size`; `tails` says whether there are any) one call each. Two programs, whatever
    the lengths of the segments."""

    def __init__(self, strategy, step, size: int, tails: bool):
        self.strategy, self.size, self.tails = strategy, size, tails

        def train_steps(state, data, xs):
            return lax.scan(lambda state, x: step(state, data, x), state, xs, length=size)

        def train_step(state, data, x):  # no loop: XLA:CPU runs convolutions in loops slowly (jax#12868)
            state, sums = step(state, data, x)
            return state, jax.tree.map(lambda s: s[None], sums)

        self.scanned = strategy.compile(train_steps)
        self.single = strategy.compile(train_step)
        self.compiling = None

    def run(self, state, data, xs: Optional[np.ndarray], num_steps: int, shard_axis: int = -1):
        """`num_steps` steps: (state, their sums stacked on the host)."""
        outputs, start = [], 0
        while start < num_steps:
            whole = self.size > 1 and num_steps - start >= self.size
            rows = None if xs is None else self.strategy.shard(xs[start:start + self.size] if whole else xs[start],
                                                              axis=shard_axis)
            if whole and self.tails and self.compiling is None:  # compiled beside the first scan
                row = None if xs is None else self.strategy.shard(xs[start], axis=shard_axis)
                shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                      (state, data, row))
                self.compiling = _COMPILER.submit(_compile_quietly, self.single, shapes)
            if not whole and self.compiling is not None:
                self.compiling.result()
            state, sums = (self.scanned if whole else self.single)(state, data, rows)
            outputs.append(sums)
            start += self.size if whole else 1
        return state, jax.tree.map(lambda *s: np.concatenate([self.strategy.fetch(x) for x in s]), *outputs)


def _compile_quietly(fn, shapes) -> None:
    """Compiles `fn` for arguments shaped like `shapes` ahead of its first call; should that fail, the first
    call compiles it as usual."""
    try:
        fn.lower(*shapes).compile()
    except Exception:  # an early start only: nothing is lost
        pass


class DeviceFeed:
    """The dataset on the devices, batches gathered there; `chunk` steps per call."""

    def __init__(self, dataset, program, strategy, order: DataOrder, eval_batch_size: int, chunk: int, tails: bool):
        self.dataset, self.program, self.strategy, self.order = dataset, program, strategy, order
        self.eval_batch_size = eval_batch_size
        self.splits = tuple(s for s in ("validation", "test") if getattr(dataset, s) is not None)
        self.arrays, self.eval_fns = {}, {}
        self.many = len(order.seeds) > 1
        self.chunks = _Chunks(strategy, self._train_step, chunk, tails)

    def _batch(self, data, indices):
        """Train batch from indices [batch] (or [seeds, batch]: one batch per seed), sharded like a batch."""
        gather = self.dataset.train.gather
        batch = jax.vmap(gather, in_axes=(None, 0))(data, indices) if self.many else gather(data, indices)
        return self.strategy.constrain_batch(batch, axis=1 if self.many else 0)

    def _train_step(self, state, data, indices):
        return self.program.train_step(state, self._batch(data, indices))

    def _on_device(self, split):
        if split not in self.arrays:
            self.arrays[split] = self.strategy.replicate(getattr(self.dataset, split).device_arrays())
        return self.arrays[split]

    def example_batch(self):
        shapes = jax.eval_shape(lambda: getattr(self.dataset, "train").device_arrays())
        indices = jax.ShapeDtypeStruct(self.order.indices(0, 1)[0].shape, np.int32)
        return jax.eval_shape(lambda d, i: self._batch(d, i), shapes, indices)

    def train(self, state, first_step: int, num_steps: int):
        return self.chunks.run(state, self._on_device("train"), self.order.indices(first_step, num_steps), num_steps)

    def evaluate(self, state, split: str):
        source = getattr(self.dataset, split)
        if split not in self.eval_fns:  # each split cuts its batches its own way
            def eval_steps(state, data, indices, mask):
                def body(_, idx_mask):
                    idx, m = idx_mask
                    batch = self.strategy.constrain_batch({**source.gather(data, idx), "index": idx, "mask": m})
                    return None, self.program.eval_step(state, batch)

                _, sums = lax.scan(body, None, (indices, mask))
                return jax.tree.map(lambda s: s.sum(0), sums)

            self.eval_fns[split] = self.strategy.compile(eval_steps, donate_state=False)
        indices, mask = pipeline.eval_indices(len(source), self.eval_batch_size)
        sums = self.eval_fns[split](state, self._on_device(split), self.strategy.shard(indices, axis=1),
                                    self.strategy.shard(mask, axis=1))
        return self.strategy.fetch(sums)


class HostFeed:
    """Batches read on the host (each process its own part), one compiled step per batch, prefetched."""

    def __init__(self, dataset, program, strategy, order: DataOrder, eval_batch_size: int):
        self.dataset, self.strategy, self.order = dataset, strategy, order
        self.eval_batch_size = eval_batch_size
        self.splits = tuple(s for s in ("validation", "test") if getattr(dataset, s) is not None)
        self.many = len(order.seeds) > 1
        self.train_fn = strategy.compile(program.train_step)
        self.eval_fn = strategy.compile(program.eval_step, donate_state=False)
        self.pool = futures.ThreadPoolExecutor(1)

    def _read(self, source, rows):
        """This process's part of the batch at global indices `rows` ([batch], or [seeds, batch])."""
        rows = pipeline.process_part(rows, jax.process_index(), jax.process_count())
        if rows.ndim == 1:
            return source[rows]
        return jax.tree.map(lambda *parts: np.stack(parts), *[source[r] for r in rows])

    def _batches(self, source, indices, mask=None, axis=0):
        """Device batches for each row of `indices`, the next one read while the current one computes."""

        def load(i):
            batch = self._read(source, indices[i])
            if mask is not None:  # an evaluation batch: which rows are padding, and each row's index in the split
                batch["mask"] = pipeline.process_part(mask[i], jax.process_index(), jax.process_count())
                batch["index"] = pipeline.process_part(indices[i], jax.process_index(), jax.process_count())
            return self.strategy.shard(batch, axis)

        pending = self.pool.submit(load, 0)
        for i in range(len(indices)):
            batch = pending.result()
            if i + 1 < len(indices):
                pending = self.pool.submit(load, i + 1)
            yield batch

    def example_batch(self):
        batch = self._read(self.dataset.train, self.order.indices(0, 1)[0])
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)

    def train(self, state, first_step: int, num_steps: int):
        all_sums = []
        indices = self.order.indices(first_step, num_steps)
        for batch in self._batches(self.dataset.train, indices, axis=1 if self.many else 0):
            state, sums = self.train_fn(state, batch)
            all_sums.append(sums)
        return state, jax.tree.map(lambda *s: np.stack([self.strategy.fetch(x) for x in s]), *all_sums)

    def evaluate(self, state, split: str):
        indices, mask = pipeline.eval_indices(len(getattr(self.dataset, split)), self.eval_batch_size)
        total = None
        for batch in self._batches(getattr(self.dataset, split), indices, mask):
            sums = self.strategy.fetch(self.eval_fn(state, batch))
            total = sums if total is None else jax.tree.map(np.add, total, sums)
        return total


class RolloutFeed:
    """A program that makes its own data: `chunk` steps of `train_step(state, None)` per call; its evaluation,
    if it has one, is `eval_step(state, None)` (split "evaluation")."""

    def __init__(self, program, strategy, chunk: int, tails: bool):
        self.strategy = strategy
        self.splits = ("evaluation",) if program.evaluates else ()
        self.chunks = _Chunks(strategy, lambda state, data, x: program.train_step(state, None), chunk, tails)
        self.eval_fn = strategy.compile(lambda state: program.eval_step(state, None), donate_state=False)

    def example_batch(self):
        return None

    def train(self, state, first_step: int, num_steps: int):
        return self.chunks.run(state, None, None, num_steps)

    def evaluate(self, state, split: str):
        return self.strategy.fetch(self.eval_fn(state))


def create(config, dataset, program, strategy, seeds: tuple[int, ...], steps_per_epoch: Optional[int],
           segment_ends: list[int]):
    """The feed for `program`: a rollout feed without a dataset; else on the devices or from the host, as
    --data_placement says (auto: on the devices when the dataset fits and there is one process).

    Segments end at multiples of `segment_ends` (the cadences, the epoch and the run's length): a scanned call
    runs as many steps as the shortest interval between them (or --steps_per_call)."""
    chunk = min([config.steps_per_call or max(segment_ends)] + segment_ends)
    tails = any(end % chunk for end in segment_ends)
    if dataset is None:
        return RolloutFeed(program, strategy, chunk, tails)
    strategy_lib.check_batch(strategy, config.batch_size)
    shards = strategy.num_shards
    eval_batch_size = max(shards, min(config.eval_batch_size, -(-len(dataset.test) // shards) * shards)
                          // shards * shards)
    order = DataOrder(seeds, len(dataset.train), config.batch_size, steps_per_epoch, program.reads_in_order)
    splits = [s for s in (dataset.train, dataset.validation, dataset.test) if s is not None]
    in_memory = all(hasattr(s, "device_arrays") for s in splits)
    placement = config.data_placement
    if placement == "device" and (not in_memory or jax.process_count() > 1):
        raise UsageError("--data_placement=device needs an in-memory dataset and a single process; "
                         "use --data_placement=host")
    if placement == "auto":
        size = sum(a.nbytes for s in splits for a in jax.tree.leaves(s.device_arrays())) if in_memory else math.inf
        placement = "device" if jax.process_count() == 1 and size <= DEVICE_DATA_LIMIT_BYTES else "host"
    if placement == "device":
        return DeviceFeed(dataset, program, strategy, order, eval_batch_size, chunk, tails)
    return HostFeed(dataset, program, strategy, order, eval_batch_size)

"""The runner: config -> data, model, task, strategy -> train, evaluate, checkpoint, report.

Training runs in *segments* that end wherever something must happen (a log, an
evaluation, a checkpoint, the end of an epoch). The boundaries depend only on the
step numbers, so a resumed run repeats exactly the computation of an
uninterrupted one.
"""

import dataclasses
import json
import math
import os
import time
from concurrent import futures

import jax
import numpy as np

from bmjax import data, models, optim, tasks
from bmjax.config import Config
from bmjax.data import pipeline, preprocess
from bmjax.errors import UsageError
from bmjax.train import runlog, state as state_lib, step as step_lib, strategy as strategy_lib
from bmjax.train.checkpoint import Checkpointer, load_params

DEVICE_DATA_LIMIT_BYTES = 2 << 30
TOKENIZER_FILE = "tokenizer"
_distributed_started = False


class TrainingDiverged(UsageError):
    """The loss became NaN or infinite."""


def run(config: Config, command: str = "bmjax") -> dict:
    """Trains (or resumes, or reports) the run `config` describes; returns result.json's content."""
    config = config.validate()
    _start_jax(config)
    began = time.time()
    primary = jax.process_index() == 0
    workdir = _prepare_workdir(config.workdir)
    dataset = data.load(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                        validation_split=config.validation_split, normalize=config.normalize, seed=config.seed,
                        synthetic_examples=config.synthetic_examples,
                        synthetic_features=config.synthetic_features,
                        synthetic_classes=config.synthetic_classes, block_size=config.block_size,
                        task=config.task, tokenizer=_tokenizer_for(config, workdir), vocab_size=config.vocab_size)
    task = tasks.create(config.task, dataset, mask_rate=config.mask_rate)
    model = models.create(config.model, num_outputs=task.num_outputs,
                          **models.hyperparameters(config.model, config, vocab_size=dataset.info.vocab_size))
    strategy = strategy_lib.create(config.parallel, config.batch_size, config.mesh)
    if config.batch_size % (strategy.num_shards * config.grad_accum_steps):
        raise UsageError(f"--batch_size={config.batch_size} does not split into --grad_accum_steps="
                         f"{config.grad_accum_steps} micro-batches on each of {strategy.num_shards} devices; use a "
                         f"multiple of {strategy.num_shards * config.grad_accum_steps}")

    steps_per_epoch = len(dataset.train) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"--batch_size={config.batch_size} is larger than the {len(dataset.train)} training "
                         f"examples of {config.dataset}; use a smaller batch")
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    example_x = preprocess.to_float(dataset.train[np.arange(1)]["x"])
    tx = optim.create(config, total_steps)
    state = state_lib.create(model, tx, example_x, config.seed)
    flops_per_step = _flops_per_step(task, config, state, dataset.train[np.arange(config.batch_size)])
    logical_axes = state_lib.logical_axes(model, tx, example_x)
    place = lambda s: strategy.place_state(s, logical_axes)
    state = place(state)

    checkpoints = Checkpointer(workdir, config.keep_checkpoints)
    if checkpoints.latest_step() is not None:  # restored straight into this run's shardings
        state = place(checkpoints.restore(strategy.canonical(state)))
    elif config.restore_from:
        canonical = strategy.canonical(state)
        params, model_state, _ = load_params(config.restore_from, canonical.params, canonical.model_state)
        state = place(canonical.replace(params=params, model_state=model_state))
    start_step = int(strategy.fetch(state.step))

    result_path = os.path.join(workdir, "result.json")
    if start_step >= total_steps and os.path.exists(result_path):
        checkpoints.close()
        with open(result_path) as f:
            result = json.load(f)
        if primary:
            print(f"{workdir} has finished {start_step} steps; its result:")
            _print_result(result)
        return result

    if primary:
        from bmjax.cli import flagfile_text
        with open(os.path.join(workdir, "flags.txt"), "w") as f:
            f.write(flagfile_text(config, command))
        if dataset.tokenizer is not None:  # the tokenizer travels with the parameters (resume, --restore_from)
            dataset.tokenizer.save(os.path.join(workdir, TOKENIZER_FILE))

    feed = _make_feed(config, dataset, task, strategy)
    log = runlog.RunLog(workdir, total_steps, start_step, enabled=primary)
    eval_every = config.eval_every_steps or steps_per_epoch
    checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
    intervals = (config.log_every_steps, eval_every, checkpoint_every, steps_per_epoch)
    epoch_seconds, train_seconds = {}, 0.0
    try:
        step = start_step
        while step < total_steps:
            end = min([total_steps] + [(step // i + 1) * i for i in intervals])
            epoch = step // steps_per_epoch
            indices = pipeline.train_indices(config.seed, epoch, len(dataset.train), config.batch_size,
                                             step - epoch * steps_per_epoch, end - step)
            tick = time.time()
            state, sums = feed.train(state, indices)
            seconds = time.time() - tick
            _check_finite(sums["loss"], step, checkpoints, workdir)
            step = end
            log.write(step, "train", task.summarize(_total(sums)), steps_per_second=(len(indices) / seconds),
                      learning_rate=float(optim.schedule(config, total_steps)(step)))
            if step % eval_every == 0 and step < total_steps and dataset.validation is not None:
                log.write(step, "validation", task.summarize(feed.evaluate(state, "validation")))
            seconds = time.time() - tick  # an epoch's time includes its validation, as Keras counts it
            train_seconds += seconds
            epoch_seconds[epoch] = epoch_seconds.get(epoch, 0.0) + seconds
            if step % checkpoint_every == 0 or step == total_steps:
                checkpoints.save(step, strategy.canonical(state))

        result = {"experiment": command, "dataset": config.dataset, "model": config.model,
                  "strategy": strategy.name, "devices": strategy.num_shards, "processes": jax.process_count(),
                  "steps": total_steps, "epochs": total_steps / steps_per_epoch,
                  "parameters": state_lib.parameter_count(strategy.canonical(state).params),
                  "trainable_parameters": optim.trainable_count(config, strategy.canonical(state).params),
                  "flops_per_step": flops_per_step}
        for split in ("validation", "test"):
            if getattr(dataset, split) is not None:
                result[split] = task.summarize(feed.evaluate(state, split), detailed=True)
                log.write(total_steps, split, result[split], echo=False)  # printed with the report below
        result.update(seconds=time.time() - began, train_seconds=train_seconds,
                      epoch_seconds=[epoch_seconds[e] for e in sorted(epoch_seconds)],
                      steps_per_second=(total_steps - start_step) / max(train_seconds, 1e-9),
                      flops_per_second=flops_per_step * (total_steps - start_step) / max(train_seconds, 1e-9),
                      flags=dataclasses.asdict(config))
    finally:
        checkpoints.close()
        log.close()

    if primary:
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        runlog.plot_curves(workdir)
        _print_result(result)
    return result


class _DeviceFeed:
    """The dataset lives on the devices; k steps run in one compiled `lax.scan`, batches gathered there.

    Both feeds' `train` returns the new state and per-step metric sums on the host; `evaluate`, a split's sums.
    """

    def __init__(self, dataset, train_step, eval_step, strategy, eval_batch_size, steps_per_call):
        self.dataset, self.strategy, self.eval_batch_size = dataset, strategy, eval_batch_size
        self.steps_per_call = steps_per_call
        self.arrays, self.eval_fns = {}, {}
        self.eval_step = eval_step
        self.train_fn = strategy.compile(step_lib.scan_train(train_step, dataset.train.gather,
                                                             strategy.constrain_batch))

    def _on_device(self, split):
        if split not in self.arrays:
            self.arrays[split] = self.strategy.replicate(getattr(self.dataset, split).device_arrays())
        return self.arrays[split]

    def train(self, state, indices):
        chunk = self.steps_per_call or len(indices)
        all_sums = []
        for start in range(0, len(indices), chunk):
            state, sums = self.train_fn(state, self._on_device("train"),
                                        self.strategy.shard(indices[start:start + chunk], axis=1))
            all_sums.append(sums)
        return state, jax.tree.map(lambda *s: np.concatenate([self.strategy.fetch(x) for x in s]), *all_sums)

    def evaluate(self, state, split):
        source = getattr(self.dataset, split)
        if split not in self.eval_fns:  # each split cuts its batches its own way
            self.eval_fns[split] = self.strategy.compile(
                step_lib.scan_eval(self.eval_step, source.gather, self.strategy.constrain_batch), donate_state=False)
        indices, mask = pipeline.eval_indices(len(source), self.eval_batch_size)
        sums = self.eval_fns[split](state, self._on_device(split), self.strategy.shard(indices, axis=1),
                                    self.strategy.shard(mask, axis=1))
        return self.strategy.fetch(sums)


class _HostFeed:
    """Batches are read on the host (each process its own part), one compiled step per batch, prefetched."""

    def __init__(self, dataset, train_step, eval_step, strategy, eval_batch_size):
        self.dataset, self.strategy, self.eval_batch_size = dataset, strategy, eval_batch_size
        self.train_fn = strategy.compile(train_step)
        self.eval_fn = strategy.compile(eval_step, donate_state=False)
        self.pool = futures.ThreadPoolExecutor(1)

    def _batches(self, source, indices, mask=None):
        """Device batches for each row of `indices`, the next one read while the current one computes."""

        def load(i):
            rows = pipeline.process_part(indices[i], jax.process_index(), jax.process_count())
            batch = source[rows]
            if mask is not None:
                batch["mask"] = pipeline.process_part(mask[i], jax.process_index(), jax.process_count())
            return self.strategy.shard(batch)

        pending = self.pool.submit(load, 0)
        for i in range(len(indices)):
            batch = pending.result()
            if i + 1 < len(indices):
                pending = self.pool.submit(load, i + 1)
            yield batch

    def train(self, state, indices):
        all_sums = []
        for batch in self._batches(self.dataset.train, indices):
            state, sums = self.train_fn(state, batch)
            all_sums.append(sums)
        return state, jax.tree.map(lambda *s: np.stack([self.strategy.fetch(x) for x in s]), *all_sums)

    def evaluate(self, state, split):
        indices, mask = pipeline.eval_indices(len(getattr(self.dataset, split)), self.eval_batch_size)
        total = None
        for batch in self._batches(getattr(self.dataset, split), indices, mask):
            sums = self.strategy.fetch(self.eval_fn(state, batch))
            total = sums if total is None else jax.tree.map(np.add, total, sums)
        return total


def _make_feed(config, dataset, task, strategy):
    axis_name = strategy.axis_name
    train_step = step_lib.make_train_step(task, l1=config.l1, l2=config.l2, axis_name=axis_name,
                                          grad_accum_steps=config.grad_accum_steps)
    eval_step = step_lib.make_eval_step(task, axis_name=axis_name)
    shards = strategy.num_shards
    eval_batch_size = max(shards, min(config.eval_batch_size, -(-len(dataset.test) // shards) * shards)
                          // shards * shards)
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
        return _DeviceFeed(dataset, train_step, eval_step, strategy, eval_batch_size, config.steps_per_call)
    return _HostFeed(dataset, train_step, eval_step, strategy, eval_batch_size)


def _tokenizer_for(config: Config, workdir: str):
    """The tokenizer a text run reads with: the one this workdir saved (a resumed run), else --tokenizer, else the
    one --restore_from's run saved (fine-tuning keeps its vocabulary)."""
    own, restored = (os.path.join(d, TOKENIZER_FILE) if d else "" for d in (workdir, config.restore_from))
    if os.path.exists(own):
        return own
    return config.tokenizer or (restored if os.path.exists(restored) else None)


def _flops_per_step(task, config: Config, state, batch) -> float:
    """FLOPs of one train step on the global batch, as XLA counts them in the compiled program (forward,
    backward and optimizer update), from shapes alone."""
    step = step_lib.make_train_step(task, l1=config.l1, l2=config.l2, grad_accum_steps=config.grad_accum_steps)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), (state, batch))
    cost = jax.jit(step).lower(*shapes).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def _total(sums):
    """Per-step metric sums [k, ...] added up in float64."""
    return jax.tree.map(lambda s: np.asarray(s, np.float64).sum(0), sums)


def _check_finite(losses, first_step, checkpoints, workdir):
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        kept = checkpoints.latest_step()
        kept = f"the last good checkpoint, step {kept}, is kept in {checkpoints.directory}" if kept is not None \
            else f"no checkpoint had been saved yet in {workdir}"
        raise TrainingDiverged(f"the loss became {losses[bad[0]]} at step {first_step + int(bad[0]) + 1}; "
                               f"training stopped and {kept}; lower --learning_rate or set --clip_grad_norm")


def _start_jax(config: Config) -> None:
    """Simulated devices and multi-host set-up, which must come before JAX touches a device."""
    global _distributed_started
    if config.host_devices:
        try:
            jax.config.update("jax_num_cpu_devices", config.host_devices)
        except RuntimeError:
            if len(jax.devices("cpu")) != config.host_devices:
                raise UsageError(f"--host_devices={config.host_devices} must be set before JAX starts; "
                                 "restart the process (or notebook kernel) and set it first") from None
    if _distributed_started:
        return
    if config.coordinator_address:
        jax.distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
        _distributed_started = True
    elif config.distributed:
        jax.distributed.initialize()
        _distributed_started = True


def _prepare_workdir(workdir: str) -> str:
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write to --workdir={workdir} ({e.strerror}); choose a writable directory") from None
    return workdir


def _print_result(result: dict) -> None:
    for split in ("validation", "test"):
        if split in result:
            summary = result[split]
            numbers = ", ".join(f"{k}={summary[k]:.4f}" for k in runlog.SHOWN if k in summary)
            print(f"{split}: {numbers}")
    if "classification_report" in result.get("test", {}):
        print("\nclassification report (test):\n" + result["test"]["classification_report"])

"""The runner: config -> program, feed, strategy -> train, evaluate, checkpoint, report. One loop for every program.

Training runs in *segments* that end wherever something must happen (a log, an evaluation, a checkpoint, the
end of an epoch). The boundaries depend only on the step numbers, so a resumed run repeats exactly the
computation of an uninterrupted one; the feed runs each segment in calls of a fixed number of steps, so that
the cadence flags never cause a new compilation.
"""

import dataclasses
import json
import os
import signal
import time
from typing import Optional

import jax
import numpy as np
from flax import serialization

from bmjax import console, summary
from bmjax.config import Config
from bmjax.errors import UsageError
from bmjax.train import feeds, runlog, strategy as strategy_lib, workdir as workdir_lib
from bmjax.train.checkpoint import Checkpointer, load_params
from bmjax.optim import Plateau
from bmjax.train.early_stopping import EarlyStopping
from bmjax.train.interrupts import Interrupted, Interrupts
from bmjax.train.program import Context, ManySeeds, parse_members, seed_keys

FINE_TUNED = ("params", "model_state")  # the parts of a state --restore_from carries into a new run
_distributed_started = False
_compilations = {"count": 0, "seconds": 0.0}


class TrainingDiverged(UsageError):
    """A metric became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, from step numbers alone: segments end at every multiple of every interval."""

    total_steps: int
    steps_per_epoch: Optional[int]  # None: a program that makes its own data has no epochs
    log_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: Config, dataset) -> "Schedule":
        """Evaluations and checkpoints each epoch by default, or at each log without epochs."""
        steps_per_epoch, total_steps = feeds.run_length(config, dataset)
        default = steps_per_epoch or config.log_every_steps
        return cls(total_steps, steps_per_epoch, config.log_every_steps, config.eval_every_steps or default,
                   config.checkpoint_every_steps or default)

    @property
    def intervals(self) -> list[int]:
        """Every cadence, the epoch and the run's length: a segment ends at each multiple of each."""
        epoch = [self.steps_per_epoch] if self.steps_per_epoch else []
        return [self.log_every, self.eval_every, self.checkpoint_every] + epoch + [self.total_steps]

    def segments(self, start: int):
        """(first, end) of each segment from step `start` on."""
        while start < self.total_steps:
            end = min((start // i + 1) * i for i in self.intervals)
            yield start, end
            start = end


def run(config: Config, command: str = "bmjax") -> dict:
    """Trains (or resumes, or reports) the run `config` describes; returns result.json's content."""
    config = config.validate()
    _start_jax(config)
    began, compiled = time.time(), dict(_compilations)
    primary = jax.process_index() == 0
    workdir = workdir_lib.prepare(config.workdir)
    workdir_lib.check_same_run(workdir, config)
    strategy = strategy_lib.create(config.parallel, config.mesh)
    plan = config.build_program(Context(workdir, strategy.axis_name, strategy.num_shards, primary))
    members = parse_members(config.members, config.seed)  # runs that differ in optimizer settings too
    if members and config.num_seeds > 1:
        raise UsageError("--members lists each member's seed; leave --num_seeds out")
    seeds = tuple(m["seed"] for m in members) or tuple(config.seed + i for i in range(config.num_seeds))
    settings = tuple({k: v for k, v in m.items() if k != "seed"} for m in members)
    program = plan.program if len(seeds) == 1 else ManySeeds(plan.program, seeds, settings)
    result_path = os.path.join(workdir, "result.json")
    if config.summary:
        return summary.write(plan.program, result_path, primary)
    schedule = Schedule.of(config, plan.dataset)
    feed = feeds.create(config, plan.dataset, program, strategy, seeds, schedule.steps_per_epoch, schedule.intervals)

    state = program.init(seed_keys(seeds, stacked=len(seeds) > 1))
    runlog.announce(config, command, plan, program.describe(state), strategy, schedule, workdir, seeds)
    logical = program.state_axes(state)
    place = lambda s: strategy.place_state(s, logical)
    canonical = lambda s: strategy.canonical(s, logical)
    flops_per_step = _flops_per_step(program, state, feed.example_batch(), strategy.axis_name)
    state = place(state)
    checkpoints = Checkpointer(workdir, config.keep_checkpoints, config.restore_step)
    try:
        if checkpoints.latest_step() is not None:  # restored straight into this run's shardings
            state = place(checkpoints.restore(canonical(state)))
        elif config.restore_from:
            state = place(_fine_tune_start(canonical(state), config.restore_from, len(seeds), config.reinit))
    except BaseException:
        checkpoints.close()  # orbax's reads in flight finish before the process ends
        raise
    start_step = int(np.max(strategy.fetch(_step_of(state))))

    early = None
    if config.early_stopping_patience:
        _needs_validation("early_stopping_patience", feed, plan)
        early = EarlyStopping(config.early_stopping_metric, config.early_stopping_patience,
                              config.early_stopping_min_delta).replay(os.path.join(workdir, runlog.METRICS_FILE),
                                                                      start_step)
    plateau = None
    if config.reduce_on_plateau_patience:
        _needs_validation("reduce_on_plateau_patience", feed, plan)
        plateau = Plateau(config, strategy.fetch)
        if not plateau.states(state):
            raise UsageError("--reduce_on_plateau_patience scales the updates of bmjax.optim.create's optimizer, and "
                             "this program builds its own; leave it out")
    finished = start_step >= schedule.total_steps or (early is not None and early.stopped)
    if 0 < start_step and not finished:
        console.say(f"resuming from step {start_step} of {schedule.total_steps} (checkpoint in "
                    f"{checkpoints.directory})")
    if finished and os.path.exists(result_path):
        checkpoints.close()
        with open(result_path) as f:
            result = json.load(f)
        if primary:
            how = f"stopped early at step {start_step}" if result.get("stopped_early") else \
                f"has finished {start_step} steps"
            print(f"{workdir} {how}; its result:")
            runlog.print_result(result)
        return result
    if primary:
        with open(os.path.join(workdir, "flags.txt"), "w") as f:
            f.write(config.flagfile_text(command))
        workdir_lib.write_record(workdir, config, plan, seeds)

    log = runlog.RunLog(workdir, schedule.total_steps, start_step, enabled=primary,
                        steps_per_epoch=schedule.steps_per_epoch)
    if not finished:
        console.say(f"training steps {start_step + 1}-{schedule.total_steps}; the first call compiles the step")
    try:
        state, times = _train(program, feed, schedule, state, start_step, log, checkpoints, canonical, seeds, early,
                              plateau)
        last_step = int(np.max(strategy.fetch(_step_of(state))))
        result = {"experiment": command, "program": type(plan.program).__name__, "strategy": strategy.name,
                  "devices": strategy.num_shards, "processes": jax.process_count(), "steps": last_step,
                  **program.describe(canonical(state)), "flops_per_step": flops_per_step}
        if early is not None and early.stopped:
            result["stopped_early"] = early.describe(last_step)
            console.say(f"stopped early at step {last_step}: validation {early.metric} was best at step "
                        f"{early.best_step} ({early.best:.4g}) and has not improved in {early.patience} evaluations")
        if plateau is not None:
            result["reduce_on_plateau_scale"] = plateau.scales(state)
        if plan.model_io is not None:
            result["model"] = config.model
        if plan.dataset is not None:
            result.update(dataset=config.dataset, epochs=last_step / schedule.steps_per_epoch)
        logged = early is not None and early.stopped  # its validation at the stop is in the log already
        for split in feed.splits:
            result[split] = program.summarize(feed.evaluate(state, split), detailed=True)
            if not (logged and split == "validation"):
                log.write(last_step, split, result[split], echo=False)  # printed with the report below
        if program.draws:
            log.pictures(last_step, program.pictures(canonical(state), final=True))
        trained, train_seconds = last_step - start_step, sum(times.values())
        result.update(seconds=time.time() - began, train_seconds=train_seconds,
                      steps_per_second=trained / max(train_seconds, 1e-9),
                      flops_per_second=flops_per_step * trained / max(train_seconds, 1e-9),
                      compilations=_compilations["count"] - compiled["count"],
                      compile_seconds=_compilations["seconds"] - compiled["seconds"],
                      flags=dataclasses.asdict(config))
        if schedule.steps_per_epoch:
            result["epoch_seconds"] = [times[e] for e in sorted(times)]
    finally:
        checkpoints.close()
        log.close()

    if primary:
        earlier = summary.kept(result_path).get(summary.KEY)
        if earlier:  # an earlier --summary's tables stay
            result[summary.KEY] = earlier
        with open(result_path, "w") as f:
            json.dump(result, f, indent=2)
        runlog.plot_curves(workdir, title=f"{os.path.basename(workdir)} ({command})")
        runlog.print_result(result)
        console.say(f"\nwrote {result_path}, curves.png and metrics.jsonl in {workdir}; TensorBoard: tensorboard "
                    f"--logdir={os.path.join(workdir, 'tensorboard')}")
    return result


def _needs_validation(flag: str, feed, plan) -> None:
    """A flag that watches the validation split: one line on what to do where the run has none."""
    if "validation" in feed.splits:
        return
    fix = "set --validation_split (e.g. 0.1)" if plan.dataset is not None else \
        "this program makes its own data and has no validation split to watch; leave it unset"
    raise UsageError(f"--{flag} watches the validation split, and this run has none; {fix}")


def _train(program, feed, schedule: Schedule, state, start_step: int, log, checkpoints, canonical, seeds,
           early: Optional[EarlyStopping] = None, plateau: Optional[Plateau] = None):
    """The one loop: each segment's steps, then whatever falls due at its end (a log, an evaluation of every split
    but the test split, a checkpoint; a stop asked for by a signal, or by `early` stopping). Returns the state and
    the seconds spent per epoch (or in all, as epoch 0)."""
    seconds = {}
    if early is not None and early.stopped:  # a resumed run that had stopped early
        return state, seconds
    with Interrupts() as interrupts:
        for first, end in schedule.segments(start_step):
            state, validation = _train_segment(program, feed, schedule, state, first, end, log, checkpoints, seeds,
                                               seconds, canonical)
            stop = interrupts.requested()
            done = early is not None and validation is not None and early.observe(end, validation)
            if plateau is not None and validation is not None:  # before the checkpoint, which holds its state
                state = plateau.observe(state, validation)
            if end % schedule.checkpoint_every == 0 or end == schedule.total_steps or stop or done:
                checkpoints.save(end, canonical(state))
            if done:
                break
            if stop:  # run() closes the checkpoints, waiting for this one to be written
                raise Interrupted(stop, f"stopped by {signal.Signals(stop).name} at step {end}; its checkpoint is "
                                        f"in {checkpoints.directory}: rerun the same command to resume")
    return state, seconds


def _train_segment(program, feed, schedule: Schedule, state, first: int, end: int, log, checkpoints, seeds,
                   seconds: dict, canonical):
    """Steps `first`..`end`, then their log and any evaluation (and pictures) that falls due; adds the time to
    `seconds`. Returns the state and the validation summary, if the validation split was evaluated."""
    tick = time.time()
    state, sums = feed.train(state, first, end - first)
    took = time.time() - tick
    _check_finite(sums, first, seeds, checkpoints)
    log.write(end, "train", program.summarize(_total(sums)), steps_per_second=(end - first) / took,
              **program.schedules(end))
    summaries = {}
    if end % schedule.eval_every == 0 and end < schedule.total_steps:
        for split in feed.splits:
            if split != "test":  # the test split is evaluated once, at the end
                summaries[split] = program.summarize(feed.evaluate(state, split))
                log.write(end, split, summaries[split])
        if program.draws:
            log.pictures(end, program.pictures(canonical(state)))
    epoch = first // schedule.steps_per_epoch if schedule.steps_per_epoch else 0
    seconds[epoch] = seconds.get(epoch, 0.0) + time.time() - tick  # an epoch's validation counts, as in Keras
    return state, summaries.get("validation")


def _fine_tune_start(state, run_dir: str, num_seeds: int, reinit=None):
    """`state` with the parameters (and model state) of another run's newest checkpoint."""
    tree = serialization.to_state_dict(state)
    if not set(FINE_TUNED) <= set(tree):
        raise UsageError(f"--restore_from starts a run from another's {' and '.join(FINE_TUNED)}, and this program's "
                         "state has none; leave --restore_from out")
    params, model_state, _ = load_params(run_dir, tree["params"], tree["model_state"],
                                         seeds=num_seeds if num_seeds > 1 else None, reinit=reinit)
    started = {**tree, "params": params, "model_state": model_state}
    if tree.get("ema_params") is not None:  # the average starts at the parameters it starts from
        started["ema_params"] = jax.tree.map(np.copy, params)
    return serialization.from_state_dict(state, started)


def _step_of(state):
    return state["step"] if isinstance(state, dict) else state.step


def _flops_per_step(program, state, batch, axis_name) -> float:
    """FLOPs of one train step on the global batch, as XLA counts them in the compiled program (forward,
    backward and update), from shapes alone. A pmap program's collectives are bound to a one-device axis."""
    step = program.train_step
    if axis_name:
        step = jax.vmap(step, in_axes=None, out_axes=None, axis_size=1, axis_name=axis_name)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), (state, batch))
    cost = jax.jit(step).lower(*shapes).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def _total(sums):
    """Per-step metric sums [k, ...] added up in float64."""
    return jax.tree.map(lambda s: np.asarray(s, np.float64).sum(0), sums)


def _check_finite(sums, first_step: int, seeds, checkpoints) -> None:
    """TrainingDiverged naming the first step (and seed) whose metric sums hold a NaN or an infinity."""
    found = []  # (index [step, seed?, ...], metric, value)
    for path, values in jax.tree_util.tree_flatten_with_path(sums)[0]:
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            index = tuple(np.argwhere(~np.isfinite(values))[0])
            found.append((index, jax.tree_util.keystr(path, simple=True, separator="/"), values[index]))
    if not found:
        return
    index, name, value = min(found, key=lambda f: f[0][0])
    seed = f" (seed {seeds[index[1]]})" if len(seeds) > 1 else ""
    kept = checkpoints.latest_step()
    kept = f"the last good checkpoint, step {kept}, is kept in {checkpoints.directory}" if kept is not None \
        else f"no checkpoint had been saved yet in {os.path.dirname(checkpoints.directory)}"
    raise TrainingDiverged(f"the {name} became {value} at step {first_step + index[0] + 1}{seed}; training stopped "
                           f"and {kept}; lower --learning_rate or set --clip_grad_norm")


def _count_compilations(event: str, seconds: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _compilations["count"] += 1
        _compilations["seconds"] += seconds


jax.monitoring.register_event_duration_secs_listener(_count_compilations)


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

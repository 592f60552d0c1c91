"""Programs: what one kind of training computes, as pure functions the one loop compiles and drives.

A program's state is any pytree (a `TrainState`, two of them for a GAN, an agent with its environments and
replay buffer) whose `step` field counts its train steps. The loop decides when each function runs, where the
state lives (the strategy), what is saved and when; the program decides what a step does:

    init(rng) -> state                     parameters, optimizer state, anything else a step carries
    state_axes(state) -> PartitionSpecs    the logical axis names of every array, for the mesh strategy
    train_step(state, batch) -> (state, sums)    `batch` is None for a program that makes its own data
    eval_step(state, batch) -> sums        sums that add up over batches and devices
    summarize(sums, detailed) -> numbers   on the host: losses, accuracies, returns
    schedules(step) -> numbers             on the host: learning rates and the like at a step
    pictures(state, final) -> images       on the host, at each evaluation: samples of a generator, say

Metric *sums* add up over steps, batches and devices (the loop adds them in float64), so that a program's
numbers do not depend on how its work was split. Under `pmap` a program reduces across `axis_name` itself
(it is told the name when it is built); under `jit` the compiler does it from the shardings.
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from bmjax.data import Dataset
from bmjax.errors import UsageError
from bmjax.models import ModelIO

# What the members of one program (--members) may differ in: the seed, and the optimizer settings
# bmjax.optim.create holds in its state for them.
MEMBER_SETTINGS = ("seed", "learning_rate", "weight_decay")
INJECTED = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)  # inject_hyperparams' states


@dataclasses.dataclass(frozen=True)
class Context:
    """What building a program may need to know about the run it is built for."""

    workdir: str
    axis_name: Optional[str]  # the pmap axis to reduce across, or None under jit
    num_shards: int  # devices the batch is split over
    primary: bool  # process 0, which alone writes files


class Program:
    """The interface the loop drives; subclasses override what they use (see the module's docstring)."""

    # Row b of each training batch continues row b of the last (a recurrent state carried across windows): the
    # training examples are read in order, split into as many consecutive streams as the batch has rows.
    reads_in_order: bool = False

    def init(self, rng) -> Any:
        raise NotImplementedError

    def state_axes(self, state) -> Any:
        """A PartitionSpec of logical axis names per array of `state` (shapes suffice): replicated by default.
        Name an axis "batch" to split it over the devices like a batch (environments, say)."""
        return jax.tree.map(lambda _: PartitionSpec(), state)

    def train_step(self, state, batch):
        raise NotImplementedError

    def eval_step(self, state, batch):
        raise NotImplementedError(f"{type(self).__name__} has no evaluation")

    def summarize(self, sums, detailed: bool = False) -> dict:
        return {name: float(np.sum(value)) for name, value in sums.items()}

    def schedules(self, step: int) -> dict:
        """Scalars that follow from the step alone (learning rates, an exploration rate, environment steps), logged
        beside the training metrics."""
        return {}

    def pictures(self, state, final: bool = False) -> dict:
        """{name: uint8 image [H, W, C]} of the (whole, host) state, written at each evaluation as
        WORKDIR/pictures/NAME_STEP.png and to TensorBoard; `final` at the end of the run."""
        return {}

    def describe(self, state) -> dict:
        """Facts about the state for result.json (a parameter count, say)."""
        return {}

    @property
    def evaluates(self) -> bool:
        return type(self).eval_step is not Program.eval_step

    @property
    def draws(self) -> bool:
        return type(self).pictures is not Program.pictures


@dataclasses.dataclass
class Plan:
    """What an experiment runs: a program, and the dataset whose batches feed it (None: it makes its own data).

    `model_io` records how `Config.build_model` rebuilds the trained model, for `bmjax.restore`.
    """

    program: Program
    dataset: Optional[Dataset] = None
    model_io: Optional[ModelIO] = None


class ManySeeds(Program):
    """`program` run for several seeds at once under `vmap`: every array of the state gains a leading seed axis.

    Seed i is the run `--seed=seeds[i]` would make: its own initialisation, dropout and data order (train
    batches carry a seed axis; evaluation batches are shared). With `settings`, member i is also the run with the
    optimizer settings `settings[i]` ({"learning_rate": ..., "weight_decay": ...}), which an optimizer built
    with optax.inject_hyperparams holds in its state: each member's value is set there after initialisation.
    """

    def __init__(self, program: Program, seeds: tuple[int, ...], settings: Optional[tuple[dict, ...]] = None):
        self.program, self.seeds = program, tuple(seeds)
        self.settings = tuple(settings) if settings and any(settings) else None

    def init(self, rng):
        # Each seed's state from one compiled initialisation, stacked: under vmap, XLA:CPU can take minutes over
        # (or hang in) what takes a second per seed (a bidirectional LSTM's, say).
        one = jax.jit(self.program.init)
        state = jax.tree.map(lambda *seeds: jnp.stack(seeds), *[one(key) for key in rng])
        return state if self.settings is None else with_hyperparams(state, self.settings)

    def state_axes(self, state):
        one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
        is_spec = lambda x: isinstance(x, PartitionSpec)
        return jax.tree.map(lambda spec: PartitionSpec(None, *spec), self.program.state_axes(one), is_leaf=is_spec)

    def train_step(self, state, batch):
        return jax.vmap(self.program.train_step, in_axes=(0, None if batch is None else 0))(state, batch)

    def eval_step(self, state, batch):
        return jax.vmap(self.program.eval_step, in_axes=(0, None))(state, batch)

    @property
    def reads_in_order(self) -> bool:
        return self.program.reads_in_order

    @property
    def evaluates(self) -> bool:
        return self.program.evaluates

    @property
    def draws(self) -> bool:
        return self.program.draws

    def pictures(self, state, final: bool = False) -> dict:
        label = lambda i: f"member{i}" if self.settings else f"seed{self.seeds[i]}"
        return {f"{name}_{label(i)}": picture for i in range(len(self.seeds))
                for name, picture in self.program.pictures(jax.tree.map(lambda x: x[i], state), final).items()}

    def summarize(self, sums, detailed: bool = False) -> dict:
        """The mean over seeds of every number, its standard deviation as NAME_std, and each seed's summary."""
        each = [self.program.summarize(jax.tree.map(lambda s: s[i], sums), detailed) for i in range(len(self.seeds))]
        summary = {}
        for name, value in each[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values = np.array([s[name] for s in each], np.float64)
                summary[name], summary[f"{name}_std"] = float(values.mean()), float(values.std())
        settings = self.settings or [{}] * len(self.seeds)
        summary["seeds"] = [{"seed": seed, **setting, **s} for seed, setting, s in zip(self.seeds, settings, each)]
        return summary

    def schedules(self, step: int) -> dict:
        scheduled = self.program.schedules(step)
        if self.settings and "learning_rate" in self.settings[0]:  # --learning_rate's schedule is no member's
            scheduled.pop("learning_rate", None)
        return scheduled

    def describe(self, state) -> dict:
        first = jax.jit(lambda state: jax.tree.map(lambda x: x[0], state))(state)  # compiled, as init is
        members = {"members": [{"seed": seed, **setting} for seed, setting in zip(self.seeds, self.settings)]} \
            if self.settings else {}
        return {**self.program.describe(first), "seeds": list(self.seeds), **members}


def with_hyperparams(state, settings: tuple[dict, ...]):
    """`state` (with a leading member axis) with member i's optimizer settings `settings[i]` in every
    optax.inject_hyperparams state it holds."""
    names = sorted(settings[0])
    found = []

    def put(node):
        if not isinstance(node, INJECTED):
            return node
        missing = [n for n in names if n not in node.hyperparams]
        if missing:
            raise UsageError(f"this optimizer holds no {', '.join(missing)} of its own per member; sweep "
                             f"{', '.join(missing)} as separate runs (python -m bmjax.sweep --max_members=1)")
        found.append(node)
        values = {n: jnp.asarray([s[n] for s in settings], jnp.asarray(node.hyperparams[n]).dtype) for n in names}
        return node._replace(hyperparams={**node.hyperparams, **values})

    state = jax.tree.map(put, state, is_leaf=lambda node: isinstance(node, INJECTED))
    if not found:
        raise UsageError(f"this program's optimizer does not hold {', '.join(names)} in its state (it was not "
                         f"built by bmjax.optim.create); sweep {', '.join(names)} as separate runs (python -m "
                         "bmjax.sweep --max_members=1)")
    return state


def parse_members(text: str, default_seed: int = 0) -> tuple[dict, ...]:
    """--members: 'learning_rate=1e-3,seed=0;learning_rate=3e-4,seed=1' -> ({"learning_rate": 0.001, "seed": 0},
    ...); every member names the same settings, and takes `default_seed` where it names no seed."""
    if not text:
        return ()
    members = []
    for part in text.split(";"):
        member = {}
        for pair in filter(None, part.split(",")):
            name, _, value = pair.partition("=")
            if name not in MEMBER_SETTINGS:
                raise UsageError(f"--members: {name!r} is not a setting members may differ in ("
                                 f"{', '.join(MEMBER_SETTINGS)}); run other settings as separate runs")
            try:
                member[name] = int(value) if name == "seed" else float(value)
            except ValueError:
                raise UsageError(f"--members: {pair!r} is not name=number") from None
        members.append({"seed": default_seed, **member})
    if len(members) < 2 or any(set(m) != set(members[0]) for m in members):
        raise UsageError(f"--members={text!r} must list at least two members, each naming the same settings")
    return tuple(members)


def seed_keys(seeds: tuple[int, ...], stacked: bool = False):
    """The initial key of each seed: PRNGKey(seed), stacked when there are several (or `stacked`)."""
    if len(seeds) == 1 and not stacked:
        return jax.random.PRNGKey(seeds[0])
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])

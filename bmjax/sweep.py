"""Hyperparameter search over any experiment: a grid, random draws, or both, ranked by a validation metric.

    python -m bmjax.sweep experiments.mnist_mlp --workdir=runs/sweep --grid=learning_rate:1e-4,3e-4,1e-3 \\
        --grid=seed:0,1,2 [--random=weight_decay:log:1e-5:1e-2 --trials=8 --search_seed=0] [--metric=accuracy] \\
        [any flag of the experiment, e.g. --train_steps=500]

Trials that differ only in the seed, the learning rate and the weight decay train together in one compiled
program under vmap (`--members`: the optimizer holds each member's values in its state); trials that differ in
anything else (a width, a batch size, the dropout rate, which the models hold as constants) form separate groups,
each a run of its own: WORKDIR/group_NNN. Each trial's numbers are in WORKDIR/trial_NNN/result.json; the ranking in
WORKDIR/results.csv and results.md, the metric against each swept setting in WORKDIR/sweep.png. Rerunning the same
command skips finished groups and resumes the others from their checkpoints.
"""

import csv
import dataclasses
import importlib
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import typing
from typing import Optional

import numpy as np

from bmjax.config import Config, field_metadata
from bmjax.errors import UsageError, exit_on_usage_error
from bmjax.train.early_stopping import LOWER_IS_BETTER
from bmjax.train.program import MEMBER_SETTINGS

SWEEP_FILE, TABLE_CSV, TABLE_MD, PLOT = "sweep.json", "results.csv", "results.md", "sweep.png"
NOT_SWEPT = ("workdir", "members", "num_seeds", "restore_step", "extend")  # set per group, or not a setting
USAGE = ("usage: python -m bmjax.sweep EXPERIMENT --workdir=DIR --grid=NAME:V1,V2,... [--random=NAME:[log:]LOW:HIGH "
         "--trials=N --search_seed=S] [--metric=NAME] [--max_members=N] [experiment flags ...]")


@dataclasses.dataclass
class Sweep:
    experiment: str  # a module name, or a .py file
    workdir: str
    grid: dict  # name -> values
    random: dict  # name -> (log, low, high)
    trials: int
    search_seed: int
    metric: str
    max_members: int  # the most trials one program trains (0: no limit)
    passed: list  # the experiment's own flags


def parse_args(argv: list[str]) -> Sweep:
    """The sweep's own flags; everything else is the experiment's."""
    experiment, own, passed = None, {"grid": [], "random": []}, []
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("-"):
            if experiment is not None:
                raise UsageError(f"unexpected argument {arg!r}; {USAGE}")
            experiment = arg
        elif name in ("grid", "random"):
            own[name].append(value)
        elif name in ("workdir", "trials", "search_seed", "metric", "max_members"):
            own[name] = value
        elif name in ("help", "h"):
            print(__doc__.strip() + "\n\n" + USAGE)
            sys.exit(0)
        else:
            passed.append(arg)
    if experiment is None or not own.get("workdir"):
        raise UsageError(f"name an experiment and a --workdir; {USAGE}")
    config_cls = experiment_config(experiment)
    grid = dict(parse_grid(config_cls, text) for text in own["grid"])
    random = dict(parse_random(config_cls, text) for text in own["random"])
    if not grid and not random:
        raise UsageError(f"nothing to sweep: give --grid=NAME:V1,V2 or --random=NAME:LOW:HIGH; {USAGE}")
    both = set(grid) & set(random)
    if both:
        raise UsageError(f"{', '.join(sorted(both))} is both in --grid and --random; choose one")
    names = [a.removeprefix("--").partition("=")[0] for a in passed]
    given = set(names) | {n.removeprefix("no") for n in names}
    clash = sorted((set(grid) | set(random)) & given)
    if clash:
        raise UsageError(f"--{clash[0]} is swept; leave it out of the experiment's flags")
    return Sweep(experiment, own["workdir"], grid, random, _int(own, "trials", 10 if random else 1),
                 _int(own, "search_seed", 0), own.get("metric", "loss"), _int(own, "max_members", 0), passed)


def _int(own: dict, name: str, default: int) -> int:
    try:
        value = int(own.get(name, default))
    except ValueError:
        raise UsageError(f"--{name}={own[name]} is not an integer") from None
    if value < 0 or (name == "trials" and value == 0):
        raise UsageError(f"--{name} must be positive, got {value}")
    return value


def experiment_config(experiment: str) -> type:
    """The Config subclass an experiment (module or file) declares: the most derived one defined there."""
    try:
        if experiment.endswith(".py"):
            if not os.path.isfile(experiment):
                raise FileNotFoundError(experiment)
            spec = importlib.util.spec_from_file_location(f"sweep_{os.path.basename(experiment)[:-3]}", experiment)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd()) if os.getcwd() not in sys.path else None
            module = importlib.import_module(experiment)
    except (ImportError, FileNotFoundError) as e:
        raise UsageError(f"no experiment {experiment!r} ({type(e).__name__}: {e}); name a module such as "
                         "experiments.mnist_mlp, or a .py file") from None
    own = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Config)
           and v.__module__ == module.__name__]
    own = [c for c in own if not any(o is not c and issubclass(o, c) for o in own)]
    if len(own) != 1:
        raise UsageError(f"{experiment} declares {'no' if not own else 'more than one'} experiment Config; a sweep "
                         "runs a file that calls bmjax.cli.main(ItsConfig)")
    return own[0]


def _field(config_cls: type, name: str):
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if name not in fields or name in NOT_SWEPT:
        raise UsageError(f"{name!r} is not a setting of {config_cls.__name__} a sweep can vary; see python -m "
                         "EXPERIMENT --help for its flags")
    kind = typing.get_type_hints(config_cls)[name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind


def parse_value(config_cls: type, name: str, text: str):
    """One value of setting `name` from text, of the field's type (a tuple as 64/64)."""
    kind = _field(config_cls, name)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value = text.lower() in ("true", "1")
        elif typing.get_origin(kind) is tuple:
            value = tuple(int(v) for v in text.split("/"))
        else:
            value = kind(text)
    except ValueError:
        what = "integers joined by /, e.g. 64/64" if typing.get_origin(kind) is tuple else getattr(kind, "__name__", kind)
        raise UsageError(f"--grid: {name}={text!r} is not a {what}") from None
    choices = field_metadata(config_cls, name)["choices"]
    if choices and value not in choices:
        raise UsageError(f"--grid: {name}={text} is not one of: {', '.join(choices)}")
    return value


def parse_grid(config_cls: type, text: str):
    name, _, values = text.partition(":")
    if not values:
        raise UsageError(f"--grid={text} is not NAME:V1,V2,...; e.g. --grid=learning_rate:1e-4,1e-3")
    return name, [parse_value(config_cls, name, v) for v in values.split(",")]


def parse_random(config_cls: type, text: str):
    """NAME:LOW:HIGH (uniform; integers for an integer setting) or NAME:log:LOW:HIGH (log-uniform)."""
    name, *parts = text.split(":")
    log = parts[:1] == ["log"]
    parts = parts[1:] if log else parts
    kind = _field(config_cls, name)
    try:
        if len(parts) != 2 or kind not in (int, float):
            raise ValueError
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(f"--random={text} is not NAME:[log:]LOW:HIGH over a numeric setting; e.g. "
                         "--random=learning_rate:log:1e-4:1e-2") from None
    if not low < high or (log and low <= 0):
        raise UsageError(f"--random={text}: need LOW < HIGH (and LOW > 0 for log)")
    return name, (log, low, high, kind is int)


def trials(sweep: Sweep) -> list[dict]:
    """Every trial's settings: each grid point with each of --trials random draws (reproducible from
    --search_seed)."""
    points = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())]
    if not sweep.random:
        return points
    rng = np.random.default_rng(sweep.search_seed)
    draws = []
    for _ in range(sweep.trials):
        draw = {}
        for name, (log, low, high, integer) in sweep.random.items():
            if integer:
                draw[name] = int(rng.integers(int(math.ceil(low)), int(math.floor(high)) + 1))
            else:
                value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
                draw[name] = float(f"{value:.6g}")  # exact in a flag and in --members
        draws.append(draw)
    return [{**draw, **point} for draw in draws for point in points]


def groups(settings: list[dict], max_members: int = 0) -> list[list[int]]:
    """Trial indices that train together: equal in everything but the member settings (vmapped)."""
    keyed = {}
    for i, trial in enumerate(settings):
        key = json.dumps({k: v for k, v in trial.items() if k not in MEMBER_SETTINGS}, sort_keys=True)
        keyed.setdefault(key, []).append(i)
    size = max_members or max(map(len, keyed.values()))
    return [members[j:j + size] for members in keyed.values() for j in range(0, len(members), size)]


def _flag(name: str, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={','.join(map(str, value)) if isinstance(value, tuple) else value}"


def group_command(sweep: Sweep, settings: list[dict], workdir: str) -> list[str]:
    """The experiment's command line that trains these trials (together when there are several)."""
    command = [sys.executable] + ([sweep.experiment] if sweep.experiment.endswith(".py") else ["-m", sweep.experiment])
    shared = {k: v for k, v in settings[0].items() if k not in MEMBER_SETTINGS or len(settings) == 1}
    command += [f"--workdir={workdir}", *sweep.passed, *(_flag(k, v) for k, v in shared.items())]
    if len(settings) > 1:
        members = [",".join(f"{k}={v!r}" for k, v in s.items() if k in MEMBER_SETTINGS) for s in settings]
        command.append(f"--members={';'.join(members)}")
    return command


def trial_results(result: dict, members: list[int], settings: list[dict], run_dir: str) -> list[dict]:
    """Each trial's numbers from its group's result.json (one member's when it trained with others)."""
    out = []
    for position, trial in enumerate(members):
        record = {"trial": trial, "settings": settings[trial], "run": run_dir,
                  "member": position if len(members) > 1 else None, "steps": result.get("steps")}
        for split in ("validation", "test"):
            if split in result:
                summary = result[split]["seeds"][position] if len(members) > 1 else result[split]
                record[split] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        out.append(record)
    return out


def rank(records: list[dict], metric: str) -> list[dict]:
    """Best first by the validation metric (lower first for losses and errors)."""
    if any(metric not in r.get("validation", {}) for r in records):
        names = sorted(next((r.get("validation", {}) for r in records), {}))
        names = ", ".join(names) or "none: set --validation_split"
        raise UsageError(f"--metric={metric} is not among the trials' validation metrics ({names}); choose one")
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return sorted(records, key=lambda r: (sign * r["validation"][metric], r["trial"]))


def write_table(workdir: str, ranked: list[dict], metric: str, swept: list[str]) -> str:
    """results.csv and results.md (ranked), returning the Markdown."""
    extra = [m for m in ("loss", "accuracy") if m != metric and all(m in r["validation"] for r in ranked)]
    tests = [m for m in [metric] + extra if all(m in r.get("test", {}) for r in ranked)]
    header = ["rank", "trial"] + swept + [f"validation_{m}" for m in [metric] + extra] + [f"test_{m}" for m in tests] + \
        ["run"]
    rows = [[i + 1, f"trial_{r['trial']:03d}"] + [r["settings"][s] for s in swept] +
            [r["validation"][m] for m in [metric] + extra] + [r["test"][m] for m in tests] +
            [os.path.relpath(r["run"], workdir)] for i, r in enumerate(ranked)]
    with open(os.path.join(workdir, TABLE_CSV), "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else "/".join(map(str, v)) if isinstance(v, (list, tuple)) \
        else str(v)
    markdown = "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] +
                         ["| " + " | ".join(map(cell, row)) + " |" for row in rows]) + "\n"
    with open(os.path.join(workdir, TABLE_MD), "w") as f:
        f.write(markdown)
    return markdown


def plot(workdir: str, records: list[dict], metric: str, sweep: Sweep) -> None:
    """The validation metric against each numeric swept setting but the seed (log axes where the values span
    decades)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in list(sweep.grid) + list(sweep.random)
             if n != "seed" and all(isinstance(r["settings"][n], (int, float)) and not isinstance(r["settings"][n], bool)
                    for r in records)]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        x = np.array([r["settings"][name] for r in records], float)
        y = np.array([r["validation"][metric] for r in records], float)
        ax.scatter(x, y, alpha=0.75)
        values = np.unique(x)
        if len(values) < len(x):  # repeated values (other settings vary): their mean, joined
            ax.plot(values, [y[x == v].mean() for v in values], color="k", lw=1, label="mean")
            ax.legend()
        if values.min() > 0 and values.max() / values.min() >= 10 or sweep.random.get(name, (False,))[0]:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.experiment}: {len(records)} trials")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, PLOT), dpi=110)
    plt.close(fig)


def run(sweep: Sweep, stdout=None) -> list[dict]:
    """Runs (or resumes) every group of the sweep; returns the trials' records, ranked."""
    os.makedirs(sweep.workdir, exist_ok=True)
    settings = trials(sweep)
    plan = groups(settings, sweep.max_members)
    manifest = {"experiment": sweep.experiment, "flags": sweep.passed, "trials": settings, "groups": plan}
    path = os.path.join(sweep.workdir, SWEEP_FILE)
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != json.loads(json.dumps(manifest)):
                raise UsageError(f"{sweep.workdir} holds another sweep (its {SWEEP_FILE} lists other trials or "
                                 "flags); give a new --workdir, or rerun that sweep's command to resume it")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    records = []
    for g, members in enumerate(plan):
        run_dir = os.path.join(sweep.workdir, f"group_{g:03d}")
        result_path = os.path.join(run_dir, "result.json")
        together = f"{len(members)} trials in one program" if len(members) > 1 else "1 trial"
        if os.path.exists(result_path):
            print(f"group {g + 1}/{len(plan)} ({together}) has finished: {run_dir}", flush=True)
        else:
            print(f"group {g + 1}/{len(plan)} ({together}): {run_dir}", flush=True)
            done = subprocess.run(group_command(sweep, [settings[i] for i in members], run_dir), stdout=stdout)
            if done.returncode:
                raise UsageError(f"group_{g:03d} ({run_dir}) ended with exit status {done.returncode} (its output "
                                 "is above); fix what it says, then rerun this command to resume")
        with open(result_path) as f:
            result = json.load(f)
        for record in trial_results(result, members, settings, run_dir):
            trial_dir = os.path.join(sweep.workdir, f"trial_{record['trial']:03d}")
            os.makedirs(trial_dir, exist_ok=True)
            with open(os.path.join(trial_dir, "result.json"), "w") as f:
                json.dump(record, f, indent=2)
            records.append(record)
    ranked = rank(records, sweep.metric)
    swept = list(sweep.grid) + list(sweep.random)
    print(f"\n{len(ranked)} trials ranked by validation {sweep.metric}:\n\n"
          + write_table(sweep.workdir, ranked, sweep.metric, swept))
    plot(sweep.workdir, ranked, sweep.metric, sweep)
    print(f"wrote {TABLE_CSV}, {TABLE_MD}, {PLOT} and trial_NNN/result.json in {sweep.workdir}")
    return ranked


@exit_on_usage_error
def main(argv: Optional[list[str]] = None) -> None:
    run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()

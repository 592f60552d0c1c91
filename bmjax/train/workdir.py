"""A run's folder: made writable, checked against the settings it was made with, and its record for
bmjax.restore (run.json: the experiment's config class and values, and how its model is built)."""

import dataclasses
import json
import os
import sys

import jax

from bmjax.config import Config, field_metadata
from bmjax.errors import UsageError

RUN_FILE = "run.json"


def prepare(workdir: str) -> str:
    """`workdir` as an absolute path, made if need be; a UsageError unless this process can write there."""
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


def check_same_run(workdir: str, config: Config) -> None:
    """UsageError unless `config` trains what the run saved in `workdir` trained, up to the settings that do not
    change training (cadence, paths, devices) and, with --extend, its length."""
    path, checkpoints = os.path.join(workdir, RUN_FILE), os.path.join(workdir, "checkpoints")
    saved_any = os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))
    if not saved_any or not os.path.exists(path):
        return
    with open(path) as f:
        record = json.load(f)
    kind = f"{type(config).__module__}:{type(config).__qualname__}"
    if record["config_class"].rpartition(":")[2] != type(config).__qualname__:
        raise UsageError(f"--workdir={workdir} holds a run of {record['config_class']}, not of {kind}; use a new "
                         "--workdir")
    saved, ours = record["config"], json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists
    changed = [name for name in ours if field_metadata(type(config), name)["trains"]
               and name in saved and saved[name] != ours[name]]
    if config.extend:
        changed = [name for name in changed if name not in ("train_steps", "epochs")]
    if changed:
        differences = ", ".join(f"--{name}={flag_value(saved[name])} there, {flag_value(ours[name])} here"
                                for name in changed)
        longer = " (to change its length, add --extend)" if set(changed) <= {"train_steps", "epochs"} else ""
        raise UsageError(f"--workdir={workdir} holds a run with other settings: {differences}; use a new --workdir, "
                         f"or the run's own flags (--flagfile={os.path.join(workdir, 'flags.txt')}){longer}")


def flag_value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def write_record(workdir: str, config: Config, plan, seeds) -> None:
    """run.json: the experiment's config class and values, and how its model is built, for bmjax.restore."""
    cls = type(config)
    module = cls.__module__
    main = sys.modules.get("__main__")
    if module == "__main__" and main is not None:  # python -m experiments.NAME, or python path/to/file.py
        spec, path = getattr(main, "__spec__", None), getattr(main, "__file__", None)  # (a notebook has neither)
        module = spec.name if spec is not None else os.path.abspath(path) if path else module
    record = {"config_class": f"{module}:{cls.__qualname__}", "config": dataclasses.asdict(config),
              "program": type(plan.program).__name__, "seeds": list(seeds),
              "model_io": plan.model_io.to_json() if plan.model_io is not None else None,
              "dataset_info": dataclasses.asdict(plan.dataset.info) if plan.dataset is not None else None}
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
        json.dump(record, f, indent=2)

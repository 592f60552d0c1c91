"""Command line: one absl flag per field of an experiment's Config, then a run.

Bad flags end in one `error:` line and exit status 2; `--help` lists the experiment's flags by group.
"""

import dataclasses
import os
import sys
import textwrap
import typing
from typing import Callable, Optional, Sequence

from absl import app, flags, logging

import bmjax
from bmjax import models
from bmjax.config import Config, field_metadata
from bmjax.errors import UsageError, exit_on_usage_error

# --help's groups of the fields every experiment shares; an experiment's own fields come first.
GROUPS = {
    "run": ("workdir", "seed", "num_seeds", "train_steps", "epochs", "log_every_steps", "eval_every_steps",
            "checkpoint_every_steps", "keep_checkpoints", "restore_from", "reinit", "restore_step", "extend",
            "early_stopping_patience", "early_stopping_metric", "early_stopping_min_delta",
            "reduce_on_plateau_patience", "reduce_on_plateau_factor", "reduce_on_plateau_cooldown",
            "reduce_on_plateau_metric", "reduce_on_plateau_rtol", "reduce_on_plateau_min_scale", "members",
            "summary"),
    "data": ("dataset", "data_dir", "manual_dir", "validation_split", "normalize", "image_size", "data_workers",
             "block_size", "tokenizer", "vocab_size", "mask_rate", "synthetic_examples", "synthetic_features",
             "synthetic_classes"),
    "augmentation": ("augment", "crop_padding", "mixup_alpha", "cutmix_alpha", "label_smoothing"),
    "model": ("model", "task", "hidden_sizes", "activation", "dropout", "conv_features", "kernel_size",
              "conv_padding", "dtype", "remat"),
    "optimisation": ("batch_size", "grad_accum_steps", "eval_batch_size", "optimizer", "learning_rate",
                     "lr_schedule", "warmup_steps", "min_learning_rate", "lr_decay_steps", "lr_decay_factor",
                     "momentum", "nesterov", "b2", "optimizer_eps", "weight_decay", "clip_grad_norm", "ema_decay",
                     "l1", "l2", "freeze"),
    "compression": ("prune", "prune_sparsity", "prune_start_step", "prune_end_step", "prune_every_steps",
                    "quantize"),
    "devices": ("parallel", "mesh", "host_devices", "data_placement", "steps_per_call", "coordinator_address",
                "num_processes", "process_id", "distributed"),
}
HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-?")


def define_flags(config_cls: type[Config], flag_values=flags.FLAGS) -> None:
    """Defines `--<field>` for each field of `config_cls`, with the field's default and help."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = _unwrap_optional(hints[f.name])
        meta = field_metadata(config_cls, f.name)
        help_text, choices = meta["help"], meta["choices"]
        if f.name == "model":
            help_text = f"{help_text} Registered: {', '.join(models.names())}."
        args = dict(name=f.name, default=f.default, help=help_text, flag_values=flag_values)
        if choices:
            flags.DEFINE_enum(enum_values=list(choices), **args)
        elif kind is bool:
            flags.DEFINE_bool(**args)
        elif kind is int:
            flags.DEFINE_integer(**args)
        elif kind is float:
            flags.DEFINE_float(**args)
        elif kind is str:
            flags.DEFINE_string(**args)
        elif typing.get_origin(kind) is tuple:
            args["default"] = [str(v) for v in f.default]
            flags.DEFINE_list(**args)
        else:
            raise TypeError(f"no flag type for {config_cls.__name__}.{f.name}: {kind}")


def config_from_flags(config_cls: type[Config], flag_values=flags.FLAGS) -> Config:
    """Reads the parsed flags into a validated config."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in dataclasses.fields(config_cls):
        value = flag_values[f.name].value
        if typing.get_origin(_unwrap_optional(hints[f.name])) is tuple:
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise UsageError(f"--{f.name} takes comma-separated integers, got {','.join(value)!r}") from None
        values[f.name] = value
    return config_cls(**values).validate()


def main(config_cls: type[Config], argv: Optional[Sequence[str]] = None, *,
         presets: Optional[dict[str, dict]] = None, entry: Optional[Callable] = None) -> None:
    """Entry point of `python -m experiments.NAME`: flags -> config -> `entry(config, command)`.

    `entry` defaults to `bmjax.run`. With `presets`, `--preset=NAME` sets the defaults of a named group
    of flags; flags given explicitly still win.
    """
    define_flags(config_cls)
    if presets:
        flags.DEFINE_enum("preset", None, list(presets), "A named group of defaults: "
                          + "; ".join(f"{name}: {_describe(values)}" for name, values in presets.items()))
        chosen = _preset_in(argv or sys.argv, presets)
        for name, value in presets.get(chosen, {}).items():
            flags.FLAGS.set_default(name, [str(v) for v in value] if isinstance(value, tuple) else value)
    main_module = sys.modules["__main__"]
    command = main_module.__spec__.name if main_module.__spec__ else os.path.abspath(sys.argv[0])

    def parse(argv):
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            print(help_text(config_cls, command, main_module.__doc__, presets is not None))
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            message = " ".join(str(e).split()).removeprefix("ERROR:: ")  # absl's, with its "Did you mean" hint
            print(f"error: {message} (--help lists the flags)", file=sys.stderr, flush=True)
            sys.exit(2)

    @exit_on_usage_error
    def run(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # libraries' INFO chatter; -v 0 brings it back
        if len(argv) > 1:
            raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; every setting is a --flag "
                             "(see --help)")
        (entry or bmjax.run)(config_from_flags(config_cls), command=command)

    app.run(run, argv=argv, flags_parser=parse)


def help_text(config_cls: type[Config], command: str, doc: Optional[str], has_presets: bool = False) -> str:
    """--help: usage, the experiment's description, then its flags by group (its own first), with defaults."""
    run = f"python {command}" if command.endswith(".py") else f"python -m {command}"
    lines = [f"usage: {run} --workdir=DIR [--flag=value ...]"]
    if doc:
        lines += ["", doc.strip().split("\n\n")[0]]
    shared = {name for names in GROUPS.values() for name in names}
    own = [f.name for f in dataclasses.fields(config_cls) if f.name not in shared] + (["preset"] if has_presets else [])
    groups = {f"{config_cls.__name__}'s own": own, **GROUPS}
    for group, names in groups.items():
        if names:
            lines += ["", f"{group}:"] + [_describe_flag(flags.FLAGS[name]) for name in names if name in flags.FLAGS]
    lines += ["", "--flagfile=FILE reads flags from a file (a run's flags.txt); --helpfull lists absl's own flags too."]
    return "\n".join(lines)


def _describe_flag(flag) -> str:
    default = ",".join(flag.default) if isinstance(flag.default, list) else flag.default
    if isinstance(default, str) and not default.isprintable():
        default = repr(default)
    head = f"  --{flag.name}" + ("" if default is None else f" (default: {default})")
    return head + "\n" + textwrap.fill(flag.help, 112, initial_indent=" " * 6, subsequent_indent=" " * 6)


def _unwrap_optional(kind):
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind


def _preset_in(argv: Sequence[str], presets: dict) -> Optional[str]:
    """The value of --preset in the command line (before absl parses it, so that it can set defaults)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _describe(values: dict) -> str:
    return " ".join(f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in values.items())

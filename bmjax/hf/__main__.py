"""python -m bmjax.hf convert SOURCE --workdir=OUT: a Hugging Face model folder as a bmjax run folder.

OUT then holds an orbax checkpoint (OUT/checkpoints/0) with the imported parameters and a flag file of the
model's architecture, so that an experiment fine-tunes from it:

    python -m bmjax.hf convert path/to/gpt2 --workdir=runs/gpt2 --experiment=experiments.gpt_shakespeare_char
    python -m experiments.gpt_shakespeare_char --flagfile=runs/gpt2/model_flags.txt --restore_from=runs/gpt2 ...

The architecture comes from config.json's `model_type` (gpt2, bert, t5, resnet, vit). `--experiment` names the
experiment that will fine-tune (a module, or module:ConfigClass): the flag file then holds only the flags it
defines. A ResNet of the zoo's shape (microsoft/resnet-18 .. resnet-152) becomes `--model=resnet18` ..
`--model=resnet152` of experiments.image_classification, its BatchNorm statistics the run's model state; a
ViT's flags are those of experiments.vit_mnist.
"""

import dataclasses
import importlib
import json
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags, logging

from bmjax.errors import UsageError, exit_on_usage_error
from bmjax.hf import load_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder to write the bmjax run folder into (must hold no checkpoint).")
_EXPERIMENT = flags.DEFINE_string("experiment", None, "The experiment that will fine-tune the model (a module such as "
                                  "experiments.gpt_shakespeare_char, or module:ConfigClass): only its flags are "
                                  "written.")

# model_type -> (importer module, importer function)
ARCHITECTURES = {"gpt2": ("bmjax.hf.gpt2", "import_gpt2"), "bert": ("bmjax.hf.bert", "import_bert"),
                 "t5": ("bmjax.hf.t5", "import_t5"), "resnet": ("bmjax.hf.resnet", "import_resnet"),
                 "vit": ("bmjax.hf.vit", "import_vit")}
# The importers that return Flax variables ({"params": ..., "batch_stats": ...}) rather than params alone.
WITH_MODEL_STATE = {"resnet"}
# model_type -> (module, its function giving the zoo's name (`--model`) of an imported architecture or None,
# its tuple of the model fields that name stands for).
ZOO_NAMES = {"resnet": ("bmjax.hf.resnet", "zoo_model", "ZOO_FIELDS")}
# Model fields that are not architecture: how a run computes, not what the checkpoint holds.
NOT_ARCHITECTURE = {"parent", "name", "decode", "dtype", "param_dtype", "dropout", "remat", "vocab_size",
                    "num_outputs"}
FLAGS_FILE = "model_flags.txt"


def import_model(source: str) -> tuple[nn.Module, dict, dict]:
    """(bmjax model, params, model state) for the Hugging Face model folder `source`, by its config.json's
    model_type. The model state holds the collections other than params (a ResNet's "batch_stats"), or is {}."""
    model_type = load_config(source).get("model_type")
    if model_type not in ARCHITECTURES:
        raise UsageError(f"{source}: config.json's model_type is {model_type!r}; bmjax imports "
                         f"{', '.join(ARCHITECTURES)}")
    module_name, function_name = ARCHITECTURES[model_type]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise UsageError(f"this bmjax has no {model_type} importer ({module_name}); update bmjax") from None
    model, imported = getattr(module, function_name)(source)
    if model_type not in WITH_MODEL_STATE:
        return model, imported, {}
    return model, imported["params"], {k: v for k, v in imported.items() if k != "params"}


def zoo_name(model_type: str, model: nn.Module) -> tuple[Optional[str], tuple[str, ...]]:
    """(the zoo's name for `model`'s architecture, as `--model` takes it, or None; the fields it stands for)."""
    if model_type not in ZOO_NAMES:
        return None, ()
    module_name, function_name, fields_name = ZOO_NAMES[model_type]
    module = importlib.import_module(module_name)
    return getattr(module, function_name)(model), tuple(getattr(module, fields_name))


def model_flags(model: nn.Module, experiment: Optional[str] = None,
                zoo: tuple[Optional[str], tuple[str, ...]] = (None, ())) -> tuple[list[str], list[str]]:
    """(flags that build `model`'s architecture, warnings about fields those flags cannot set).

    `experiment` (a module, or "module:ConfigClass") limits the flags to the fields its config defines; a field
    it lacks is only worth a warning when the model needs a value other than the model class's default.
    `zoo`: (the zoo's name for the architecture, or None; the fields that name stands for), as `zoo_name`
    gives it: a name becomes `--model=NAME` in place of those fields.
    """
    known = None
    if experiment:
        known = {f.name for f in dataclasses.fields(_experiment_config(experiment))}
    name_of_zoo, zoo_fields = zoo
    defaults = {f.name: f.default for f in dataclasses.fields(model)}
    flag_list, warnings = [], []
    if name_of_zoo:
        if known is None or "model" in known:
            flag_list.append(f"--model={name_of_zoo}")
        else:
            warnings.append(f"model={name_of_zoo} ({experiment} has no --model flag)")
    elif zoo_fields and known is not None and "model" in known:
        warnings.append(f"this {type(model).__name__} is none of the zoo's named networks, which {experiment}'s "
                        "--model builds: fine-tune it from Python")
    for name, default in defaults.items():
        value = getattr(model, name)
        if name in NOT_ARCHITECTURE or value is None or (name_of_zoo and name in zoo_fields):
            continue
        if known is None or name in known:
            flag_list.append(f"--{name}={_flag_value(value)}")
        elif value != default:
            warnings.append(f"{name}={_flag_value(value)} (bmjax's default is {_flag_value(default)}; {experiment} "
                            "has no flag for it)")
    return flag_list, warnings


def _flag_value(value) -> str:
    """A field's value as a flag writes it: booleans lowercase, sequences comma-separated (as bmjax's configs)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(_flag_value(v) for v in value)
    return str(value)


def _experiment_config(experiment: str) -> type:
    """The Config class of `experiment`: "module:Class", or the one Config subclass a module defines."""
    from bmjax.config import Config

    module_name, _, class_name = experiment.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"--experiment={experiment} cannot be imported ({e}); name a module such as "
                         "experiments.gpt_shakespeare_char") from None
    if class_name:
        return getattr(module, class_name)
    found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Config)
             and c.__module__ == module.__name__]
    if len(found) != 1:
        raise UsageError(f"--experiment={experiment} defines {len(found)} configs; name one as module:ConfigClass")
    return found[0]


def convert(source: str, workdir: str, experiment: Optional[str] = None) -> dict:
    """Writes the imported model into `workdir` as a bmjax run folder; returns what it wrote."""
    from bmjax.train.checkpoint import Checkpointer

    source = os.fspath(source)
    if not os.path.isdir(source):
        raise UsageError(f"{source} is not a folder; pass a Hugging Face model folder (config.json and weights)")
    checkpoints = os.path.join(os.path.abspath(workdir), "checkpoints")
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        raise UsageError(f"{checkpoints} already holds checkpoints; convert into a new --workdir")
    model, params, model_state = import_model(source)
    model_type = load_config(source)["model_type"]
    flag_list, warnings = model_flags(model, experiment, zoo_name(model_type, model))
    # A run's state as --restore_from reads it; a converted run has no optimizer state yet.
    state = {"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.asarray, params), "opt_state": {},
             "model_state": jax.tree.map(jnp.asarray, model_state), "rng": jax.random.PRNGKey(0)}
    checkpointer = Checkpointer(workdir, 1)
    checkpointer.save(0, state)
    checkpointer.close()

    with open(os.path.join(workdir, FLAGS_FILE), "w") as f:
        f.write(f"# the architecture of {source}, converted by python -m bmjax.hf convert\n")
        f.write("".join(line + "\n" for line in flag_list))
    with open(os.path.join(workdir, "hf_config.json"), "w") as f:
        json.dump(load_config(source), f, indent=2)
    vocab = getattr(model, "vocab_size", None)
    return {"model_type": model_type, "flags": flag_list, "warnings": warnings, "vocab_size": vocab,
            "parameters": sum(x.size for x in jax.tree.leaves(params)), "checkpoints": checkpoints}


@exit_on_usage_error
def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # orbax logs every step of a save at INFO
    if len(argv) != 3 or argv[1] != "convert" or not _WORKDIR.value:
        raise UsageError("usage: python -m bmjax.hf convert HF_MODEL_FOLDER --workdir=OUT [--experiment=MODULE]")
    written = convert(argv[2], _WORKDIR.value, _EXPERIMENT.value)
    workdir = _WORKDIR.value
    print(f"{written['model_type']} with {written['parameters']:,} parameters saved to {written['checkpoints']}")
    print(f"model flags (also in {os.path.join(workdir, FLAGS_FILE)}):\n  {' '.join(written['flags'])}")
    for warning in written["warnings"]:
        print(f"warning: {warning}")
    if written["vocab_size"]:
        print(f"the vocabulary has {written['vocab_size']} tokens: fine-tune on data tokenized with this model's "
              "tokenizer, or the embeddings will not fit")
    print(f"fine-tune with: --flagfile={os.path.join(workdir, FLAGS_FILE)} --restore_from={workdir}")


if __name__ == "__main__":
    app.run(main)

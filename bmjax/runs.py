"""`bmjax.restore(workdir)`: a run's config, model and parameters, for inference, export and notebooks.

    run = bmjax.restore("runs/digits_mlp")
    logits = run(x)                      # the model applied in evaluation mode
    run.config, run.model, run.params, run.tokenizer, run.info

The parameters come back whole, on this process's first device, whatever devices or mesh the run trained on;
the optimizer state is not read. The run's config class is imported from the experiment that trained it (as
run.json names it), and its `build_model` rebuilds the model.
"""

import dataclasses
import importlib
import importlib.util
import json
import os
import typing
from typing import Any, Optional

import flax.linen as nn
import jax

from bmjax.config import Config
from bmjax.data import DatasetInfo, load_tokenizer, preprocess
from bmjax.errors import UsageError
from bmjax.models import ModelIO
from bmjax.train.checkpoint import check_compatible, read_saved
from bmjax.train.workdir import RUN_FILE
from bmjax.train.supervised import TOKENIZER_FILE, trained_model


@dataclasses.dataclass
class Restored:
    """A trained model and what it was trained with."""

    config: Config
    model: nn.Module
    params: Any
    model_state: dict  # non-trained collections (batch statistics); {} when there are none
    step: int
    seed: int
    io: ModelIO
    info: Optional[DatasetInfo] = None  # the dataset's classes, vocabulary, feature shape
    tokenizer: Optional[Any] = None  # a text run's tokenizer

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}

    def __call__(self, x, **kwargs):
        """The model's outputs for a batch `x` as the run's dataset gives it (images as uint8 are scaled to
        [0, 1], as in training), in evaluation mode."""
        return self.model.apply(self.variables, preprocess.to_float(x), train=False, **kwargs)


def restore(workdir: str, *, step: Optional[int] = None, seed: Optional[int] = None) -> Restored:
    """The run in `workdir` at its newest checkpoint (or `step`); for a many-seed run, the parameters of `seed`
    (default: its first)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config, info, record = read_run(workdir)
    if record.get("model_io") is None:
        raise UsageError(f"the run in {workdir} ({record.get('program')}) records no model to rebuild")
    io = ModelIO.from_json(record["model_io"])
    model = trained_model(config, io)
    saved, saved_step = read_saved(workdir, ("params", "model_state", "ema_params"), step=step, flag="workdir")
    averaged = saved.pop("ema_params", None)
    if averaged is not None:  # the moving average of the weights is what the run evaluated
        saved["params"] = averaged

    seeds = record.get("seeds") or [config.seed]
    chosen = seeds[0] if seed is None else seed
    if chosen not in seeds:
        raise UsageError(f"the run in {workdir} trained seeds {', '.join(map(str, seeds))}, not {chosen}")
    if len(seeds) > 1:  # a leading seed axis on every array
        saved = jax.tree.map(lambda x: x[seeds.index(chosen)], saved)

    expected = nn.meta.unbox(jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, io.example(), train=False)))
    expected = {"params": expected.pop("params"), "model_state": dict(expected)}
    check_compatible(saved, expected, workdir, f"the model {type(config).__name__}.build_model makes now")

    tokenizer_path = os.path.join(workdir, TOKENIZER_FILE)
    return Restored(config=config, model=model, params=saved["params"], model_state=saved.get("model_state") or {},
                    step=saved_step, seed=chosen, io=io, info=info,
                    tokenizer=load_tokenizer(tokenizer_path) if os.path.exists(tokenizer_path) else None)


def read_run(workdir: str) -> tuple[Config, Optional[DatasetInfo], dict]:
    """(config, dataset info, run.json) of the run in `workdir`, for programs that rebuild their own networks."""
    path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), RUN_FILE)
    if not os.path.exists(path):
        raise UsageError(f"{os.path.dirname(path)} holds no bmjax run ({RUN_FILE} is missing); pass the --workdir "
                         "of a run that has started training")
    with open(path) as f:
        record = json.load(f)
    info = record.get("dataset_info")
    if info is not None:
        info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in info.items()})
    return _config(record), info, record


def _config(record: dict) -> Config:
    """The run's config: its class imported from the experiment that defined it, its values from run.json."""
    module_name, _, qualname = record["config_class"].rpartition(":")
    try:
        if module_name.endswith(".py"):  # an experiment run as a file
            spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0],
                                                          module_name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        cls = module
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, FileNotFoundError) as e:
        raise UsageError(f"the run's config class {record['config_class']} cannot be imported ({e}); run from where "
                         "its experiment can be imported") from None
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in record["config"]:
            value = record["config"][f.name]
            values[f.name] = tuple(value) if isinstance(value, list) and "tuple" in str(hints[f.name]) else value
    return cls(**values)

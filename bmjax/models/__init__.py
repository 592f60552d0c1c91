"""Models, found by name: `models.create(name, **hyperparameters)`."""

import dataclasses
from typing import Callable

import flax.linen as nn

from bmjax.errors import UsageError
from bmjax.models.cnn import SeedCNN
from bmjax.models.gpt import GPT
from bmjax.models.mlp import MLP

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SeedCNN,
    "gpt": GPT,
}
OUTPUTS_FIELD = {"gpt": "vocab_size"}  # the field that takes the task's output size, where not num_outputs


def create(name: str, num_outputs: int = None, **hyperparameters) -> nn.Module:
    """Builds the model registered under `name` with `num_outputs` outputs (classes, or a vocabulary)."""
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**{OUTPUTS_FIELD.get(name, "num_outputs"): num_outputs}, **hyperparameters)


def hyperparameters(name: str, config) -> dict:
    """The settings in `config` that model `name` takes: the config fields named like the model's fields."""
    if name not in REGISTRY:
        create(name)  # raises the UsageError listing the names
    own = {f.name for f in dataclasses.fields(REGISTRY[name])}
    own -= {OUTPUTS_FIELD.get(name, "num_outputs"), "parent", "name", "decode"}
    return {k: getattr(config, k) for k in own if hasattr(config, k)}

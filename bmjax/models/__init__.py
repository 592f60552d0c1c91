"""Models, found by name: `models.create(name, **hyperparameters)`."""

import dataclasses
from typing import Callable

import flax.linen as nn

from bmjax.errors import UsageError
from bmjax.models.cnn import SeedCNN
from bmjax.models.mlp import MLP

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SeedCNN,
}


def create(name: str, **hyperparameters) -> nn.Module:
    """Builds the model registered under `name`."""
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**hyperparameters)


def hyperparameters(name: str, config) -> dict:
    """The settings in `config` that model `name` takes: the config fields named like the model's fields."""
    if name not in REGISTRY:
        create(name)  # raises the UsageError listing the names
    own = {f.name for f in dataclasses.fields(REGISTRY[name])} - {"num_outputs", "parent", "name"}
    return {k: getattr(config, k) for k in own if hasattr(config, k)}

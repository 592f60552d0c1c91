"""Models, found by name: `models.create(name, **hyperparameters)`."""

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from bmjax.errors import UsageError
from bmjax.models.bert import BertForMaskedLM, BertForSequenceClassification
from bmjax.models.cnn import SeedCNN
from bmjax.models.gpt import GPT
from bmjax.models.mlp import MLP
from bmjax.models.t5 import T5
from bmjax.models.vit import ViT

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SeedCNN,
    "gpt": GPT,
    "t5": T5,
    "bert_mlm": BertForMaskedLM,
    "bert_classifier": BertForSequenceClassification,
    "vit": ViT,
}
# The field that takes the task's output size, where not num_outputs.
OUTPUTS_FIELD = {"gpt": "vocab_size", "t5": "vocab_size", "bert_mlm": "vocab_size"}


def create(name: str, num_outputs: int = None, **hyperparameters) -> nn.Module:
    """Builds the model registered under `name` with `num_outputs` outputs (classes, or a vocabulary)."""
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**{OUTPUTS_FIELD.get(name, "num_outputs"): num_outputs}, **hyperparameters)


def hyperparameters(name: str, config, vocab_size: Optional[int] = None) -> dict:
    """The settings model `name` takes: the config fields named like the model's fields, the compute dtype as a
    dtype, and `vocab_size` from the dataset's tokenizer where the model reads tokens it does not predict."""
    if name not in REGISTRY:
        create(name)  # raises the UsageError listing the names
    own = {f.name for f in dataclasses.fields(REGISTRY[name])}
    own -= {OUTPUTS_FIELD.get(name, "num_outputs"), "parent", "name", "decode"}
    settings = {k: getattr(config, k) for k in own if hasattr(config, k)}
    if "dtype" in settings:
        settings["dtype"] = jnp.dtype(settings["dtype"])
    if "vocab_size" in own and vocab_size:
        settings["vocab_size"] = vocab_size
    return settings

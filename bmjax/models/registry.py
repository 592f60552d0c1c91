"""Models found by name: a builder per name turns an experiment's config into a Flax module.

    @models.register("small_resnet")
    def small_resnet(config, io):
        return SmallResNet(num_outputs=io.num_outputs, widths=config.widths, dtype=config.compute_dtype)

A builder reads the settings it needs from the config explicitly; `io` says what the data and the task
need of the model (its outputs, the vocabulary it reads, an example input).
"""

import dataclasses
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmjax.errors import UsageError

Builder = Callable[[Any, "ModelIO"], nn.Module]
# A model's collection of state that belongs to its batch rows (a recurrent state carried from one window to the
# next): the runner splits it over the devices like the batch and never averages it. Such a model names its
# rows in a `carry_rows` attribute, and reads row b of each batch as the continuation of row b of the last.
CARRY = "carry"
REGISTRY: dict[str, Builder] = {}


@dataclasses.dataclass(frozen=True)
class ModelIO:
    """What a model is built for, beside its own settings."""

    num_outputs: int  # classes (1 for a binary or scalar target), or the vocabulary a model predicts
    vocab_size: Optional[int] = None  # the tokens a text model reads (its dataset's tokenizer)
    inputs: Any = None  # one example's input: a jax.ShapeDtypeStruct, or a dict of them, without the batch axis
    axis_name: Optional[str] = None  # the pmap axis, for batch statistics over the whole batch (None: not pmap)

    def example(self, batch_size: int = 1):
        """Zeros shaped like a batch of inputs, to initialise the model on."""
        return jax.tree.map(lambda s: jnp.zeros((batch_size,) + tuple(s.shape), s.dtype), self.inputs)

    def to_json(self) -> dict:
        inputs = jax.tree.map(lambda s: {"shape": list(s.shape), "dtype": np.dtype(s.dtype).name}, self.inputs)
        return {"num_outputs": self.num_outputs, "vocab_size": self.vocab_size, "inputs": inputs}

    @classmethod
    def from_json(cls, record: dict) -> "ModelIO":
        is_spec = lambda x: isinstance(x, dict) and set(x) == {"shape", "dtype"}
        inputs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s["shape"]), np.dtype(s["dtype"])),
                              record["inputs"], is_leaf=is_spec)
        return cls(num_outputs=record["num_outputs"], vocab_size=record.get("vocab_size"), inputs=inputs)


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: `builder(config, io) -> nn.Module` is what `--model=name` builds."""

    def add(builder: Builder) -> Builder:
        known = REGISTRY.get(name)
        # An experiment file run as __main__ and imported again (bmjax.restore) registers the same builder twice.
        if known is not None and known.__qualname__ != builder.__qualname__:
            raise ValueError(f"model name {name!r} is registered twice ({known.__module__}.{known.__qualname__} and "
                             f"{builder.__module__}.{builder.__qualname__}); choose another name")
        REGISTRY[name] = builder
        return builder

    return add


def names() -> list[str]:
    """The registered names, numbers in order (resnet18 before resnet101)."""
    return sorted(REGISTRY, key=lambda name: [int(part) if part.isdigit() else part
                                              for part in re.split(r"(\d+)", name)])


def build(name: str, config, io: ModelIO) -> nn.Module:
    """The model registered under `name`, built from `config` for `io`."""
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(names())}, or register one with "
                         "@bmjax.models.register")
    try:
        return REGISTRY[name](config, io)
    except AttributeError as e:
        if getattr(e, "obj", None) is not config:
            raise
        raise UsageError(f"model {name!r} needs the setting --{e.name}, which {type(config).__name__} does not "
                         f"have; use an experiment that defines it, or build the model in the experiment's "
                         "build_model") from None

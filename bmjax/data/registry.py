"""Datasets found by name, beside bmjax's own and TFDS's: a reader per name turns a `DataSpec` into a `Dataset`.

    @data.register("fsdd")
    def fsdd(spec):
        return Dataset(info, train, validation, test)

A reader takes what it needs from the spec's fields, and an experiment's own dataset settings from
`spec.config` (the run's config; None when `data.load` is called with a name alone).
"""

from typing import Callable

from bmjax.errors import UsageError

Reader = Callable[["DataSpec"], "Dataset"]  # noqa: F821 (bmjax.data.datasets imports this module)
REGISTRY: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    """Decorator: `reader(spec) -> Dataset` is what `--dataset=name` reads."""

    def add(reader: Reader) -> Reader:
        known = REGISTRY.get(name)
        if known is not None and known.__qualname__ != reader.__qualname__:
            raise ValueError(f"dataset name {name!r} is registered twice ({known.__module__}.{known.__qualname__} "
                             f"and {reader.__module__}.{reader.__qualname__}); choose another name")
        REGISTRY[name] = reader
        return reader

    return add


def setting(spec, name: str):
    """The run's config field `name`, which a registered reader needs: a clear error where the config lacks it."""
    if spec.config is None or not hasattr(spec.config, name):
        raise UsageError(f"dataset {spec.name!r} needs the setting --{name}; run it from an experiment that defines "
                         "it")
    return getattr(spec.config, name)

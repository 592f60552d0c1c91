"""bmjax: Flax linen models and Optax optimizers composed into one train step, compiled for one device,
`pmap` or a device mesh.

    import bmjax
    result = bmjax.run(bmjax.Config(workdir="/tmp/run", dataset="digits"))
"""

from bmjax.config import Config
from bmjax.errors import UsageError


def run(config: Config, command: str = "bmjax") -> dict:
    """Trains, resumes or reports the run `config` describes; returns what result.json holds."""
    from bmjax.train.loop import run as run_loop  # JAX starts here, after --host_devices can be applied

    return run_loop(config, command)


__all__ = ["Config", "UsageError", "run"]

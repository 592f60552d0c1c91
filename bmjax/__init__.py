"""bmjax: Flax linen models and Optax optimizers composed into one train step, compiled for one device,
`pmap` or a device mesh.

    import bmjax
    result = bmjax.run(bmjax.Config(workdir="/tmp/run", dataset="digits"))
    trained = bmjax.restore("/tmp/run")      # config, model and parameters, for inference
"""

from bmjax import xla_cpu
from bmjax.config import Config
from bmjax.errors import UsageError

xla_cpu.prefer_eigen_convolutions()


def run(config: Config, command: str = "bmjax") -> dict:
    """Trains, resumes or reports the run `config` describes; returns what result.json holds."""
    from bmjax.train.loop import run as run_loop  # JAX's backend starts here, after --host_devices can be applied

    return run_loop(config, command)


def restore(workdir: str, **options):
    """A run's config, model and parameters (`bmjax.runs.Restored`); see `bmjax.runs.restore`."""
    from bmjax.runs import restore as restore_run

    return restore_run(workdir, **options)


__all__ = ["Config", "UsageError", "restore", "run"]

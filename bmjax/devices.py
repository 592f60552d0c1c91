"""python -m bmjax.devices: what JAX sees here, and how fast it multiplies matrices.

    python -m bmjax.devices                 # backend, devices (kind, memory), processes, matmul rates
    python -m bmjax.devices --expect=gpu    # exit status 2, with a line saying why, unless JAX runs on a GPU

The rates are the best of a few timed `jax.jit(a @ b)` calls on the first device, in bfloat16 and float32:
the ceiling model FLOP utilisation is measured against on this machine.
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from bmjax.errors import UsageError, exit_on_usage_error

_EXPECT = flags.DEFINE_enum("expect", None, ["cpu", "gpu", "tpu"], "Fail unless JAX's backend is this one.")
_SIZE = flags.DEFINE_integer("size", 4096, "Side of the square matrices multiplied.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed products per dtype (the best counts).")

INSTALL = {"gpu": "pip install -e '.[cuda12]' (or '.[cuda13]')", "tpu": "pip install -e '.[tpu]'"}


def describe() -> list[str]:
    """One line for the backend and processes, then one per local device."""
    lines = [f"backend: {jax.default_backend()}; {jax.device_count()} device(s) in {jax.process_count()} "
             f"process(es), {jax.local_device_count()} here"]
    for device in jax.local_devices():
        memory = (device.memory_stats() or {}).get("bytes_limit") if hasattr(device, "memory_stats") else None
        size = f", {memory / 2 ** 30:.1f} GiB" if memory else ""
        lines.append(f"  {device.id}: {device.device_kind}{size}")
    return lines


def matmul_rate(dtype, size: int, repeats: int) -> float:
    """FLOP/s of the best of `repeats` timed [size, size] @ [size, size] products on the first device."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    product = jax.jit(lambda a, b: a @ b)
    product(a, b).block_until_ready()  # compiled and warm
    best = float("inf")
    for _ in range(repeats):
        tick = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - tick)
    return 2 * size ** 3 / best


@exit_on_usage_error
def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # JAX's INFO lines about backends it did not find
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {' '.join(argv[1:])}; see --help")
    backend = jax.default_backend()
    if _EXPECT.value and backend != _EXPECT.value:
        raise UsageError(f"--expect={_EXPECT.value}, but JAX runs on {backend} ({jax.devices()[0].device_kind}); "
                         f"install JAX's {_EXPECT.value} build: {INSTALL.get(_EXPECT.value, 'pip install -e .')}")
    print("\n".join(describe()))
    for dtype in (jnp.bfloat16, jnp.float32):
        rate = matmul_rate(dtype, _SIZE.value, _REPEATS.value)
        print(f"matmul {jnp.dtype(dtype).name} {_SIZE.value}x{_SIZE.value}: {rate / 1e12:.3f} TFLOP/s")


if __name__ == "__main__":
    app.run(main)

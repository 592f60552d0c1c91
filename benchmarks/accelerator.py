"""An accelerator's figures in one run that writes one file: the matmul ceilings, GPT-2 124M's train step in
bfloat16 (tokens/s, MFU), and the seed MLP's and CNN's epochs.

    python -m benchmarks.accelerator --out=accelerator.json     # on a GPU or TPU: about 5 minutes
    python -m benchmarks.accelerator --quick                    # the script itself, on a CPU, in a minute

It needs jax, flax, optax and orbax alone (no dataset, no TFDS): the steps are bmjax's own (the supervised
program's train step, compiled with donated state as the runner compiles it; the seed models' epochs through
the runner's device feed, `lax.scan` over batches gathered on the device) on random data of the real shapes,
since a step's speed does not depend on the values it reads.

MFU = tokens/s x FLOPs per token / ceiling, FLOPs per token = 6N + 12 L d T (nanoGPT's estimate_mfu, as in
benchmarks/gpt.py), against the bfloat16 matmul rate measured in the same run and against the device's
nominal dense bfloat16 peak where it is known.
"""

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bmjax import devices, optim, tasks
from bmjax.data import ArraySource, Dataset, DatasetInfo
from bmjax.train import feeds, strategy as strategy_lib
from bmjax.train.supervised import Supervised

# Dense bfloat16 peaks in FLOP/s, by a fragment of jax's device_kind.
NOMINAL_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
                 "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}
GPT2 = dict(num_layers=12, num_heads=12, embed_dim=768, block_size=1024, vocab_size=50257)
TINY_GPT = dict(num_layers=2, num_heads=2, embed_dim=64, block_size=64, vocab_size=256)

_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes and few steps: checks the script, measures nothing useful.")
_GPT_BATCH = flags.DEFINE_integer("gpt_batch", 16, "Sequences per GPT-2 step.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed GPT steps, after 3 untimed ones.")
_OUT = flags.DEFINE_string("out", "accelerator.json", "Where to write the figures.")


def gpt_config(quick: bool):
    from experiments.gpt_shakespeare_char import GptShakespeareChar

    sizes = TINY_GPT if quick else GPT2
    return GptShakespeareChar(workdir="unused", dtype="bfloat16", dropout=0.0, use_bias=True,
                              **{k: v for k, v in sizes.items() if k != "vocab_size"}), sizes["vocab_size"]


def gpt_step(quick: bool, batch_size: int, steps: int, ceiling: float) -> dict:
    """GPT-2 124M (tied embeddings, bfloat16 compute, float32 parameters, AdamW) on random tokens."""
    from bmjax.models import ModelIO

    config, vocab = gpt_config(quick)
    block = config.block_size
    tokens = jnp.zeros((1, block), jnp.int32)
    model = config.build_model(ModelIO(num_outputs=vocab, inputs=jax.ShapeDtypeStruct((block,), jnp.int32)))
    task = tasks.TokenPrediction(vocab)
    program = Supervised(model, task, optim.create(config, 1000), tokens, schedule=optim.schedule(config, 1000))
    state = program.init(jax.random.PRNGKey(0))
    step = jax.jit(program.train_step, donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch = lambda: {"x": jnp.asarray(rng.integers(0, vocab, (batch_size, block)), jnp.int32),
                     "y": jnp.asarray(rng.integers(0, vocab, (batch_size, block)), jnp.int32)}
    batches = [batch() for _ in range(4)]
    compile_tick = time.perf_counter()
    for i in range(3):
        state, sums = step(state, batches[i % 4])
    jax.block_until_ready(sums)
    warmup = time.perf_counter() - compile_tick
    tick = time.perf_counter()
    for i in range(steps):
        state, sums = step(state, batches[i % 4])
    jax.block_until_ready(sums)
    seconds = (time.perf_counter() - tick) / steps
    parameters = sum(x.size for x in jax.tree.leaves(state.params))
    n = parameters - block * config.embed_dim  # without the position embeddings
    per_token = 6 * n + 12 * config.num_layers * config.embed_dim * block
    tokens_per_second = batch_size * block / seconds
    kind = jax.devices()[0].device_kind
    peak = next((p for fragment, p in NOMINAL_PEAKS.items() if fragment in kind), None)
    return {"parameters": parameters, "batch": batch_size, "block": block, "ms_per_step": 1e3 * seconds,
            "tokens_per_second": tokens_per_second, "warmup_seconds": warmup,
            "mfu_measured_ceiling": tokens_per_second * per_token / ceiling,
            "mfu_nominal_peak": tokens_per_second * per_token / peak if peak else None, "nominal_peak": peak,
            "final_loss": float(sums["loss"] / sums["count"])}


def seed_epoch(experiment: str, quick: bool) -> dict:
    """One epoch of a seed model through the runner's device feed, on random MNIST-shaped images."""
    import importlib

    config_class = {"mnist_mlp": "MnistMlp", "mnist_cnn": "MnistCnn"}[experiment]
    config = getattr(importlib.import_module(f"experiments.{experiment}"), config_class)(workdir="unused")
    examples = 1024 if quick else {"mnist_mlp": 48_000, "mnist_cnn": 54_000}[experiment]
    rng = np.random.default_rng(0)
    train = ArraySource(rng.integers(0, 256, (examples, 28, 28, 1), dtype=np.uint8),
                        rng.integers(0, 10, examples).astype(np.int32))
    info = DatasetInfo("mnist_shaped", "classification", (28, 28, 1), 10, tuple(map(str, range(10))))
    dataset = Dataset(info, train, None, train)
    from bmjax.models import ModelIO

    example = train[np.arange(1)]["x"].astype(np.float32) / 255
    model = config.build_model(ModelIO(num_outputs=10, inputs=jax.ShapeDtypeStruct((28, 28, 1), jnp.float32)))
    steps_per_epoch = examples // config.batch_size
    program = Supervised(model, tasks.Classification(10), optim.create(config, steps_per_epoch),
                         example, schedule=optim.schedule(config, steps_per_epoch))
    strategy = strategy_lib.Single()
    order = feeds.DataOrder((0,), examples, config.batch_size, steps_per_epoch)
    chunk = steps_per_epoch if jax.default_backend() != "cpu" else config.steps_per_call or steps_per_epoch
    feed = feeds.DeviceFeed(dataset, program, strategy, order, 1024, chunk, steps_per_epoch % chunk != 0)
    state = strategy.place_state(program.init(jax.random.PRNGKey(0)))
    times = []
    for epoch in range(2):  # the first carries the compilation
        tick = time.perf_counter()
        state, sums = feed.train(state, epoch * steps_per_epoch, steps_per_epoch)
        times.append(time.perf_counter() - tick)
    return {"examples": examples, "batch": config.batch_size, "steps_per_call": chunk,
            "first_epoch_seconds": times[0], "epoch_seconds": times[1]}


def main(argv):
    del argv
    quick = _QUICK.value
    size = 512 if quick else 8192
    figures = {"devices": devices.describe(), "backend": jax.default_backend(),
               "device_kind": jax.devices()[0].device_kind,
               "matmul_tflops": {name: devices.matmul_rate(dtype, size, 3 if quick else 10) / 1e12
                                 for name, dtype in (("bfloat16", jnp.bfloat16), ("float32", jnp.float32))}}
    print("\n".join(figures["devices"]), flush=True)
    print(f"matmul {size}x{size}: {figures['matmul_tflops']}", flush=True)
    ceiling = figures["matmul_tflops"]["bfloat16"] * 1e12
    gpt = gpt_step(quick, 2 if quick else _GPT_BATCH.value, 2 if quick else _STEPS.value, ceiling)
    figures["gpt_tiny_bfloat16" if quick else "gpt2_124m_bfloat16"] = gpt
    print(f"GPT: {gpt['ms_per_step']:.1f} ms/step, {gpt['tokens_per_second']:,.0f} tokens/s, MFU "
          f"{gpt['mfu_measured_ceiling']:.1%} of the measured ceiling", flush=True)
    for experiment in ("mnist_mlp", "mnist_cnn"):
        figures[experiment] = seed_epoch(experiment, quick)
        print(f"{experiment}: {figures[experiment]['epoch_seconds']:.2f} s/epoch", flush=True)
    Path(_OUT.value).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **figures}, indent=2))
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

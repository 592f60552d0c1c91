"""DCGAN's train step on this machine: bmjax beside the same model in PyTorch eager, in one run.

    python -m benchmarks.dcgan [--sizes=cpu,paper] [--steps=20]

A step is what `experiments.dcgan` trains: the discriminator's Adam step on a batch of real MNIST-shaped images
against as many generated ones (BatchNorm in training mode, the non-saturating loss), then the generator's Adam
step against the updated discriminator, through the same forward pass of the generator (PyTorch's DCGAN example
does the same). bmjax's step is the `Adversarial` program's train step, jitted as the runner runs it; PyTorch's
is the same architecture with as many threads as JAX's CPU client uses. `cpu` is the experiment's `--preset=cpu`
(32 filters, batch 64), `paper` its default (64 filters, batch 128). Prints milliseconds per step (the median of
`--repeats` timings of `--steps` steps, after warm-up) and the ratio; writes benchmarks/dcgan_results.json.
"""

import json
import os
from pathlib import Path

from absl import app, flags

from benchmarks import machine, ms_per_step, time_steps

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"cpu": (32, 64), "paper": (64, 128)}  # (filters, batch)
LATENT, SIDE = 100, 28

_SIZES = flags.DEFINE_list("sizes", list(SIZES), "Network sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per size; the median is reported.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "dcgan_results.json"), "Where to write the figures.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: time one framework:size in this process.")


def bmjax_step(size: str):
    import jax
    import numpy as np
    import optax

    from bmjax.models.dcgan import Discriminator, Generator
    from bmjax.train.adversarial import Adversarial

    features, batch = SIZES[size]
    adam = optax.adam(2e-4, b1=0.5)
    program = Adversarial(Generator(image_shape=(SIDE, SIDE, 1), features=features), Discriminator(features=features),
                          adam, adam, image_shape=(SIDE, SIDE, 1), latent_dim=LATENT)
    images = np.random.default_rng(0).integers(0, 256, (batch, SIDE, SIDE, 1), dtype=np.uint8)
    batch_on_device = {"x": jax.device_put(images)}
    step = jax.jit(program.train_step, donate_argnums=0)
    state = [jax.jit(program.init)(jax.random.key(0))]

    def run():
        state[0], sums = step(state[0], batch_on_device)
        jax.block_until_ready(sums)

    return run


def torch_step(size: str):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    features, batch = SIZES[size]
    first = 2 * features  # the generator's 7x7 map

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.project = nn.Linear(LATENT, first * 7 * 7, bias=False)
            self.body = nn.Sequential(
                nn.BatchNorm2d(first), nn.ReLU(), nn.ConvTranspose2d(first, features, 4, 2, 1, bias=False),
                nn.BatchNorm2d(features), nn.ReLU(), nn.ConvTranspose2d(features, 1, 4, 2, 1), nn.Tanh())

        def forward(self, z):
            return self.body(self.project(z).view(-1, first, 7, 7))

    discriminator = nn.Sequential(
        nn.Conv2d(1, features, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(features, 2 * features, 4, 2, 1, bias=False),
        nn.BatchNorm2d(2 * features), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * features * 7 * 7, 1))
    generator = Generator()
    g_opt = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run():
        fake = generator(torch.randn(batch, LATENT))
        d_opt.zero_grad()
        d_loss = F.softplus(-discriminator(real)).sum() + F.softplus(discriminator(fake.detach())).sum()
        (d_loss / batch).backward()
        d_opt.step()
        g_opt.zero_grad()
        (F.softplus(-discriminator(fake)).sum() / batch).backward()
        g_opt.step()

    return run


def main(argv):
    if _WORKER.value:
        framework, size = _WORKER.value.split(":")
        step = torch_step(size) if framework == "torch" else bmjax_step(size)
        print(json.dumps({"ms_per_step": time_steps(step, _REPEATS.value, _STEPS.value)}))
        return
    results = {"machine": machine(), "sizes": {}}
    print(f"{results['machine']}; ms per DCGAN train step (median of {_REPEATS.value} x {_STEPS.value} steps)")
    for size in _SIZES.value:
        if size not in SIZES:
            raise app.UsageError(f"unknown size {size}; choose from {', '.join(SIZES)}")
        figures = {}
        for framework in ("bmjax", "torch"):
            figures[framework] = ms_per_step("benchmarks.dcgan", f"{framework}:{size}", _STEPS.value,
                                             _REPEATS.value)
        ratio = figures["torch"] / figures["bmjax"]
        features, batch = SIZES[size]
        print(f"{size:6s} ({features} filters, batch {batch})  bmjax {figures['bmjax']:7.1f}  "
              f"PyTorch eager {figures['torch']:7.1f}  bmjax faster by {ratio:.2f}x")
        results["sizes"][size] = {**figures, "bmjax_faster_by": ratio, "filters": features, "batch": batch}
    Path(_OUT.value).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)

"""Convolutional networks' train steps on this machine: bmjax beside PyTorch eager, in one run.

    python -m benchmarks.convnets [--models=seed_cnn,resnet20,resnet50] [--steps=10]

Each model takes SGD steps (Nesterov momentum, cross-entropy; BatchNorm in training mode) on random data of
its usual shape: the seed CNN on 28x28x1 MNIST batches of 32, ResNet-20 on 32x32x3 CIFAR batches of 128,
ResNet-50 on 224x224x3 ImageNet batches of 16. bmjax's step is the jitted update of the zoo's model (and,
for the seed CNN, also with `reduce_window` max-pooling as Flax's `nn.max_pool` does it); PyTorch's is the same
architecture in eager mode with as many threads as JAX's CPU client uses. Prints milliseconds per step (the
median of `--repeats` timings of `--steps` steps, after warm-up) and the ratios; writes
benchmarks/convnets_results.json.
"""

import json
import os
from pathlib import Path

from absl import app, flags

from benchmarks import machine, ms_per_step, time_steps

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"seed_cnn": (32, 28, 1, 10), "resnet20": (128, 32, 3, 10), "resnet50": (16, 224, 3, 1000)}

_MODELS = flags.DEFINE_list("models", list(SHAPES), "Models to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per model; the median is reported.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "convnets_results.json"), "Where to write the figures.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: time one framework:model in this process.")


def bmjax_step(model_name: str, pooling: str = "bmjax"):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from bmjax import models
    from bmjax.models import cnn

    batch, size, channels, classes = SHAPES[model_name]
    if model_name == "seed_cnn":
        if pooling == "reduce_window":
            import flax.linen as nn
            cnn.max_pool = lambda x, window: nn.max_pool(x, (window, window), strides=(window, window))
        model = cnn.SeedCNN(num_outputs=classes)
    else:
        config = type("Settings", (), dict(bn_momentum=0.9, preactivation=False, stem="imagenet", remat=False,
                                           compute_dtype=jnp.float32))()
        io = models.ModelIO(num_outputs=classes, inputs=jax.ShapeDtypeStruct((size, size, channels), jnp.float32))
        model = models.build(model_name, config, io)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, size, size, channels), np.float32))
    y = jnp.asarray(rng.integers(0, classes, batch))
    variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False))()
    params, model_state = variables.pop("params"), dict(variables)
    tx = optax.sgd(0.01, momentum=0.9, nesterov=True)

    @jax.jit
    def step(params, model_state, opt_state):
        def loss(params):
            logits, new_state = model.apply({"params": params, **model_state}, x, train=True,
                                            mutable=list(model_state))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
        (value, new_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), dict(new_state), opt_state, value

    carry = [params, model_state, tx.init(params)]

    def run():
        *carry[:3], value = step(*carry)
        jax.block_until_ready(value)

    return run


def torch_step(model_name: str):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    batch, size, channels, classes = SHAPES[model_name]

    class Basic(nn.Module):  # He et al.'s CIFAR block, option A shortcut
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
            self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
            self.stride, self.pad = stride, c_out - c_in

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            return F.relu(y + (F.pad(shortcut, (0, 0, 0, 0, 0, self.pad)) if self.pad else shortcut))

    class Bottleneck(nn.Module):  # torchvision's, stride on the 3x3
        def __init__(self, c_in, width, stride):
            super().__init__()
            out = 4 * width
            self.body = nn.Sequential(nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(), nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
            self.shortcut = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                             if stride != 1 or c_in != out else nn.Identity())

        def forward(self, x):
            return F.relu(self.body(x) + self.shortcut(x))

    if model_name == "seed_cnn":
        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, classes))
    elif model_name == "resnet20":
        blocks, c_in = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(3):
                blocks.append(Basic(c_in, width, 2 if stage and not block else 1))
                c_in = width
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), *blocks,
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))
    else:
        blocks, c_in = [], 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for block in range(count):
                blocks.append(Bottleneck(c_in, width, 2 if stage and not block else 1))
                c_in = 4 * width
        model = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(2048, classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, size, size, generator=generator)
    y = torch.randint(0, classes, (batch,), generator=generator)

    def run():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return run


def worker(spec: str) -> dict:
    framework, model_name = spec.split(":")
    step = torch_step(model_name) if framework == "torch" else bmjax_step(
        model_name, "reduce_window" if framework == "bmjax_reduce_window" else "bmjax")
    return {"ms_per_step": time_steps(step, _REPEATS.value, _STEPS.value)}


def main(argv):
    if _WORKER.value:
        print(json.dumps(worker(_WORKER.value)))
        return
    results = {"machine": machine(), "models": {}}
    print(f"{results['machine']}; ms per train step (median of {_REPEATS.value} x {_STEPS.value} steps)")
    for model_name in _MODELS.value:
        if model_name not in SHAPES:
            raise app.UsageError(f"unknown model {model_name}; choose from {', '.join(SHAPES)}")
        frameworks = ["bmjax", "torch"] + (["bmjax_reduce_window"] if model_name == "seed_cnn" else [])
        figures = {}
        for framework in frameworks:
            figures[framework] = ms_per_step("benchmarks.convnets", f"{framework}:{model_name}", _STEPS.value,
                                             _REPEATS.value)
        ratio = figures["torch"] / figures["bmjax"]
        line = f"{model_name:9s} bmjax {figures['bmjax']:8.1f}  PyTorch eager {figures['torch']:8.1f}  " \
               f"bmjax faster by {ratio:.2f}x"
        if "bmjax_reduce_window" in figures:
            line += f"  (with reduce_window pooling {figures['bmjax_reduce_window']:.1f})"
        print(line)
        results["models"][model_name] = {**figures, "bmjax_faster_by": ratio, "batch": SHAPES[model_name][0],
                                         "image": SHAPES[model_name][1]}
    Path(_OUT.value).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)

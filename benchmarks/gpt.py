"""GPT training speed: bmjax's runner beside the same GPT in PyTorch (eager and torch.compile), on Tiny Shakespeare.

    python -m benchmarks.gpt [--data_dir=DIR] [--manual_dir=RAW] [--sizes=cpu,large] [--convergence_steps=2000]

In one run: (a) the float32 matmul ceiling of this machine (jit `a @ b`, and torch.mm, at 2048² and 4096²,
best of several); (b) each framework trains the same model for a fixed number of steps, each in its own
process: bmjax through `experiments.gpt_shakespeare_char` (its result.json and metrics.jsonl), PyTorch
through nanoGPT's model code written out below; (c) bmjax at nanoGPT's CPU setup for 2000 steps, to its
final validation loss. Prints tokens/s, model FLOP utilisation (MFU) against the ceiling and the ratios;
writes benchmarks/gpt_results.json.

The model (nanoGPT's): pre-LayerNorm blocks, GELU (tanh form, in both frameworks), no biases in dense
layers (LayerNorms keep theirs, in both), tied input/output embeddings, learned positions, no dropout;
AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices), gradient clipping at norm 1.0, warm-up
then cosine decay.

FLOPs per token (nanoGPT's `estimate_mfu`, from the PaLM paper): 6 * N + 12 * L * d * T, with N the
parameters other than the position embeddings (the tied token embedding counts: it is the output
projection), L layers, d the width and T the block size; the second term is attention's QK^T and AV
products, forward and backward, without halving for the causal mask. MFU = tokens/s * FLOPs per token /
the matmul ceiling.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
SHARED_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tiny_shakespeare"
FRAMEWORKS = ("bmjax", "torch", "torch_compile")
SIZES = {
    # nanoGPT's CPU setup (config/train_shakespeare_char.py with its CPU overrides)
    "cpu": dict(num_layers=4, num_heads=4, embed_dim=128, block_size=64, batch_size=12),
    # nanoGPT's shakespeare-char model (6 x 6 x 384, block 256) at a batch a 2-core CPU trains in minutes
    "large": dict(num_layers=6, num_heads=6, embed_dim=384, block_size=256, batch_size=8),
}
# Timed steps per size, the steps run first (compilation, warm-up) and bmjax's log interval.
STEPS = {"cpu": 300, "large": 40}
WARMUP = {"cpu": 30, "large": 4}
LOG_EVERY = {"cpu": 30, "large": 4}
VOCAB = 65  # Tiny Shakespeare's characters

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory holding (or receiving) tiny_shakespeare.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", str(SHARED_SHAKESPEARE) if SHARED_SHAKESPEARE.is_dir() else None,
    "Folder with Tiny Shakespeare's input.txt, to prepare it offline first.")
_SIZES = flags.DEFINE_list("sizes", list(SIZES), "Model sizes to time.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Frameworks to time.")
_STEP_SCALE = flags.DEFINE_float("step_scale", 1.0, "Multiplies the timed steps (0.2 for a quick look).")
_CONVERGENCE_STEPS = flags.DEFINE_integer("convergence_steps", 2000,
                                          "Steps of the bmjax run at the cpu size to its validation loss; 0 skips.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "gpt_results.json"), "Where to write the figures.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one job (ceiling, or torch[_compile]:SIZE:STEPS).")


def flops_per_token(num_layers: int, embed_dim: int, block_size: int, **_) -> float:
    """6 N + 12 L d T, N = parameters without the position embeddings (LayerNorms with biases, as here)."""
    per_block = 12 * embed_dim ** 2 + 4 * embed_dim  # attention 4 d², MLP 8 d², two LayerNorms
    parameters = VOCAB * embed_dim + num_layers * per_block + 2 * embed_dim
    return 6 * parameters + 12 * num_layers * embed_dim * block_size


# ----------------------------------------------------------------------------------------------------------
# (a) The matmul ceiling


def ceiling_worker() -> dict:
    """GFLOP/s of float32 matmuls, best of several, in JAX (jit) and PyTorch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    figures = {}
    for n in (2048, 4096):
        a = jnp.asarray(np.random.RandomState(0).standard_normal((n, n)), jnp.float32)
        matmul = jax.jit(lambda x, y: x @ y)
        matmul(a, a).block_until_ready()
        figures[f"jax_{n}"] = _best_gflops(lambda: matmul(a, a).block_until_ready(), n)
    try:
        import torch
    except ImportError:
        return figures
    for n in (2048, 4096):
        a = torch.randn(n, n)
        torch.mm(a, a)
        figures[f"torch_{n}"] = _best_gflops(lambda: torch.mm(a, a), n)
    return figures


def _best_gflops(run, n: int, repeats: int = 6) -> float:
    best = math.inf
    for _ in range(repeats):
        tick = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - tick)
    return 2 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------------------------------------
# (b) bmjax through its runner


def run_bmjax(size: str, steps: int, workdir: Path, log_every: int) -> dict:
    """Trains through experiments.gpt_shakespeare_char; the steady rate leaves out the first log interval
    (compilation) and nothing else runs between logs (evaluation and checkpoints come at the end)."""
    setup = SIZES[size]
    args = [sys.executable, "-m", "experiments.gpt_shakespeare_char", "--preset=cpu", f"--workdir={workdir}",
            f"--train_steps={steps}", f"--log_every_steps={log_every}", f"--eval_every_steps={steps}",
            f"--checkpoint_every_steps={steps}", "--dropout=0.0", "--learning_rate=1e-3",  # as the PyTorch runs
            *[f"--{name}={value}" for name, value in setup.items()]]
    if _DATA_DIR.value:
        args.append(f"--data_dir={_DATA_DIR.value}")
    process = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if process.returncode:
        raise RuntimeError(f"bmjax run failed:\n{process.stderr[-3000:]}")
    result = json.loads((workdir / "result.json").read_text())
    train_logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in train_logs if r["split"] == "train"]
    steady = train_logs[1:] or train_logs
    # Steps over seconds across the steady intervals (each log says its own steps per second).
    seconds = sum(log_every / r["steps_per_second"] for r in steady)
    tokens_per_step = setup["batch_size"] * setup["block_size"]
    return {"steps_per_second": len(steady) * log_every / seconds,
            "steps_per_second_with_compilation": result["steps_per_second"],
            "tokens_per_second": len(steady) * log_every * tokens_per_step / seconds,
            "first_interval_seconds": log_every / train_logs[0]["steps_per_second"],
            "final_train_loss": train_logs[-1]["loss"], "validation_loss": result["validation"]["loss"],
            "parameters": result["parameters"], "runner_flops_per_step": result.get("flops_per_step")}


# ----------------------------------------------------------------------------------------------------------
# (b) The same GPT in PyTorch: nanoGPT's model code


def torch_gpt(num_layers: int, num_heads: int, embed_dim: int, block_size: int):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
            self.c_proj = nn.Linear(embed_dim, embed_dim, bias=False)

        def forward(self, x):
            batch, length, width = x.shape
            q, k, v = self.c_attn(x).split(width, dim=2)
            q, k, v = (t.view(batch, length, num_heads, width // num_heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(batch, length, width))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(embed_dim, 4 * embed_dim, bias=False)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * embed_dim, embed_dim, bias=False)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(embed_dim), CausalSelfAttention()
            self.ln_2, self.mlp = nn.LayerNorm(embed_dim), MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB, embed_dim), nn.Embedding(block_size, embed_dim)
            self.h = nn.ModuleList(Block() for _ in range(num_layers))
            self.ln_f = nn.LayerNorm(embed_dim)
            self.lm_head = nn.Linear(embed_dim, VOCAB, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if p.dim() == 2:  # GPT-2's initialisation, residual projections scaled down with depth
                    std = 0.02 / math.sqrt(2 * num_layers) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, tokens, targets):
            x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))

    return GPT()


def torch_worker(framework: str, size: str, steps: int, warmup: int) -> dict:
    """Trains in this process: `warmup` steps (compilation), then `steps` timed ones."""
    import numpy as np
    import torch

    from bmjax import data

    setup = SIZES[size]
    torch.manual_seed(0)
    dataset = data.load("tiny_shakespeare", data_dir=_DATA_DIR.value, block_size=setup["block_size"])
    model = torch_gpt(setup["num_layers"], setup["num_heads"], setup["embed_dim"], setup["block_size"])
    parameters = list(model.parameters())  # the tied embedding once
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    forward = torch.compile(model) if framework == "torch_compile" else model
    total = warmup + steps
    rng = np.random.default_rng(0)

    def train_step(step: int) -> float:
        batch = dataset.train[rng.integers(0, len(dataset.train), setup["batch_size"])]
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, total)
        loss = forward(torch.from_numpy(np.asarray(batch["x"], np.int64)),
                       torch.from_numpy(np.asarray(batch["y"], np.int64)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    tick = time.perf_counter()
    for step in range(warmup):
        train_step(step)
    warmup_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    losses = [train_step(warmup + step) for step in range(steps)]
    seconds = time.perf_counter() - tick
    return {"steps_per_second": steps / seconds, "tokens_per_second": steps * setup["batch_size"] *
            setup["block_size"] / seconds, "first_interval_seconds": warmup_seconds,
            "final_train_loss": statistics.mean(losses[-10:]), "parameters": sum(p.numel() for p in parameters),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _learning_rate(step: int, total: int, peak: float = 1e-3, floor: float = 1e-4, warmup: int = 100) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor` at `total`, as bmjax's warmup_cosine."""
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def run_worker(job: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpt", f"--worker={job}",
                          *([f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else [])],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"worker {job} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------


def main(argv):
    if _WORKER.value:
        job = _WORKER.value.split(":")
        result = ceiling_worker() if job[0] == "ceiling" else torch_worker(job[0], job[1], int(job[2]), int(job[3]))
        print(json.dumps(result))
        return
    if _MANUAL_DIR.value:
        from bmjax import data
        data.prepare("tiny_shakespeare", data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)

    load = os.getloadavg()[0]
    print(f"load average at the start: {load:.1f} on {os.cpu_count()} cores", flush=True)
    print("measuring the float32 matmul ceiling ...", flush=True)
    ceiling = run_worker("ceiling")
    ceiling_gflops = max(ceiling.values())
    print("  " + ", ".join(f"{name}: {value:.0f} GFLOP/s" for name, value in ceiling.items()), flush=True)

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in _SIZES.value:
            steps = max(2 * LOG_EVERY[size], round(STEPS[size] * _STEP_SCALE.value / LOG_EVERY[size]) * LOG_EVERY[size])
            for framework in _FRAMEWORKS.value:
                print(f"training the {size} GPT with {framework} for {steps} timed steps ...", flush=True)
                if framework == "bmjax":
                    # The first log interval (compilation) is not timed; run one more.
                    figures[f"{size}/{framework}"] = run_bmjax(size, steps + LOG_EVERY[size], Path(tmp) / size,
                                                               LOG_EVERY[size])
                else:
                    figures[f"{size}/{framework}"] = run_worker(f"{framework}:{size}:{steps}:{WARMUP[size]}")
        convergence = None
        if _CONVERGENCE_STEPS.value:
            print(f"training the cpu GPT with bmjax for {_CONVERGENCE_STEPS.value} steps ...", flush=True)
            workdir = Path(tmp) / "convergence"
            args = [sys.executable, "-m", "experiments.gpt_shakespeare_char", "--preset=cpu",
                    f"--workdir={workdir}", f"--train_steps={_CONVERGENCE_STEPS.value}",
                    *([f"--data_dir={_DATA_DIR.value}"] if _DATA_DIR.value else [])]
            subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
            result = json.loads((workdir / "result.json").read_text())
            convergence = {"steps": result["steps"], "validation_loss": result["validation"]["loss"],
                           "seconds": result["seconds"], "train_seconds": result["train_seconds"],
                           "steps_per_second": result["steps_per_second"]}

    print(f"\n{'size':6} {'framework':14} {'ms/step':>8} {'tokens/s':>9} {'MFU':>6} {'vs bmjax':>9} "
          f"{'warm-up s':>9} {'loss':>6}")
    for size in _SIZES.value:
        per_token = flops_per_token(**SIZES[size])
        ours = figures.get(f"{size}/bmjax")
        for framework in _FRAMEWORKS.value:
            f = figures[f"{size}/{framework}"]
            f["flops_per_token"] = per_token
            f["mfu"] = f["tokens_per_second"] * per_token / (ceiling_gflops * 1e9)
            ratio = f"{ours['tokens_per_second'] / f['tokens_per_second']:.2f}x" if ours else "-"
            print(f"{size:6} {framework:14} {1000 / f['steps_per_second']:8.1f} {f['tokens_per_second']:9.0f} "
                  f"{100 * f['mfu']:5.1f}% {ratio:>9} {f['first_interval_seconds']:9.1f} "
                  f"{f['final_train_loss']:6.3f}")
    print(f"MFU: tokens/s x (6N + 12LdT) FLOPs per token / {ceiling_gflops:.0f} GFLOP/s (the best matmul above). "
          "vs bmjax: bmjax's tokens/s over this row's (above 1: bmjax faster). warm-up s: compilation and the "
          "first steps, not in the rates.")
    if convergence:
        print(f"bmjax, cpu size, {convergence['steps']} steps: validation loss {convergence['validation_loss']:.4f} "
              f"in {convergence['train_seconds']:.0f} s of training (target: <= 1.88)")
    load_end = os.getloadavg()[0]
    print(f"load average at the end: {load_end:.1f}")
    Path(_OUT.value).write_text(json.dumps(
        {"ceiling_gflops": ceiling, "runs": figures, "convergence": convergence, "sizes": SIZES,
         "load_average": {"start": load, "end": load_end}, "cores": os.cpu_count()}, indent=2) + "\n")
    print(f"figures written to {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

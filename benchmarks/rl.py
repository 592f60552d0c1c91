"""PPO on CartPole-v1: bmjax (`experiments.ppo`, the whole update compiled, gymnax on the device) beside a
CleanRL-style PyTorch + gymnasium agent with the same hyperparameters (`benchmarks/ppo_torch.py`), and bmjax with
16 seeds in one program (`--num_seeds=16`).

    pip install -e '.[bench]'
    python -m benchmarks.rl [--env_steps=500000]      # about 6 minutes on 2 cores

Each agent runs in its own process for the same environment steps. Figures: environment steps per second over the
whole run (bmjax's compilation included; all seeds' steps for the many-seed run), and the wall-clock seconds from
the process's start until the mean return of the last 100 episodes first reached 490 (for 16 seeds: their mean).
Prints them with their ratios; writes benchmarks/rl_results.json.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks import cpu_name

ROOT = Path(__file__).resolve().parents[1]
_ENV_STEPS = flags.DEFINE_integer("env_steps", 500_000, "Environment steps of every agent.")
_SEEDS = flags.DEFINE_integer("seeds", 16, "Seeds of the many-seed bmjax run.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "rl_results.json"), "Where to write the figures.")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def bmjax_ppo(workdir: Path, seeds: int) -> dict:
    began = time.time()
    subprocess.run([sys.executable, "-m", "experiments.ppo", f"--workdir={workdir}", f"--env_steps={_ENV_STEPS.value}",
                    f"--num_seeds={seeds}", "--parallel=single", "--eval_every_steps=8", "--eval_episodes=1",
                    "--log_every_steps=8"], cwd=ROOT, check=True, capture_output=True, env=ENV)
    wall = time.time() - began
    result = json.loads((workdir / "result.json").read_text())
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    reached = next((r["time"] for r in records if r["split"] == "evaluation" and r["return_last100"] >= 490), None)
    steps = result["env_steps"] * seeds
    return {"env_steps": steps, "wall_seconds": wall, "train_seconds": result["train_seconds"],
            "compile_seconds": result["compile_seconds"], "env_steps_per_second": steps / result["train_seconds"],
            "seconds_to_490": None if reached is None else reached - began,
            "return_last100": result["evaluation"]["return_last100"]}


def torch_ppo(out: Path) -> dict:
    began = time.time()
    subprocess.run([sys.executable, "-m", "benchmarks.ppo_torch", f"--env_steps={_ENV_STEPS.value}", f"--out={out}"],
                   cwd=ROOT, check=True, capture_output=True, env=ENV)
    figures = json.loads(out.read_text())
    reached = figures.pop("reached_490_at")
    return {**figures, "wall_seconds": time.time() - began,
            "seconds_to_490": None if reached is None else reached - began}


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        figures = {"torch": torch_ppo(tmp / "torch.json"), "bmjax": bmjax_ppo(tmp / "one", 1),
                   f"bmjax_{_SEEDS.value}_seeds": bmjax_ppo(tmp / "many", _SEEDS.value)}
    base = figures["torch"]["env_steps_per_second"]
    print(f"PPO on CartPole-v1, {_ENV_STEPS.value:,} environment steps per agent ({cpu_name()})")
    print(f"{'agent':<22}{'env steps/s':>14}{'× PyTorch':>11}{'s to 490':>10}{'last-100 return':>17}")
    for name, f in figures.items():
        to_490 = "never" if f["seconds_to_490"] is None else f"{f['seconds_to_490']:.1f}"
        print(f"{name:<22}{f['env_steps_per_second']:>14,.0f}{f['env_steps_per_second'] / base:>10.1f}×"
              f"{to_490:>10}{f['return_last100']:>17.1f}")
    with open(_OUT.value, "w") as f:
        json.dump({"cpu": cpu_name(), "env_steps": _ENV_STEPS.value, **figures}, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)

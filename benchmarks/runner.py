"""The runner's own costs, on the README's main job (the seed MLP on scikit-learn's digits, 40 epochs):

- many seeds: N seeds vmapped in one program (`--num_seeds=N`) beside one seed and N separate runs;
- cadence: logs every 100 steps of 17-step epochs (segments of 17, 15 and 2 steps) beside logs every 17.

    python -m benchmarks.runner [--seeds=8] [--repeats=2]       # about 3 minutes on 2 cores

Each run is its own process, timed from start to exit (wall), beside the training time the run reports
(result.json's train_seconds: its compilation included, data loading and imports not). Prints the figures
and their ratios; writes benchmarks/runner_results.json.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks import cpu_name

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ["--dataset=digits", "--epochs=40"]

_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds in the many-seed program, and separate runs beside it.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Times each setup runs; the figures are the medians.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks" / "runner_results.json"), "Where to write the figures.")


def timed_run(workdir: Path, *args: str) -> dict:
    began = time.time()
    subprocess.run([sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={workdir}", *MAIN_JOB, *args],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    result = json.loads((workdir / "result.json").read_text())
    return {"wall": time.time() - began, "train": result["train_seconds"], "compile": result["compile_seconds"],
            "test_accuracy": result["test"]["accuracy"]}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv):
    del argv
    n = _SEEDS.value
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fresh = iter(range(10_000))
        run = lambda *args: timed_run(tmp / f"run{next(fresh)}", *args)
        for _ in range(_REPEATS.value):
            figures.setdefault("one seed", []).append(run())
            figures.setdefault(f"{n} seeds in one program", []).append(run(f"--num_seeds={n}"))
            separate = [run(f"--seed={s}") for s in range(n)]
            figures.setdefault(f"{n} separate runs", []).append(
                {k: sum(r[k] for r in separate) for k in ("wall", "train", "compile")})
            figures.setdefault("logs every 17 steps", []).append(run("--log_every_steps=17"))

    one = figures["one seed"]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; median of {_REPEATS.value} runs each\n")
    print("| setup | wall s | train s | compile s | wall / one seed | train / one seed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    table = {}
    for name, runs in figures.items():
        row = {k: median(runs, k) for k in ("wall", "train", "compile")}
        row.update(wall_ratio=row["wall"] / median(one, "wall"), train_ratio=row["train"] / median(one, "train"))
        table[name] = row
        print(f"| {name} | {row['wall']:.1f} | {row['train']:.2f} | {row['compile']:.2f} | "
              f"{row['wall_ratio']:.2f}x | {row['train_ratio']:.2f}x |")
    print(f"\nthe main job's training (logs every 100) against logs every 17: "
          f"{table['one seed']['train'] / table['logs every 17 steps']['train']:.2f}x (target: within 1.5x)")
    print(f"{n} seeds in one program against one seed: {table[f'{n} seeds in one program']['wall_ratio']:.2f}x wall, "
          f"{table[f'{n} seeds in one program']['train_ratio']:.2f}x training (target: under 2x); against "
          f"{n} separate runs: {table[f'{n} separate runs']['wall'] / table[f'{n} seeds in one program']['wall']:.1f}x "
          "less wall time")
    Path(_OUT.value).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
                                            "cores": os.cpu_count(),
                                            "table": table, "runs": figures}, indent=2))


if __name__ == "__main__":
    app.run(main)

"""Benchmarks: scripts that print side-by-side figures; see README.md."""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name (lscpu's), for comparing figures only within one machine."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def machine() -> str:
    """lscpu's model name and the core count."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def time_steps(step, repeats: int, steps: int) -> float:
    """Median milliseconds per step of `step()` (which blocks until its result is ready), after two warm-up steps."""
    for _ in range(2):
        step()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        timings.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(timings)


def ms_per_step(module: str, worker: str, steps: int, repeats: int) -> float:
    """`python -m MODULE --worker=WORKER`'s milliseconds per step, timed in a process of its own on the CPU."""
    out = subprocess.run([sys.executable, "-m", module, f"--worker={worker}", f"--steps={steps}",
                          f"--repeats={repeats}"], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if out.returncode:
        raise RuntimeError(f"{worker} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["ms_per_step"]

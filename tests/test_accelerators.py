"""Accelerators without one: the install extras name JAX's own builds, the device check reports and refuses a
missing backend, and the accelerator benchmark's script runs (on the CPU, at tiny sizes)."""

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib

from conftest import ROOT, run_module, subprocess_env
from test_errors import assert_usage_error


def test_accelerator_extras_name_jax_builds_that_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    offered = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    for extra in ("cuda12", "cuda13", "tpu"):
        (requirement,) = extras[extra]
        name, build = re.fullmatch(r"(jax)\[([\w-]+)\]>=0\.10", requirement).groups()
        assert build == extra and build in offered, f"jax offers {sorted(offered)}"


def test_the_device_check_lists_devices_and_rates():
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-m", "bmjax.devices", "--size=256", "--repeats=2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "backend: cpu; 2 device(s) in 1 process(es), 2 here"
    assert lines[1:3] == ["  0: cpu", "  1: cpu"]
    for dtype in ("bfloat16", "float32"):
        rate = next(l for l in lines if l.startswith(f"matmul {dtype} 256x256: "))
        assert float(rate.split(": ")[1].split()[0]) > 0
    assert out.stderr == "", "JAX's notes about the backends it did not find stay quiet"


def test_the_device_check_refuses_a_missing_backend():
    out = run_module("bmjax.devices", "--expect=gpu")
    assert_usage_error(out, "--expect=gpu, but JAX runs on cpu", "pip install -e '.[cuda12]'")


def test_the_accelerator_benchmark_script_runs(tmp_path):
    out = run_module("benchmarks.accelerator", "--quick", f"--out={tmp_path / 'figures.json'}", timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["backend"] == "cpu" and figures["matmul_tflops"]["bfloat16"] > 0
    gpt = figures["gpt_tiny_bfloat16"]
    assert gpt["tokens_per_second"] > 0 and 0 < gpt["mfu_measured_ceiling"] and gpt["nominal_peak"] is None
    assert gpt["final_loss"] > 0
    for experiment in ("mnist_mlp", "mnist_cnn"):
        assert figures[experiment]["epoch_seconds"] > 0 and figures[experiment]["examples"] == 1024

"""Eight simulated CPU devices for the in-process tests; helpers to run bmjax commands in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def subprocess_env(**extra) -> dict:
    """The environment of a child bmjax process: no simulated-device flags unless asked for."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
    return env


def run_module(module: str, *args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, **popen)


def read_result(workdir) -> dict:
    with open(Path(workdir) / "result.json") as f:
        return json.load(f)


def read_metrics(workdir, split="train") -> list[dict]:
    with open(Path(workdir) / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["split"] == split]


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory) -> str:
    """A TFDS data_dir with tiny_shakespeare prepared offline from the genuine file in ../shared/data."""
    raw = SHARED_DATA / "tiny_shakespeare"
    if not raw.is_dir():
        pytest.skip(f"genuine Tiny Shakespeare not found: {raw}")
    data_dir = tmp_path_factory.mktemp("tfds")
    out = run_module("bmjax.data", "prepare", "tiny_shakespeare", f"--manual_dir={raw}", f"--data_dir={data_dir}")
    assert out.returncode == 0, out.stderr
    return str(data_dir)

"""Eight simulated CPU devices for the in-process tests; helpers to run bmjax commands in subprocesses."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# The test processes and their children share JAX's persistent compilation cache: many compile the same small
# programs, and a second run of the suite compiles little. (The runner's count of compilations includes what
# the cache returns, so the test that counts them still sees each one.)
JAX_CACHE = Path(tempfile.gettempdir()) / f"bmjax-tests-jax-cache-{os.getuid()}"
CACHE_MIN_COMPILE_SECONDS = "0"

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", CACHE_MIN_COMPILE_SECONDS)


def subprocess_env(**extra) -> dict:
    """The environment of a child bmjax process: no simulated-device flags unless asked for."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # This checkout's bmjax, also for files run as scripts (whose sys.path starts at their own folder).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=CACHE_MIN_COMPILE_SECONDS, **extra)
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


PROGRAMS = ROOT / "tests" / "programs"


def program_module(name):
    """A program's file imported as a module: tests/programs/NAME.py, or a path."""
    import importlib.util

    path = Path(name) if Path(name).suffix == ".py" else PROGRAMS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"programs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_file(path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python path args...` from the repository root: an experiment run as a file."""
    return subprocess.run([sys.executable, str(path), *args], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def saved_state(workdir) -> dict:
    """{path: array} of a run's newest checkpoint, whatever devices saved it."""
    import jax
    import numpy as np

    from bmjax.train.checkpoint import read_saved

    tree, step = read_saved(str(workdir))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_steps(workdir) -> list[int]:
    directory = Path(workdir) / "checkpoints"
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.exists() else []


def kill_after_saving(command: list, workdir, min_step: int, rng) -> int:
    """Starts `command` and SIGKILLs it at a random moment after its checkpoint `min_step` is written."""
    import signal
    import time

    process = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any(s >= min_step for s in saved_steps(workdir)):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode

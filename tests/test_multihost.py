"""Two processes on 127.0.0.1 with two simulated devices each train like one process with four."""

import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, read_metrics, read_result, run_module, subprocess_env

ARGS = ["--dataset=digits", "--train_steps=20", "--batch_size=64", "--log_every_steps=2", "--hidden_sizes=32",
        "--validation_split=0.1", "--eval_every_steps=10"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_two_processes(workdir, *args, slurm: bool = False):
    """Runs experiments.mnist_mlp as a 2-process job on 127.0.0.1; returns both (stdout, stderr). With `slurm`,
    each process finds the others as under SLURM's srun: from SLURM_* variables, with --distributed."""
    if slurm:
        port = next(p for p in range(65535 - 2 ** 12 + 1, 65536) if port_is_free(p))  # SLURM's port range
        job = {"SLURM_JOB_ID": str(port % 2 ** 12), "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
               "SLURM_STEP_NUM_NODES": "1"}
        flags = lambda i: ["--distributed"]
        env = lambda i: subprocess_env(**job, SLURM_PROCID=str(i), SLURM_LOCALID=str(i))
    else:
        address = f"127.0.0.1:{free_port()}"
        flags = lambda i: [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"]
        env = lambda i: subprocess_env()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={workdir}", "--host_devices=2", *flags(i), *args],
        cwd=ROOT, env=env(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err
    return outputs


@pytest.mark.parametrize("parallel, slurm", [("mesh", False), ("pmap", False), ("mesh", True)])
def test_two_processes_match_one(tmp_path, parallel, slurm):
    single = tmp_path / "single"
    out = run_module("experiments.mnist_mlp", f"--workdir={single}", "--host_devices=4", f"--parallel={parallel}",
                     "--data_placement=host", *ARGS)
    assert out.returncode == 0, out.stderr

    multi = tmp_path / "multi"
    outputs = run_two_processes(multi, f"--parallel={parallel}", *ARGS, slurm=slurm)

    result = read_result(multi)
    assert result["processes"] == 2 and result["devices"] == 4
    expected = [r["loss"] for r in read_metrics(single)]
    got = [r["loss"] for r in read_metrics(multi)]
    assert len(got) == len(expected) == 10, "logs are written once"
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(result["test"]["loss"], read_result(single)["test"]["loss"], rtol=1e-5)
    assert "classification report" in outputs[0][0] and "classification report" not in outputs[1][0]


def test_two_processes_resume_together(tmp_path):
    workdir = tmp_path / "multi"
    run_two_processes(workdir, *ARGS)
    extended = [a if not a.startswith("--train_steps") else "--train_steps=30" for a in ARGS] + ["--extend"]
    run_two_processes(workdir, *extended)
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == list(range(2, 32, 2)), "the second job went on from step 20"
    assert read_result(workdir)["steps"] == 30

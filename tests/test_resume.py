"""A run killed with SIGKILL and rerun ends bitwise where an uninterrupted run ends; finished runs only report."""

import random
import signal
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import kill_after_saving, read_metrics, run_module, saved_steps

ARGS = ["--dataset=digits", "--train_steps=240", "--batch_size=32", "--checkpoint_every_steps=20",
        "--log_every_steps=10", "--dropout=0.2", "--eval_every_steps=40"]


def final_state(workdir):
    directory = Path(workdir) / "checkpoints"
    with ocp.CheckpointManager(directory) as manager:
        return manager.latest_step(), manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())


def kill_after_checkpoint(workdir, extra, min_step, rng):
    return kill_after_saving([sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={workdir}", *ARGS, *extra],
                             workdir, min_step, rng)


def assert_same_state(a, b):
    (step_a, state_a), (step_b, state_b) = a, b
    assert step_a == step_b == 240
    flat_a, flat_b = ocp.tree.to_flat_dict(state_a), ocp.tree.to_flat_dict(state_b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key))


# The host feed's resume is killed and rerun in test_multihost (two processes read through it).
@pytest.mark.parametrize("placement", ["device"])
def test_sigkill_and_rerun_is_bitwise_identical(tmp_path, placement):
    extra = [f"--data_placement={placement}"]
    whole = tmp_path / "whole"
    done = run_module("experiments.mnist_mlp", f"--workdir={whole}", *ARGS, *extra)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    rng = random.Random(placement)
    assert kill_after_checkpoint(killed, extra, 40, rng) == -signal.SIGKILL
    assert kill_after_checkpoint(killed, extra, 120, rng) == -signal.SIGKILL
    assert max(saved_steps(killed)) < 240, "killed before the end"
    resumed = run_module("experiments.mnist_mlp", f"--workdir={killed}", *ARGS, *extra)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(final_state(whole), final_state(killed))
    # The resumed log has each step once, and the same losses as the uninterrupted one.
    assert [r["step"] for r in read_metrics(killed)] == [r["step"] for r in read_metrics(whole)]
    np.testing.assert_array_equal([r["loss"] for r in read_metrics(killed)],
                                  [r["loss"] for r in read_metrics(whole)])


def test_finished_run_reports_without_training(tmp_path):
    workdir = tmp_path / "run"
    first = run_module("experiments.mnist_mlp", f"--workdir={workdir}", "--dataset=digits", "--train_steps=30")
    assert first.returncode == 0, first.stderr
    metrics_before = (workdir / "metrics.jsonl").read_text()
    again = run_module("experiments.mnist_mlp", f"--workdir={workdir}", "--dataset=digits", "--train_steps=30")
    assert again.returncode == 0, again.stderr
    assert "has finished 30 steps" in again.stdout
    assert "test: " in again.stdout
    assert (workdir / "metrics.jsonl").read_text() == metrics_before, "no training happened"


def test_restore_from_fine_tunes_from_another_runs_parameters(tmp_path):
    source = tmp_path / "source"
    assert run_module("experiments.mnist_mlp", f"--workdir={source}", "--dataset=digits",
                      "--train_steps=200").returncode == 0
    tuned = tmp_path / "tuned"
    scratch = tmp_path / "scratch"
    for workdir, extra in ((tuned, [f"--restore_from={source}"]), (scratch, [])):
        out = run_module("experiments.mnist_mlp", f"--workdir={workdir}", "--dataset=digits", "--train_steps=1",
                         "--learning_rate=1e-6", *extra)
        assert out.returncode == 0, out.stderr
    first_loss = lambda w: read_metrics(w)[0]["loss"]
    assert first_loss(tuned) < 0.5 * first_loss(scratch), "fine-tuning starts from the trained parameters"

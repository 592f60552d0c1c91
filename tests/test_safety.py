"""Runs that keep their work: checkpoints whose damage is found, interrupts that save, settings that cannot change
under a run, fine-tuning that says what it restored, and a console that says what happens."""

import io
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import PROGRAMS, ROOT, read_metrics, run_file, run_module, saved_state, subprocess_env
from test_errors import assert_usage_error

MLP = "experiments.mnist_mlp"
DIGITS = ["--dataset=digits", "--train_steps=60", "--checkpoint_every_steps=20", "--log_every_steps=10"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished digits run with checkpoints at steps 20, 40 and 60, copied afresh by each test that damages it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    out = run_module(MLP, f"--workdir={workdir}", *DIGITS)
    assert out.returncode == 0, out.stderr
    return workdir


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def data_files(workdir, step):
    """The array data files of a checkpoint, largest first."""
    files = [f for f in (workdir / "checkpoints" / str(step) / "default").rglob("d/*") if f.is_file()]
    return sorted(files, key=lambda f: -f.stat().st_size)


def test_flipped_bytes_are_found_and_an_earlier_checkpoint_resumes(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    data = data_files(workdir, 60)[0]  # the kernels and their Adam moments
    damaged = bytearray(data.read_bytes())
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(b ^ 0xFF for b in damaged[middle:middle + 64])
    data.write_bytes(bytes(damaged))
    out = run_module(MLP, f"--workdir={workdir}", *DIGITS)
    assert_usage_error(out, "checkpoint 60 in", "is damaged", "--restore_step=40")  # by its digest, or unreadable

    # --restore_from reads the parameters alone, and checks them: here against a digest that no longer fits.
    source = copy_of(finished, tmp_path / "source")
    metadata = source / "checkpoints" / "60" / "_CHECKPOINT_METADATA"
    record = json.loads(metadata.read_text())
    record["custom_metadata"]["bmjax_digests"]["params/Dense_0/kernel"][0] += 1
    metadata.write_text(json.dumps(record))
    tuned = run_module(MLP, f"--workdir={tmp_path / 'tuned'}", *DIGITS, f"--restore_from={source}")
    assert_usage_error(tuned, f"--restore_from={source}", "checkpoint 60", "params/Dense_0/kernel does not match the "
                       "digest saved with it", "checkpoint 40")

    again = run_module(MLP, f"--workdir={workdir}", *DIGITS, "--restore_step=40")
    assert again.returncode == 0, again.stderr
    assert "checkpoints 60 moved to" in again.stdout
    assert (workdir / "checkpoints" / "superseded" / "60").is_dir(), "the damaged checkpoint is kept, aside"
    expected, got = saved_state(finished), saved_state(workdir)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.parametrize("damage", ["truncated data file", "garbage manifest"])
def test_other_damage_is_one_line(finished, tmp_path, damage):
    workdir = copy_of(finished, tmp_path)
    if damage == "truncated data file":
        data = data_files(workdir, 60)[0]
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    else:
        (workdir / "checkpoints" / "60" / "default" / "manifest.ocdbt").write_bytes(bytes(range(115)))
    out = run_module(MLP, f"--workdir={workdir}", *DIGITS)
    assert_usage_error(out, "checkpoint 60 in", "is damaged", "--restore_step=40")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "bound method" not in out.stderr


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupts_save_a_checkpoint_and_resume_bitwise(tmp_path, signum, status):
    args = ["--dataset=digits", "--train_steps=2000", "--log_every_steps=10", "--checkpoint_every_steps=1000",
            "--dropout=0.2"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", MLP, f"--workdir={killed}", *args], cwd=ROOT,
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (killed / "metrics.jsonl").exists() or not (killed / "metrics.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(random.Random(signum).uniform(0.2, 0.6))
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    step = int(stderr.split(" at step ")[1].split(";")[0])
    assert stderr.strip().endswith("rerun the same command to resume") and 0 < step < 2000
    assert (killed / "checkpoints" / str(step)).is_dir()
    if signum != signal.SIGINT:  # the same handler: one signal's resume is compared bit for bit
        return
    resumed = run_module(MLP, f"--workdir={killed}", *args)
    assert resumed.returncode == 0 and f"resuming from step {step} of 2000" in resumed.stdout
    whole = tmp_path / "whole"
    assert run_module(MLP, f"--workdir={whole}", *args).returncode == 0
    expected, got = saved_state(whole), saved_state(killed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_changed_settings_on_a_workdir_are_refused_unless_they_leave_training_alone(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    before = (workdir / "result.json").read_text()
    out = run_module(MLP, f"--workdir={workdir}", *DIGITS, "--learning_rate=0.1")
    assert_usage_error(out, "other settings", "--learning_rate=0.001 there, 0.1 here", "new --workdir",
                       f"--flagfile={workdir / 'flags.txt'}")
    longer = [a for a in DIGITS if not a.startswith("--train_steps")] + ["--train_steps=80"]
    out = run_module(MLP, f"--workdir={workdir}", *longer)
    assert_usage_error(out, "--train_steps=60 there, 80 here", "--extend")
    assert (workdir / "result.json").read_text() == before, "nothing changed"
    # Cadence, evaluation batches and devices do not change what trains: the finished run just reports.
    out = run_module(MLP, f"--workdir={workdir}", *DIGITS, "--log_every_steps=7", "--eval_batch_size=100",
                     "--host_devices=2")
    assert out.returncode == 0 and "has finished 60 steps" in out.stdout, out.stderr
    out = run_module(MLP, f"--workdir={workdir}", *longer, "--extend")
    assert out.returncode == 0 and "resuming from step 60 of 80" in out.stdout, out.stderr
    assert json.loads((workdir / "result.json").read_text())["steps"] == 80


def test_restore_from_says_what_it_restored_and_refuses_nothing_in_common(finished, tmp_path):
    wider = run_module(MLP, f"--workdir={tmp_path / 'wider'}", "--dataset=digits", "--train_steps=5",
                       "--hidden_sizes=128,32", f"--restore_from={finished}")
    assert wider.returncode != 0 and "does not fit this model" in wider.stderr
    gan = tmp_path / "gan"  # two networks: generator/..., discriminator/...; no params of its own
    assert run_file(PROGRAMS / "two_networks.py", f"--workdir={gan}", "--train_steps=2").returncode == 0
    mlp = run_module(MLP, f"--workdir={tmp_path / 'mlp'}", "--dataset=digits", "--train_steps=5",
                     f"--restore_from={gan}")
    assert_usage_error(mlp, "shares no array with this model", "params/Dense_0/bias")
    deeper = run_module(MLP, f"--workdir={tmp_path / 'deeper'}", "--dataset=digits", "--train_steps=5",
                        "--hidden_sizes=128,16", f"--restore_from={finished}")
    assert deeper.returncode != 0  # Dense_1 is (128, 10) there and (128, 16) here
    same = run_module(MLP, f"--workdir={tmp_path / 'same'}", "--dataset=digits", "--train_steps=5",
                      f"--restore_from={finished}", "--host_devices=4", "--parallel=pmap")
    assert same.returncode == 0, same.stderr
    assert f"restored 4 of 4 arrays from --restore_from={finished} (step 60)" in same.stdout


def test_restore_from_a_run_on_other_devices(tmp_path):
    source = tmp_path / "mesh4"
    out = run_module(MLP, f"--workdir={source}", "--dataset=digits", "--train_steps=20", "--host_devices=4",
                     "--mesh=data:4")
    assert out.returncode == 0, out.stderr
    tuned = run_module(MLP, f"--workdir={tmp_path / 'one'}", "--dataset=digits", "--train_steps=1",
                       f"--restore_from={source}")
    assert tuned.returncode == 0, tuned.stderr
    assert "restored 4 of 4 arrays" in tuned.stdout and "Topology" not in tuned.stderr


def test_the_console_says_what_happens(tmp_path):
    workdir = tmp_path / "run"
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=30", "--validation_split=0.01",
                     "--eval_every_steps=100", "--host_devices=2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "experiments.mnist_mlp: Supervised, model mlp, 9,610 parameters"
    assert lines[1] == "devices: 2 of 2 cpu device(s), strategy mesh {'data': 2}, 1 process(es)"
    assert lines[2] == "data: digits, 1,423 train / 14 validation / 360 test examples; 30 steps (1.36 epochs of 22, " \
                       "batch 64)"
    assert lines[3] == f"workdir: {workdir}" and "the first call compiles the step" in lines[4]
    assert out.stdout.rstrip().endswith(f"TensorBoard: tensorboard --logdir={workdir / 'tensorboard'}")
    assert "warning: the validation split holds 14 examples, fewer than one batch of 64" in out.stderr
    assert "warning: --eval_every_steps=100 is longer than the run's 30 steps" in out.stderr


def test_warm_up_longer_than_the_run_is_a_warning(tmp_path):
    out = run_module(MLP, f"--workdir={tmp_path}", "--dataset=digits", "--train_steps=10",
                     "--lr_schedule=warmup_cosine", "--warmup_steps=50")
    assert out.returncode == 0 and "warning: --warmup_steps=50 is not shorter than the run's 10 steps" in out.stderr


def test_the_progress_bar_shows_one_rate_the_epoch_and_the_main_metric(tmp_path, monkeypatch):
    from bmjax.train import runlog

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    log = runlog.RunLog(str(tmp_path), total_steps=100, start_step=0, steps_per_epoch=20)
    log.write(30, "train", {"loss": 0.25, "accuracy": 0.9}, steps_per_second=1234.0, learning_rate=1e-3)
    log.close()
    shown = terminal.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "epoch 2/5 loss=0.25 accuracy=0.9" in shown
    assert "steps_per_second" not in shown and "step/s" in shown
    assert read_metrics(tmp_path)[0]["steps_per_second"] == 1234.0, "the log file keeps the rate"


def test_curves_carry_the_runs_name(tmp_path):
    from PIL import Image

    workdir = tmp_path / "digits_mlp"
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=10")
    assert out.returncode == 0
    assert Image.open(workdir / "curves.png").info["Title"] == "digits_mlp (experiments.mnist_mlp)", "drawn as title"


def test_a_script_run_as_a_file_writes_a_flag_file_that_replays(tmp_path):
    first = tmp_path / "first"
    out = run_file(PROGRAMS / "two_networks.py", f"--workdir={first}", "--train_steps=4", "--log_every_steps=2")
    assert out.returncode == 0, out.stderr
    header = (first / "flags.txt").read_text().splitlines()[0]
    assert header == f"# python {PROGRAMS / 'two_networks.py'} --flagfile=<this file>"
    again = run_file(PROGRAMS / "two_networks.py", f"--flagfile={first / 'flags.txt'}", f"--workdir={tmp_path / 'b'}")
    assert again.returncode == 0, again.stderr


def test_sampling_options_are_checked_and_the_flag_file_replays(shakespeare_dir, tmp_path):
    workdir = tmp_path / "gpt"
    out = run_module("experiments.gpt_shakespeare_char", f"--workdir={workdir}", f"--data_dir={shakespeare_dir}",
                     "--preset=cpu", "--block_size=16", "--embed_dim=32", "--train_steps=20")
    assert out.returncode == 0, out.stderr
    assert "--prompt=\\n" in (workdir / "flags.txt").read_text().splitlines()
    sample = ["experiments.gpt_shakespeare_char", f"--workdir={workdir}", "--mode=sample"]
    assert_usage_error(run_module(*sample, "--temperature=-1"), "--temperature must not be negative")
    out = run_module(*sample, "--max_new_tokens=40", "--prompt=ROMEO:")
    assert out.returncode == 0, out.stderr
    text = out.stdout.split("---\n", 1)[1].rstrip("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40, "past the 16-character block"
    out = run_module(*sample[:1], f"--flagfile={workdir / 'flags.txt'}", "--mode=sample", "--max_new_tokens=5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("---\n", 1)[1].startswith("\n"), "the prompt's newline came back from the flag file"

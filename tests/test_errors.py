"""Bad input: one `error:` line saying what is wrong and how to fix it, a non-zero exit, no traceback,
and nothing saved lost."""

import re

import pytest
from conftest import run_module

MLP = "experiments.mnist_mlp"


def assert_usage_error(out, *fragments):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    error = next((l for l in lines if l.startswith(("error: ", "FATAL Flags parsing error"))), None)
    assert error is not None, out.stderr
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"


@pytest.mark.parametrize("flags, fragments", [
    (["--dataset=no_such_set"], ["unknown dataset 'no_such_set'", "digits", "TFDS"]),
    (["--model=no_such_model"], ["unknown model 'no_such_model'", "cnn, gpt, mlp"]),
    (["--optimizer=lion2"], ["--optimizer=lion2", "adam", "adamw", "sgd"]),
    (["--batch_size=0"], ["--batch_size must be positive, got 0"]),
    (["--epochs=-1"], ["--epochs must be positive, got -1"]),
    (["--learning_rate=0"], ["--learning_rate must be positive, got 0.0"]),
    (["--validation_split=1.5"], ["--validation_split must lie in (0, 1), got 1.5"]),
    (["--validation_split=0"], ["--validation_split must lie in (0, 1)"]),
    (["--batch_size=64", "--host_devices=3", "--parallel=pmap"],
     ["--batch_size=64 does not divide over the 3 devices", "multiple of 3"]),
    (["--batch_size=5000"], ["larger than the", "training examples"]),
    (["--hidden_sizes=12,x"], ["--hidden_sizes takes comma-separated integers"]),
    (["stray"], ["unexpected arguments stray"]),
])
def test_bad_flags(tmp_path, flags, fragments):
    defaults = ["--dataset=digits"] if not any(f.startswith("--dataset") for f in flags) else []
    out = run_module(MLP, f"--workdir={tmp_path / 'run'}", *defaults, *flags)
    assert_usage_error(out, *fragments)


def test_missing_workdir():
    assert_usage_error(run_module(MLP, "--dataset=digits"), "--workdir is required")


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = run_module(MLP, f"--workdir={blocker / 'run'}", "--dataset=digits")
    assert_usage_error(out, "cannot write to --workdir", "choose a writable directory")


def test_dataset_not_prepared_while_offline_fails_fast(tmp_path):
    out = run_module(MLP, f"--workdir={tmp_path / 'run'}", "--dataset=mnist", f"--data_dir={tmp_path / 'tfds'}",
                     timeout=60)
    assert_usage_error(out, "--manual_dir")


def test_missing_raw_files(tmp_path):
    empty = tmp_path / "raw"
    empty.mkdir()
    out = run_module(MLP, f"--workdir={tmp_path / 'run'}", "--dataset=mnist", f"--data_dir={tmp_path / 'tfds'}",
                     f"--manual_dir={empty}", timeout=60)
    assert_usage_error(out, "train-images-idx3-ubyte.gz")


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path):
    workdir = tmp_path / "run"
    assert run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--hidden_sizes=16",
                      "--train_steps=10").returncode == 0
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--hidden_sizes=32", "--train_steps=20")
    assert_usage_error(out, "does not fit", "params", "new --workdir")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


def test_restore_from_a_different_shape(tmp_path):
    source = tmp_path / "source"
    assert run_module(MLP, f"--workdir={source}", "--dataset=digits", "--hidden_sizes=16",
                      "--train_steps=10").returncode == 0
    out = run_module(MLP, f"--workdir={tmp_path / 'tuned'}", "--dataset=digits", "--hidden_sizes=32",
                     f"--restore_from={source}")
    assert_usage_error(out, "does not fit this model", "params/Dense_0/bias is (16,) there and (32,) here")


def test_restore_from_without_checkpoints(tmp_path):
    out = run_module(MLP, f"--workdir={tmp_path / 'run'}", "--dataset=digits", f"--restore_from={tmp_path}")
    assert_usage_error(out, "holds no checkpoint")


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    sgd = ["--optimizer=sgd", "--momentum=0"]
    good = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=20",
                      "--checkpoint_every_steps=10", *sgd)
    assert good.returncode == 0, good.stderr
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=200", *sgd,
                     "--learning_rate=1e30", "--log_every_steps=1")
    assert_usage_error(out, "the loss became", "last good checkpoint, step 20", "--learning_rate")
    assert int(re.search(r"at step (\d+);", out.stderr).group(1)) > 20
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == 20


def test_damaged_checkpoint_is_named(tmp_path):
    workdir = tmp_path / "run"
    assert run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=10").returncode == 0
    for f in (workdir / "checkpoints" / "10" / "default").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=20")
    assert_usage_error(out, "checkpoint 10 in", "cannot be read", "away to resume from the one before")

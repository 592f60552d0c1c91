"""Bad input: one `error:` line saying what is wrong and how to fix it, a non-zero exit, no traceback,
and nothing saved lost."""

import re

import pytest
from conftest import run_module

MLP = "experiments.mnist_mlp"


def assert_usage_error(out, *fragments):
    """Exit status 2 and one `error:` line holding every fragment; no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


@pytest.mark.parametrize("flags, fragments", [
    (["--dataset=no_such_set"], ["unknown dataset 'no_such_set'", "digits", "TFDS"]),
    (["--model=no_such_model"], ["unknown model 'no_such_model'", "cnn, efficientnet_b0", "resnet18, resnet20"]),
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
    # absl's own parsing errors, as one line with exit status 2, its hints kept.
    (["--optimizer=adamm"], ["--optimizer=adamm", "sgd|adam|adamw", "--help"]),
    (["--epochs=ten"], ["--epochs=ten", "invalid literal for int()"]),
    (["--optimzer=adam"], ["Unknown command line flag 'optimzer'", "Did you mean: optimizer"]),
    (["--no_such_flag=1"], ["Unknown command line flag 'no_such_flag'"]),
    (["--flagfile=/no/such/flags.txt"], ["Unable to open flagfile", "/no/such/flags.txt"]),
    (["--dataset=digitz"], ["unknown dataset 'digitz'", "did you mean digits?"]),
    (["--restore_step=-1"], ["--restore_step", "holds no checkpoint -1"]),
])
def test_bad_flags(tmp_path, flags, fragments):
    defaults = ["--dataset=digits"] if not any(f.startswith("--dataset") for f in flags) else []
    out = run_module(MLP, f"--workdir={tmp_path / 'run'}", *defaults, *flags)
    assert_usage_error(out, *fragments)


def test_bad_preset():
    out = run_module("experiments.gpt_shakespeare_char", "--workdir=/tmp/unused", "--preset=cpux")
    assert_usage_error(out, "--preset=cpux", "value should be one of <cpu>")


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
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--hidden_sizes=32", "--train_steps=10")
    assert_usage_error(out, "other settings", "--hidden_sizes=16 there, 32 here", "new --workdir")
    (workdir / "run.json").unlink()  # a run that recorded no settings: its checkpoint's shapes are compared
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--hidden_sizes=32", "--train_steps=10")
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
    # A step size that jumps from 1e-3 to 1e27 after 20 steps.
    explodes = ["--optimizer=sgd", "--momentum=0", "--lr_schedule=step", "--lr_decay_steps=20",
                "--lr_decay_factor=1e30"]
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=200", *explodes,
                     "--checkpoint_every_steps=10", "--log_every_steps=1")
    assert_usage_error(out, "the loss became", "last good checkpoint, step 20", "--learning_rate")
    assert int(re.search(r"at step (\d+);", out.stderr).group(1)) > 20
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == 20


def test_damaged_checkpoint_is_named(tmp_path):
    workdir = tmp_path / "run"
    assert run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=10").returncode == 0
    for f in (workdir / "checkpoints" / "10" / "default").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    out = run_module(MLP, f"--workdir={workdir}", "--dataset=digits", "--train_steps=20", "--extend")
    assert_usage_error(out, "checkpoint 10 in", "is damaged", "no earlier checkpoint", "new --workdir")


def test_a_python_caller_gets_bad_choices_before_anything_is_written(tmp_path):
    import bmjax

    with pytest.raises(bmjax.UsageError, match="--optimizer=adamm is not one of: sgd, adam, adamw"):
        bmjax.run(bmjax.Config(workdir=str(tmp_path / "run"), dataset="digits", optimizer="adamm"))
    assert not (tmp_path / "run").exists()


def test_models_that_do_not_fit_the_inputs_name_the_shapes(tmp_path):
    out = run_module("experiments.mnist_cnn", f"--workdir={tmp_path / 'cnn'}", "--dataset=digits")
    assert_usage_error(out, "inputs of 8x8 leave 1x1 feature maps after convolution 2", "--conv_padding=SAME")
    out = run_module(MLP, f"--workdir={tmp_path / 'wine'}", "--dataset=wine", "--model=cnn")
    assert_usage_error(out, "SeedCNN cannot take this dataset's inputs of shape (13,)", "--model")


def test_help_groups_the_experiments_flags():
    out = run_module("experiments.gpt_shakespeare_char", "--help")
    assert out.returncode == 0, out.stderr
    headings = [line for line in out.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["GptShakespeareChar's own:", "run:", "data:", "augmentation:", "model:", "optimisation:",
                        "compression:", "devices:"]
    assert "--prune_sparsity" not in out.stdout.split("run:", 1)[0], "the shared flags are in their groups"
    own = out.stdout.split("GptShakespeareChar's own:", 1)[1].split("run:", 1)[0]
    assert "--num_layers (default: 6)" in own and "--preset" in own and "--temperature" in own
    assert "Registered: alexnet, bert_classifier, bert_mlm, cnn, efficientnet_b0," in out.stdout
    assert "usage: python -m experiments.gpt_shakespeare_char --workdir=DIR" in out.stdout

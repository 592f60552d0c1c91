"""Each experiment end to end in a smoke configuration, and what it leaves in --workdir."""

import pytest
from conftest import read_metrics, read_result, run_module

SMOKE = {
    "mnist_mlp": ["--dataset=digits", "--epochs=10"],
    "mnist_cnn": ["--dataset=digits", "--conv_padding=SAME", "--epochs=10"],
    "tabular_binary": ["--epochs=20"],
    "tabular_multiclass": ["--epochs=20"],
    "regression": [],
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_experiment_runs_end_to_end(tmp_path, name):
    workdir = tmp_path / name
    out = run_module(f"experiments.{name}", f"--workdir={workdir}", *SMOKE[name])
    assert out.returncode == 0, out.stderr
    result = read_result(workdir)
    assert result["experiment"] == f"experiments.{name}"
    assert result["parameters"] > 0 and result["steps"] > 0 and result["seconds"] > 0
    assert result["flags"]["workdir"] == str(workdir)
    for produced in ("curves.png", "flags.txt", "metrics.jsonl"):
        assert (workdir / produced).stat().st_size > 0, produced
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / str(result["steps"])).is_dir()
    train = read_metrics(workdir)
    assert train[-1]["step"] == result["steps"] and train[-1]["loss"] < train[0]["loss"]
    assert read_metrics(workdir, "validation"), "a validation split is evaluated"
    test = result["test"]
    if name == "regression":
        assert test["r2"] > 0.3 and test["mae"] < 60
    else:
        floor = {"mnist_mlp": 0.85, "mnist_cnn": 0.8, "tabular_binary": 0.9, "tabular_multiclass": 0.9}[name]
        assert test["accuracy"] > floor
        assert "precision    recall  f1-score   support" in out.stdout
        assert len(test["confusion_matrix"]) == len(test["precision"])


def test_flag_file_reproduces_the_run(tmp_path):
    first = tmp_path / "first"
    assert run_module("experiments.tabular_binary", f"--workdir={first}", "--epochs=5", "--seed=3",
                      "--hidden_sizes=16,8").returncode == 0
    flagfile = (first / "flags.txt").read_text()
    assert flagfile.startswith("# python -m experiments.tabular_binary")
    assert "--hidden_sizes=16,8" in flagfile and "--seed=3" in flagfile
    second = tmp_path / "second"
    out = run_module("experiments.tabular_binary", f"--flagfile={first / 'flags.txt'}", f"--workdir={second}")
    assert out.returncode == 0, out.stderr
    untimed = lambda workdir: [{k: v for k, v in r.items() if k not in ("time", "steps_per_second")}
                               for r in read_metrics(workdir)]
    assert untimed(first) == untimed(second)
    assert read_result(first)["test"] == read_result(second)["test"]


def test_binary_on_the_synthetic_set(tmp_path):
    workdir = tmp_path / "synthetic"
    out = run_module("experiments.tabular_binary", f"--workdir={workdir}", "--dataset=synthetic",
                     "--synthetic_features=10", "--epochs=10")
    assert out.returncode == 0, out.stderr
    assert read_result(workdir)["test"]["accuracy"] > 0.75

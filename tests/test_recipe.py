"""Training-recipe pieces: a moving average of the weights (evaluated, saved and restored), fine-tuning with a
new head (--reinit), and refused values."""

import jax
import numpy as np
import pytest
from conftest import run_module

import bmjax
from bmjax.config import Config
from bmjax.train.checkpoint import load_params, read_saved
from test_errors import assert_usage_error

DIGITS = dict(dataset="digits", model="mlp", hidden_sizes=(32,), epochs=3, batch_size=64, log_every_steps=10,
              parallel="single")


def test_moving_average_is_evaluated_saved_and_restored(tmp_path):
    result = bmjax.run(Config(workdir=str(tmp_path / "ema"), ema_decay=0.9, **DIGITS))
    saved, _ = read_saved(str(tmp_path / "ema"))
    averaged, trained = jax.tree.leaves(saved["ema_params"]), jax.tree.leaves(saved["params"])
    assert all(a.shape == t.shape for a, t in zip(averaged, trained))
    assert max(float(np.abs(a - t).max()) for a, t in zip(averaged, trained)) > 1e-4, "the average lags the weights"

    restored = bmjax.restore(str(tmp_path / "ema"))
    for got, expected in zip(jax.tree.leaves(restored.params), averaged):
        np.testing.assert_array_equal(got, expected)
    # The test split's accuracy is the average's: the restored model reproduces it.
    from bmjax import data
    test = data.load("digits").test
    logits = restored.model.apply(restored.variables, np.asarray(test.x, np.float32))
    accuracy = float(np.mean(np.asarray(np.argmax(logits, -1)) == test.y))
    assert accuracy == pytest.approx(result["test"]["accuracy"], abs=1e-9)

    plain = bmjax.run(Config(workdir=str(tmp_path / "plain"), **DIGITS))
    assert read_saved(str(tmp_path / "plain"))[0].get("ema_params") is None
    assert plain["test"]["accuracy"] != result["test"]["accuracy"] or plain["test"]["loss"] != result["test"]["loss"]


def test_reinit_starts_the_named_layers_afresh(tmp_path):
    bmjax.run(Config(workdir=str(tmp_path / "source"), **{**DIGITS, "epochs": 1}))
    saved, _ = read_saved(str(tmp_path / "source"))
    ours = jax.tree.map(np.zeros_like, saved["params"])
    params, _, _ = load_params(str(tmp_path / "source"), ours, {}, reinit="Dense_1/")
    np.testing.assert_array_equal(params["Dense_0"]["kernel"], saved["params"]["Dense_0"]["kernel"])
    assert not params["Dense_1"]["kernel"].any() and not params["Dense_1"]["bias"].any(), "the head starts afresh"

    # A head of another size is refused, and the message names the flag that starts it afresh.
    three = tmp_path / "three_classes"
    bmjax.run(Config(workdir=str(three), **{**DIGITS, "epochs": 1, "dataset": "synthetic", "synthetic_features": 64,
                                            "synthetic_classes": 3}))
    fine_tune = ["experiments.mnist_mlp", "--dataset=digits", "--hidden_sizes=32", "--epochs=1",
                 f"--restore_from={three}"]
    out = run_module(*fine_tune, f"--workdir={tmp_path / 'refused'}")
    assert_usage_error(out, "params/Dense_1/bias is (3,) there and (10,) here", "--reinit=Dense_1/")
    out = run_module(*fine_tune, f"--workdir={tmp_path / 'new_head'}", "--reinit=Dense_1/")
    assert out.returncode == 0, out.stderr
    assert "restored 2 of 4 arrays" in out.stdout + out.stderr


@pytest.mark.parametrize("flags, message", [
    (["--ema_decay=1"], "--ema_decay must lie in [0, 1), got 1.0"),
    (["--reinit=["], "--reinit='[' is not a regular expression"),
])
def test_bad_recipe_flags(tmp_path, flags, message):
    assert_usage_error(run_module("experiments.mnist_mlp", f"--workdir={tmp_path}", "--dataset=digits", *flags),
                       message)


EARLY = ["--dataset=digits", "--hidden_sizes=32", "--epochs=60", "--validation_split=0.2", "--eval_every_steps=10",
         "--log_every_steps=10", "--early_stopping_patience=3", "--early_stopping_min_delta=0.01",
         "--checkpoint_every_steps=20"]


def expected_stop(records, patience: int, min_delta: float):
    """The step at which `patience` validation losses in a row have not improved on the best by min_delta."""
    best, stale = None, 0
    for record in records:
        if best is None or best - record["loss"] > min_delta:
            best, stale = record["loss"], 0
        else:
            stale += 1
            if stale == patience:
                return record["step"]
    return None


def test_early_stopping_stops_where_the_metric_stalls_and_resumes_alike(tmp_path):
    from conftest import kill_after_saving, read_metrics, read_result, saved_state
    import random
    import signal
    import sys

    out = run_module("experiments.mnist_mlp", f"--workdir={tmp_path / 'whole'}", *EARLY)
    assert out.returncode == 0, out.stderr
    result = read_result(tmp_path / "whole")
    validation = read_metrics(tmp_path / "whole", "validation")
    stop = expected_stop(validation, 3, 0.01)
    total = 60 * 1149 // 64  # 60 epochs of digits' 1149 training examples (80%), batches of 64
    assert stop is not None and stop < total
    assert result["stopped_early"]["step"] == stop == result["steps"] == validation[-1]["step"]
    assert "stopped early at step" in out.stdout + out.stderr

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={killed}", *EARLY]
    assert kill_after_saving(command, killed, 20, random.Random(2)) == -signal.SIGKILL
    out = run_module("experiments.mnist_mlp", f"--workdir={killed}", *EARLY)
    assert out.returncode == 0, out.stderr
    assert read_result(killed)["stopped_early"] == result["stopped_early"]
    expected, got = saved_state(tmp_path / "whole"), saved_state(killed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    again = run_module("experiments.mnist_mlp", f"--workdir={killed}", *EARLY)
    assert again.returncode == 0 and f"stopped early at step {stop}; its result:" in again.stdout


def test_early_stopping_needs_a_validation_split_and_a_known_metric(tmp_path):
    with pytest.raises(bmjax.UsageError, match="--early_stopping_patience watches the validation split, and this "
                                               "run has none; set --validation_split"):
        bmjax.run(Config(workdir=str(tmp_path / "a"), early_stopping_patience=2, **DIGITS))
    out = run_module("experiments.mnist_mlp", f"--workdir={tmp_path / 'b'}", "--dataset=digits", "--epochs=2",
                     "--validation_split=0.1", "--early_stopping_patience=2", "--early_stopping_metric=acc")
    assert_usage_error(out, "--early_stopping_metric=acc is not among the validation metrics (loss, accuracy")
